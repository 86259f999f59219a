#!/usr/bin/env python3
"""Before a GPU environment is built: find the CUDA toolkit and NCCL that Horovod's GPU
build needs, or say what is missing and how to point at it.

``make env MXNET_PKG=mxnet-cu112`` runs this with the system Python (standard library only)
and builds Horovod with ``HOROVOD_GPU_OPERATIONS=NCCL`` against what it prints. Without NCCL,
Horovod's MXNet extension either fails to build (no CUDA toolkit) or copies every GPU gradient
to the host and allreduces it over TCP with Gloo.

Prints ``CUDA_HOME=... NCCL_HOME=...`` (shell words; with ``--horovod-env`` the variables of
Horovod's build) and exits 0, or explains and exits 1.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

CUDA_GUESSES = ("/usr/local/cuda", "/usr/local/cuda-11.2", "/usr/local/cuda-11.8", "/opt/cuda")
NCCL_GUESSES = ("/usr", "/usr/local", "/usr/local/nccl", "/opt/nccl")
NCCL_LIB_DIRS = ("lib", "lib64", "lib/x86_64-linux-gnu")


def find_cuda(hint, guesses=None):
    """The CUDA toolkit folder holding ``bin/nvcc`` (``hint``, nvcc on PATH, ``guesses``,
    default :data:`CUDA_GUESSES`), or None."""
    candidates = [hint] if hint else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += list(CUDA_GUESSES if guesses is None else guesses)
    for folder in candidates:
        if folder and os.access(os.path.join(folder, "bin", "nvcc"), os.X_OK):
            return folder
    return None


def find_nccl(hint, cuda_home, guesses=None):
    """The folder holding ``include/nccl.h`` and ``lib*/libnccl.so*`` (``hint``, the CUDA
    folder, ``guesses``, default :data:`NCCL_GUESSES`), or None."""
    candidates = ([hint] if hint else []) + ([cuda_home] if cuda_home else []) + list(
        NCCL_GUESSES if guesses is None else guesses)
    for folder in candidates:
        header = os.path.isfile(os.path.join(folder, "include", "nccl.h"))
        library = any(glob.glob(os.path.join(folder, lib, "libnccl.so*")) for lib in
                      NCCL_LIB_DIRS)
        if header and library:
            return folder
    return None


def cuda_version(cuda_home):
    """``(major, minor)`` that ``nvcc --version`` reports, or None."""
    try:
        text = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                              capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def wanted_cuda(mxnet_pkg):
    """``(11, 2)`` for ``mxnet-cu112``: the CUDA release the MXNet wheel was built for."""
    match = re.fullmatch(r"mxnet-cu(\d+)(\d)", mxnet_pkg or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _version_problem(cuda, mxnet_pkg):
    wanted, found = wanted_cuda(mxnet_pkg), cuda_version(cuda)
    if wanted is None or found == wanted or (found and found[0] == wanted[0]):
        return None
    found_text = "an unknown release" if found is None else "CUDA %d.%d" % found
    return (f"{cuda} holds {found_text}, and {mxnet_pkg} is built for CUDA "
            f"{wanted[0]}.{wanted[1]}: point CUDA_HOME at a CUDA {wanted[0]} toolkit")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", ""),
                        help="CUDA toolkit folder (default: $CUDA_HOME, nvcc on PATH, "
                             "/usr/local/cuda)")
    parser.add_argument("--nccl-home", default=os.environ.get("NCCL_HOME", ""),
                        help="NCCL folder with include/ and lib/ (default: $NCCL_HOME, the "
                             "CUDA folder, /usr)")
    parser.add_argument("--mxnet-pkg", default="",
                        help="the MXNet wheel (e.g. mxnet-cu112): the toolkit's major release "
                             "must match it")
    parser.add_argument("--horovod-env", action="store_true",
                        help="print the variables of Horovod's GPU build instead")
    args = parser.parse_args(argv)
    cuda = find_cuda(args.cuda_home)
    nccl = find_nccl(args.nccl_home, cuda)
    missing = []
    problem = _version_problem(cuda, args.mxnet_pkg) if cuda else None
    if problem:
        missing.append(problem)
    if cuda is None:
        missing.append("the CUDA toolkit (bin/nvcc; CUDA 11.2 for mxnet-cu112) was not found"
                       + (f" in CUDA_HOME={args.cuda_home}" if args.cuda_home else "")
                       + ": install it, or point at it with CUDA_HOME=/path/to/cuda")
    if nccl is None:
        missing.append("NCCL (include/nccl.h and lib/libnccl.so, version >= 2.10) was not "
                       "found" + (f" in NCCL_HOME={args.nccl_home}" if args.nccl_home else "")
                       + ": install libnccl-dev, or point at it with NCCL_HOME=/path/to/nccl")
    if missing:
        for line in missing:
            print(f"check_gpu_build: {line}", file=sys.stderr)
        print("check_gpu_build: Horovod's GPU build needs both (see README, 'GPU nodes'); "
              "the CPU environment is plain `make env`", file=sys.stderr)
        return 1
    if args.horovod_env:
        print(f"HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME={cuda} HOROVOD_NCCL_HOME={nccl}")
    else:
        print(f"CUDA_HOME={cuda} NCCL_HOME={nccl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
