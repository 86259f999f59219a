"""Compiled operators: building and loading the project's MXNet extension library.

This module owns ``resnest_radix_sum`` (``csrc/radix_sum.cc``), split attention's weighted sum
over its radix splits as one CPU operator, and the one way it reaches a process:
:func:`load_radix_sum` compiles the source against the installed MXNet's extension API
(``include/mxnet/lib_api.h`` and ``src/lib_api.cc``, shipped in the wheel) once per source
and MXNet version, caches the library, and loads it with ``mx.library.load``.

The cache lives in ``$RESNEST_GLUON_EXTENSIONS`` (default ``~/.cache/resnest_gluon/extensions``).
Concurrent builders (the ranks of a job starting together, two jobs on one host) share one
build (:mod:`resnest_gluon.native`). ``make env`` builds it ahead
(``python -m resnest_gluon.models.extension``). Nothing happens at import time.
"""
import logging
import os
import sys
import threading

from ..errors import reason_of
from ..native import BuildError, cached_library
from ..native import library_path as _cached_path
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
_WHAT = "the split-attention operator"
_state = {"loaded": None, "failure": None}
_load_lock = threading.Lock()


class ExtensionError(BuildError):
    """The extension library could not be built or loaded (the message says why; a missing
    compiler or an unwritable cache is the environment's to fix)."""


def _mxnet_dir() -> str:
    import mxnet
    return os.path.dirname(os.path.abspath(mxnet.__file__))


def _api_files(mxnet_dir: str):
    include = os.path.join(mxnet_dir, "include")
    api_source = os.path.join(mxnet_dir, "src", "lib_api.cc")
    if not (os.path.isfile(os.path.join(include, "mxnet", "lib_api.h"))
            and os.path.isfile(api_source)):
        raise ExtensionError(f"this MXNet ({mxnet_dir}) ships no extension API "
                             "(include/mxnet/lib_api.h, src/lib_api.cc)")
    return include, api_source


def _build_spec():
    """``cached_library`` arguments: the operator and the installed MXNet's extension API."""
    import mxnet
    include, api_source = _api_files(_mxnet_dir())
    return dict(name="resnest_ops", sources=(_SOURCE, api_source), flags=_FLAGS,
                key=(mxnet.__version__,), includes=(include,))


def library_path(cache_dir: str = None) -> str:
    """Where the library for this source, MXNet and machine is (or will be) cached
    (:func:`resnest_gluon.native.library_path`).

    Parameters
    ----------
    cache_dir : str, optional
        The cache folder (default ``$RESNEST_GLUON_EXTENSIONS``, else
        ``~/.cache/resnest_gluon/extensions``).
    """
    spec = _build_spec()
    return _cached_path(spec["name"], spec["sources"], spec["flags"], spec["key"], cache_dir)


def build_library(cache_dir: str = None) -> str:
    """The cached library's path, compiling it first if no process has yet.

    Raises
    ------
    ExtensionError
        No compiler, a failed compilation, or a cache folder that cannot be written.
    """
    try:
        return cached_library(**_build_spec(), what=_WHAT, cache_dir=cache_dir)
    except BuildError as err:
        if isinstance(err, ExtensionError):
            raise
        raise ExtensionError(str(err)) from None


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
