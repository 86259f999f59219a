"""Compiled operators: building and loading the project's MXNet extension libraries.

This module owns the project's CPU operators and the one way each reaches a process:

- ``resnest_radix_sum`` (``csrc/radix_sum.cc``): split attention's weighted sum over its radix
  splits as one operator (:func:`load_radix_sum`);
- ``resnest_batchnorm_relu`` (``csrc/batchnorm_relu.cc``, in the same library): BatchNorm and
  ReLU over a plain-layout array, for the Winograd convolution's output, on which MXNet's
  oneDNN BatchNorm runs a slow reference kernel (:func:`load_batchnorm_relu`);
- ``resnest_conv3x3`` (``csrc/winograd_conv.cc``): 3x3 convolutions with oneDNN's Winograd
  kernels, which MXNet never asks for (:func:`load_winograd_conv`). It links the oneDNN of the
  ``onednn-cpu-gomp`` wheel (headers from ``onednn-devel-cpu-gomp``), installed into the
  environment by ``make env``; CPUs without AVX-512 have no such kernels. Before the compiled
  BatchNorm it leaves its output in the kernels' "group-blocked" layout, which that operator
  reads (:func:`to_group_blocked` states it in NumPy).

Each is compiled against the installed MXNet's extension API (``include/mxnet/lib_api.h`` and
``src/lib_api.cc``, shipped in the wheel) once per source and version, cached, and loaded with
``mx.library.load``. The cache lives in ``$RESNEST_GLUON_EXTENSIONS`` (default
``~/.cache/resnest_gluon/extensions``). Concurrent builders (the ranks of a job starting
together, two jobs on one host) share one build (:mod:`resnest_gluon.native`). ``make env``
builds both ahead (``python -m resnest_gluon.models.extension``). Nothing happens at import
time.
"""
import ctypes
import logging
import os
import sys
import sysconfig
import threading
from dataclasses import dataclass

from ..errors import reason_of
from ..native import BuildError, cached_library
from ..native import library_path as _cached_path
from .precision import amp_active

__all__ = ["ExtensionError", "load_radix_sum", "radix_sum_available", "load_batchnorm_relu",
           "batchnorm_relu_available", "load_winograd_conv", "winograd_conv_available",
           "library_path", "RADIX_SUM_OP", "BATCHNORM_RELU_OP", "CONV3X3_OP",
           "to_group_blocked", "from_group_blocked"]

log = logging.getLogger(__name__)

RADIX_SUM_OP = "resnest_radix_sum"
BATCHNORM_RELU_OP = "resnest_batchnorm_relu"
CONV3X3_OP = "resnest_conv3x3"
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# -Bsymbolic: the library's references to its own copy of the extension API bind to that
# copy. Without it, a process that loaded Horovod's MXNet module first (which carries other
# definitions of the same C++ symbols, loaded globally) crashed in the library's constructor.
# -fno-trapping-math (results unchanged: no program here enables floating-point traps): without
# it GCC keeps a branch per element in loops that select between computed values (the compiled
# BatchNorm's backward pass ran several times slower).
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-trapping-math",
          "-Wl,-Bsymbolic")
# The oneDNN wheels the Winograd operator is built against (their version names the build).
ONEDNN_PACKAGES = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")


@dataclass(frozen=True)
class _Operator:
    op: str            # the operator's name in mx.nd / mx.sym
    name: str          # the library's name in the cache
    sources: tuple     # csrc/ files
    what: str          # in words, for messages
    onednn: bool       # linked with the oneDNN wheel


_RADIX_SUM = _Operator(RADIX_SUM_OP, "resnest_ops", ("radix_sum.cc", "batchnorm_relu.cc"),
                       "the split-attention operator", False)
_CONV3X3 = _Operator(CONV3X3_OP, "resnest_winograd", ("winograd_conv.cc",),
                     "the Winograd convolution", True)
_state = {op: {"loaded": None, "failure": None} for op in (RADIX_SUM_OP, CONV3X3_OP)}
_load_lock = threading.Lock()


class ExtensionError(BuildError):
    """An extension library could not be built or loaded (the message says why; a missing
    compiler or an unwritable cache is the environment's to fix)."""


# The channel block of the group-blocked layout (oneDNN's aBcd16b, AVX-512's 16 floats).
GROUP_BLOCK = 16


