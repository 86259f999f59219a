"""The GPU environment's build: CUDA and NCCL found or named as missing before anything is
built, Horovod built with NCCL and required to list it; the CPU build unchanged."""
import os
import stat
import subprocess
import sys

from runs import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import check_gpu_build  # noqa: E402  (a script, not a package module)

CHECK = os.path.join(ROOT, "scripts", "check_gpu_build.py")


def _toolkit(root, release="11.2"):
    """A CUDA toolkit and NCCL laid out as their packages install them."""
    (root / "cuda" / "bin").mkdir(parents=True)
    nvcc = root / "cuda" / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    (root / "nccl" / "include").mkdir(parents=True)
    (root / "nccl" / "include" / "nccl.h").write_text("")
    (root / "nccl" / "lib").mkdir()
    (root / "nccl" / "lib" / "libnccl.so.2").write_text("")
    return str(root / "cuda"), str(root / "nccl")


def test_the_toolkit_and_nccl_are_found_where_pointed(tmp_path):
    cuda, nccl = _toolkit(tmp_path)
    done = subprocess.run([sys.executable, CHECK, "--horovod-env", "--cuda-home", cuda,
                           "--nccl-home", nccl, "--mxnet-pkg", "mxnet-cu112"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HOROVOD_GPU_OPERATIONS=NCCL", f"HOROVOD_CUDA_HOME={cuda}",
                                   f"HOROVOD_NCCL_HOME={nccl}"]


def test_what_is_missing_is_named_with_how_to_point_at_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))           # no nvcc on PATH
    assert check_gpu_build.find_cuda(str(tmp_path / "nope"), guesses=()) is None
    assert check_gpu_build.find_nccl(str(tmp_path / "nope"), None, guesses=()) is None
    cuda, _ = _toolkit(tmp_path)
    assert check_gpu_build.find_cuda("", guesses=(cuda,)) == cuda
    monkeypatch.setattr(check_gpu_build, "CUDA_GUESSES", ())
    monkeypatch.setattr(check_gpu_build, "NCCL_GUESSES", ())
    assert check_gpu_build.main(["--cuda-home", str(tmp_path / "nope"),
                                 "--nccl-home", cuda]) == 1
    err = capsys.readouterr().err
    assert "the CUDA toolkit (bin/nvcc; CUDA 11.2 for mxnet-cu112) was not found in " \
           f"CUDA_HOME={tmp_path / 'nope'}: install it, or point at it with " \
           "CUDA_HOME=/path/to/cuda" in err
    assert f"NCCL (include/nccl.h and lib/libnccl.so, version >= 2.10) was not found in " \
           f"NCCL_HOME={cuda}: install libnccl-dev, or point at it with " \
           "NCCL_HOME=/path/to/nccl" in err


def test_a_toolkit_of_another_cuda_release_is_refused(tmp_path, capsys):
    cuda, nccl = _toolkit(tmp_path, release="13.0")
    assert check_gpu_build.main(["--cuda-home", cuda, "--nccl-home", nccl,
                                 "--mxnet-pkg", "mxnet-cu112"]) == 1
    assert f"{cuda} holds CUDA 13.0, and mxnet-cu112 is built for CUDA 11.2: point CUDA_HOME " \
           "at a CUDA 11 toolkit" in capsys.readouterr().err


def _dry_run(*args):
    done = subprocess.run(["make", "-n", "env", "VENV=/tmp/resnest-gluon-dry-run-venv", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_makefile_builds_horovod_with_nccl_for_cuda_mxnet_only():
    gpu = _dry_run("MXNET_PKG=mxnet-cu112")
    check = "scripts/check_gpu_build.py --horovod-env --mxnet-pkg mxnet-cu112"
    assert f"{check} >/dev/null" in gpu and f"$(python3.11 {check})" in gpu
    assert 'grep -q "\\[X\\] NCCL"' in gpu and "install --quiet -c requirements/constraints.txt " \
        "mxnet-cu112" in gpu
    cpu = _dry_run()
    assert "check_gpu_build" not in cpu and "NCCL" not in cpu
