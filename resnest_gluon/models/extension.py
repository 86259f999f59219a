"""Compiled operators: building and loading the project's MXNet extension library.

This module owns ``resnest_radix_sum`` (``csrc/radix_sum.cc``), split attention's weighted sum
over its radix splits as one CPU operator, and the one way it reaches a process:
:func:`load_radix_sum` compiles the source against the installed MXNet's extension API
(``include/mxnet/lib_api.h`` and ``src/lib_api.cc``, shipped in the wheel) once per source
and MXNet version, caches the library, and loads it with ``mx.library.load``.

The cache lives in ``$RESNEST_GLUON_EXTENSIONS`` (default ``~/.cache/resnest_gluon/extensions``).
Concurrent builders (the ranks of a job starting together, two jobs on one host) take a file
lock, so one compiles and the others load its result; a library is written under a temporary
name and renamed into place, so no process loads a half-written file. ``make env`` builds it
ahead (``python -m resnest_gluon.models.extension``). Nothing happens at import time.
"""
import fcntl
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading

from ..errors import UserError, reason_of
from .precision import amp_active

__all__ = ["ExtensionError", "load_radix_sum", "radix_sum_available", "library_path",
           "RADIX_SUM_OP"]

log = logging.getLogger(__name__)

RADIX_SUM_OP = "resnest_radix_sum"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "radix_sum.cc")
# -Bsymbolic: the library's references to its own copy of the extension API bind to that
# copy. Without it, a process that loaded Horovod's MXNet module first (which carries other
# definitions of the same C++ symbols, loaded globally) crashed in the library's constructor.
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-Wl,-Bsymbolic")
_BUILD_TIMEOUT_S = 600
_state = {"loaded": None, "failure": None}
_load_lock = threading.Lock()


class ExtensionError(UserError, RuntimeError):
    """The extension library could not be built or loaded (the message says why; a missing
    compiler or an unwritable cache is the environment's to fix)."""


def _mxnet_dir() -> str:
    import mxnet
    return os.path.dirname(os.path.abspath(mxnet.__file__))


def _compiler() -> list:
    """The C++ compiler command: ``$CXX`` if set, else g++ or c++ from PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("g++", "c++"):
        if shutil.which(name):
            return [name]
    raise ExtensionError("no C++ compiler found (install g++ or set CXX)")


def _api_files(mxnet_dir: str):
    include = os.path.join(mxnet_dir, "include")
    api_source = os.path.join(mxnet_dir, "src", "lib_api.cc")
    if not (os.path.isfile(os.path.join(include, "mxnet", "lib_api.h"))
            and os.path.isfile(api_source)):
        raise ExtensionError(f"this MXNet ({mxnet_dir}) ships no extension API "
                             "(include/mxnet/lib_api.h, src/lib_api.cc)")
    return include, api_source


def _cache_folder(cache_dir: str = None) -> str:
    folder = cache_dir or os.environ.get("RESNEST_GLUON_EXTENSIONS") or os.path.join(
        "~", ".cache", "resnest_gluon", "extensions")
    return os.path.abspath(os.path.expanduser(folder))    # mx.library.load wants it absolute


def library_path(cache_dir: str = None) -> str:
    """Where the library for this source, MXNet and machine is (or will be) cached.

    The compiler itself is not part of the key (a library built on one machine loads on
    another of the same architecture with the same MXNet, so nodes without a compiler can use
    a shared cache); flags given in ``$CXX`` are.

    Parameters
    ----------
    cache_dir : str, optional
        The cache folder (default ``$RESNEST_GLUON_EXTENSIONS``, else
        ``~/.cache/resnest_gluon/extensions``).
    """
    import mxnet
    mxnet_dir = _mxnet_dir()
    _, api_source = _api_files(mxnet_dir)
    digest = hashlib.sha256()
    for path in (_SOURCE, api_source):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    extra_flags = shlex.split(os.environ.get("CXX", ""))[1:]
    digest.update(" ".join([mxnet.__version__, platform.machine(), *_FLAGS,
                            *extra_flags]).encode())
    return os.path.join(_cache_folder(cache_dir),
                        f"libresnest_ops-{digest.hexdigest()[:16]}.so")


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its last line is usually a summary)."""
    lines = stderr.strip().splitlines() or ["(no output)"]
    return next((line for line in lines if "error" in line.lower()), lines[-1]).strip()


def _compile(target: str) -> None:
    """Compile the library into ``target`` (via a temporary file in the same folder)."""
    include, api_source = _api_files(_mxnet_dir())
    compiler = _compiler()
    handle, partial = tempfile.mkstemp(prefix=".build-", suffix=".so",
                                       dir=os.path.dirname(target))
    os.close(handle)
    command = [*compiler, *_FLAGS, "-I", include, _SOURCE, api_source, "-o", partial]
    log.info("compiling the split-attention operator (%s, once per MXNet version)",
             os.path.basename(target))
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise ExtensionError(f"compiling {os.path.basename(_SOURCE)} failed: "
                                 f"{_first_error(done.stderr)}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o755 & ~umask)     # mkstemp's 0600 would hide it from other users
        os.replace(partial, target)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ExtensionError(f"compiling {os.path.basename(_SOURCE)} failed: {err}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def build_library(cache_dir: str = None) -> str:
    """The cached library's path, compiling it first if no process has yet.

    Raises
    ------
    ExtensionError
        No compiler, a failed compilation, or a cache folder that cannot be written.
    """
    try:
        target = library_path(cache_dir)
        if os.path.isfile(target):
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # read-only descriptor: flock works on it, and a lock file another user created
        # (without write permission for us) can still be opened
        lock = os.open(target + ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.isfile(target):
                _compile(target)
        finally:
            os.close(lock)
    except OSError as err:
        raise ExtensionError(f"cannot build the split-attention operator: {err}") from None
    return target


def load_radix_sum(cache_dir: str = None) -> None:
    """Make ``mx.nd`` / ``mx.sym.resnest_radix_sum`` available in this process (idempotent).

    Raises
    ------
    ExtensionError
        Where the library cannot be built or loaded, or AMP is on; the message says why.
    """
    import mxnet as mx
    with _load_lock:
        if _state["loaded"]:
            return
        if amp_active():
            # loading re-creates mx.nd / mx.sym and would drop AMP's wrapped operators,
            # silently training in float32
            raise ExtensionError("the split-attention operator cannot be loaded after "
                                 "mxnet.contrib.amp.init (it is float32 only): use "
                                 "model.attention_product=batch_dot with AMP")
        path = build_library(cache_dir)
        try:
            mx.library.load(path, verbose=False)
        except mx.base.MXNetError as err:
            raise ExtensionError(f"loading {path} failed: {reason_of(err)}") from None
        _state["loaded"] = path


def radix_sum_available() -> bool:
    """Whether ``resnest_radix_sum`` is (or can now be) loaded; the first failure is logged
    once as a warning, and MXNet's own operators are used instead."""
    if _state["loaded"]:
        return True
    if _state["failure"] is None:
        try:
            load_radix_sum()
            return True
        except ExtensionError as err:
            _state["failure"] = str(err)
            log.warning("split attention uses MXNet's batch_dot (%s)", err)
    return False


def main(argv=None) -> int:
    """Build (or find) the cached library and load it: ``python -m
    resnest_gluon.models.extension``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        load_radix_sum()
    except ExtensionError as err:
        log.error("error: %s", err)
        return 1
    log.info("split-attention operator ready: %s", _state["loaded"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