def to_group_blocked(array, groups: int):
    """A (N, C, H, W) NumPy array in the group-blocked layout, as the same shape.

    The Winograd operator with ``blocked_output=1`` writes, and the compiled BatchNorm with
    ``blocked_groups=groups`` reads, its (N, C, H, W) output this way: per group of
    ``C / groups`` channels and per image, the kernels' array of 16-channel blocks, each the
    16 channels' values position after position. Element (n, c, h, w), with c in group g and
    block b of it, lane l, lies at ``((g N + n) C/groups + 16 b) H W + 16 (h W + w) + l``.
    """
    import numpy as np
    n, c, h, w = array.shape
    blocks = c // groups // GROUP_BLOCK
    grouped = array.reshape(n, groups, blocks, GROUP_BLOCK, h, w)
    return np.ascontiguousarray(grouped.transpose(1, 0, 2, 4, 5, 3)).reshape(n, c, h, w)


def from_group_blocked(array, groups: int):
    """The (N, C, H, W) NumPy array whose group-blocked form is ``array`` (the inverse of
    :func:`to_group_blocked`)."""
    import numpy as np
    n, c, h, w = array.shape
    blocks = c // groups // GROUP_BLOCK
    grouped = array.reshape(groups, n, blocks, h, w, GROUP_BLOCK)
    return np.ascontiguousarray(grouped.transpose(1, 0, 2, 5, 3, 4)).reshape(n, c, h, w)


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


def _onednn():
    """(include folder, library folder, version) of the oneDNN wheels in this environment."""
    from importlib import metadata
    prefix = sysconfig.get_paths()["data"]
    include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    try:
        version = metadata.version(ONEDNN_PACKAGES[0])
    except metadata.PackageNotFoundError:
        version = None
    if not (version and os.path.isfile(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp"))
            and os.path.isfile(os.path.join(lib, "libdnnl.so.2"))):
        raise ExtensionError(f"oneDNN is not installed in {prefix} (pip install "
                             f"{' '.join(p + '==2022.2.1' for p in ONEDNN_PACKAGES)})")
    return include, lib, version


def _build_spec(operator: _Operator):
    """``cached_library`` arguments: the operator and the installed MXNet's extension API
    (and the oneDNN wheel, for the operators that use it)."""
    import mxnet
    include, api_source = _api_files(_mxnet_dir())
    spec = dict(name=operator.name,
                sources=(*(os.path.join(_CSRC, source) for source in operator.sources),
                         api_source),
                flags=_FLAGS, key=(mxnet.__version__,), includes=(include, _CSRC),
                headers=(os.path.join(_CSRC, "op_common.h"),))
    if operator.onednn:
        onednn_include, onednn_lib, version = _onednn()
        spec.update(key=(mxnet.__version__, version), includes=(include, _CSRC, onednn_include),
                    libraries=(f"-L{onednn_lib}", "-ldnnl", f"-Wl,-rpath,{onednn_lib}"))
    return spec


def library_path(cache_dir: str = None, op: str = RADIX_SUM_OP) -> str:
    """Where the library of operator ``op`` for this source, MXNet and machine is (or will
    be) cached (:func:`resnest_gluon.native.library_path`).

    Parameters
    ----------
    cache_dir : str, optional
        The cache folder (default ``$RESNEST_GLUON_EXTENSIONS``, else
        ``~/.cache/resnest_gluon/extensions``).
    op : str
        :data:`RADIX_SUM_OP` or :data:`CONV3X3_OP`.
    """
    spec = _build_spec(_OPERATORS[op])
    return _cached_path(spec["name"], spec["sources"],
                        (*spec["flags"], *spec.get("libraries", ())), spec["key"], cache_dir,
                        spec["headers"])


def build_library(cache_dir: str = None, op: str = RADIX_SUM_OP) -> str:
    """The cached library's path, compiling it first if no process has yet.

    Raises
    ------
    ExtensionError
        No compiler (or oneDNN), a failed compilation, or a cache folder that cannot be
        written.
    """
    operator = _OPERATORS[op]
    try:
        return cached_library(**_build_spec(operator), what=operator.what,
                              cache_dir=cache_dir)
    except BuildError as err:
        if isinstance(err, ExtensionError):
            raise
        raise ExtensionError(str(err)) from None


def _load(operator: _Operator, cache_dir: str = None, check=None) -> None:
    """Build and load ``operator``'s library once per process; ``check(path)`` (optional)
    raises ExtensionError where the loaded library cannot run here."""
    import mxnet as mx
    with _load_lock:
        state = _state[operator.op]
        if state["loaded"]:
            return
        if amp_active():
            # loading re-creates mx.nd / mx.sym and would drop AMP's wrapped operators,
            # silently training in float32
            raise ExtensionError(f"{operator.what} cannot be loaded after "
                                 "mxnet.contrib.amp.init (it is float32 only): use "
                                 "model.attention_product=batch_dot and "
                                 "model.grouped_conv=split-narrow with AMP")
        path = build_library(cache_dir, operator.op)
        if check is not None:
            check(path)
        try:
            mx.library.load(path, verbose=False)
        except mx.base.MXNetError as err:
            raise ExtensionError(f"loading {path} failed: {reason_of(err)}") from None
        state["loaded"] = path


def _available(operator: _Operator, load, fallback: str, level=logging.WARNING) -> bool:
    state = _state[operator.op]
    if state["loaded"]:
        return True
    if state["failure"] is None:
        try:
            load()
            return True
        except ExtensionError as err:
            state["failure"] = str(err)
            log.log(level, "%s (%s)", fallback, err)
    return False


def load_radix_sum(cache_dir: str = None) -> None:
    """Make ``mx.nd`` / ``mx.sym.resnest_radix_sum`` available in this process (idempotent).

    Raises
    ------
    ExtensionError
        Where the library cannot be built or loaded, or AMP is on; the message says why.
    """
    _load(_RADIX_SUM, cache_dir)


def load_batchnorm_relu(cache_dir: str = None) -> None:
    """Make ``mx.nd`` / ``mx.sym.resnest_batchnorm_relu`` available in this process (it lives
    in the split-attention operator's library: :func:`load_radix_sum`)."""
    _load(_RADIX_SUM, cache_dir)


def radix_sum_available() -> bool:
    """Whether ``resnest_radix_sum`` is (or can now be) loaded; the first failure is logged
    once as a warning, and MXNet's own operators are used instead."""
    return _available(_RADIX_SUM, load_radix_sum, "split attention uses MXNet's batch_dot")


def batchnorm_relu_available() -> bool:
    """Whether ``resnest_batchnorm_relu`` is (or can now be) loaded; the first failure is
    logged once as a warning, and MXNet's BatchNorm is used instead."""
    return _available(_RADIX_SUM, load_batchnorm_relu, "BatchNorm uses MXNet's kernels")


def _check_winograd_kernels(path: str) -> None:
    """oneDNN has Winograd kernels on this CPU (AVX-512), asked through the library itself."""
    try:
        supported = ctypes.CDLL(path).resnest_winograd_supported()
    except OSError as err:
        raise ExtensionError(f"loading {path} failed: {err}") from None
    if not supported:
        raise ExtensionError("oneDNN has no Winograd kernels for this CPU (they need AVX-512)")


def load_winograd_conv(cache_dir: str = None) -> None:
    """Make ``mx.nd`` / ``mx.sym.resnest_conv3x3`` available in this process (idempotent).

    Raises
    ------
    ExtensionError
        Where the library cannot be built or loaded, oneDNN is missing or has no Winograd
        kernels for this CPU, or AMP is on; the message says why.
    """
    _load(_CONV3X3, cache_dir, check=_check_winograd_kernels)


def winograd_conv_available() -> bool:
    """Whether ``resnest_conv3x3`` is (or can now be) loaded; the first failure is logged
    once (information: CPUs without AVX-512 have no Winograd kernels), and MXNet's own
    convolutions are used instead."""
    return _available(_CONV3X3, load_winograd_conv, "3x3 convolutions use MXNet's own kernels",
                      level=logging.INFO)


_OPERATORS = {RADIX_SUM_OP: _RADIX_SUM, CONV3X3_OP: _CONV3X3}


def main(argv=None) -> int:
    """Build (or find) the cached libraries and load them: ``python -m
    resnest_gluon.models.extension``. The split-attention operator is required; the
    Winograd convolution is reported where it cannot run here."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        load_radix_sum()
    except ExtensionError as err:
        log.error("error: %s", err)
        return 1
    try:
        load_winograd_conv()
        winograd = f"Winograd convolution ready: {_state[CONV3X3_OP]['loaded']}"
    except ExtensionError as err:
        winograd = f"Winograd convolution not used here: {err}"
    log.info("split-attention operator ready: %s", _state[RADIX_SUM_OP]["loaded"])
    log.info("%s", winograd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
