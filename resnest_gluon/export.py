"""Export for serving: hybridized symbol JSON + params that plain MXNet loads.

This module owns :func:`export_symbol` (``HybridBlock.export`` with DropBlock removed and the
result checked by reloading it as a ``SymbolBlock``), :func:`export_onnx`, and the small
``PREFIX-meta.json`` that records what an export was made for (model, classes, input size,
crop ratio, interpolation, mean/std: :func:`write_export_metadata`), which ``predict`` reads.
The model files need nothing from resnest_gluon to load:
``mx.gluon.SymbolBlock.imports(json, ["data"], params)``.

``export_symbol(..., fuse=True)`` writes the graph after MXNet's oneDNN ("MKLDNN") subgraph
pass: BatchNorm folded into the convolutions, ReLU and residual additions fused into them.
It is faster on CPUs but loads only in MXNet builds with oneDNN (the CPU pip wheels), so the
plain export stays the portable one (GPUs, ONNX).
"""
import dataclasses
import json
import logging
import os
import warnings
from typing import List, Optional, Sequence

import mxnet as mx
import numpy as np

from .data.transforms import INTERPOLATIONS
from .errors import UserError, reason_of
from .models import EvalSettings
from .models.dropblock import get_dropblock_prob, set_dropblock_prob
from .models.fusion import fuse_for_cpu_inference, unfuse
from .models.splat import portable_products

__all__ = ["ExportResult", "export_symbol", "export_onnx", "load_exported", "onnx_session",
           "write_export_metadata", "read_export_metadata", "metadata_path", "export_files",
           "ExportError"]

_METADATA_FORMAT = "resnest_gluon-export-1"


class ExportError(UserError, ValueError):
    """Export files that are missing, damaged or not ours."""

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportResult:
    """Paths written by an export and the check against the Gluon model."""

    symbol_file: str
    params_file: str
    input_shape: tuple
    max_abs_diff: float


def load_exported(symbol_file: str, params_file: str, ctx=None):
    """Load exported files as a ``SymbolBlock`` (what a serving process does)."""
    with warnings.catch_warnings():
        # imports() warns that it cannot type "data" before the first call; it types it then.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return mx.gluon.SymbolBlock.imports(symbol_file, ["data"], params_file,
                                                ctx=ctx or mx.cpu())
        except (mx.base.MXNetError, ValueError, AssertionError) as err:
            raise ExportError(f"cannot load the export {symbol_file} + {params_file}: "
                              f"{reason_of(err)} (damaged or incomplete? export it again)"
                              ) from None


def export_symbol(net, prefix: str, input_size: int = 224, batch_size: int = 1,
                  in_channels: int = 3, sample=None, fuse: bool = False) -> ExportResult:
    """Write ``PREFIX-symbol.json`` and ``PREFIX-0000.params`` for inference at ``input_size``.

    DropBlock layers are removed from the graph for the export (they are the identity in
    inference) and restored afterwards. The export is reloaded and compared with the Gluon
    model on ``sample`` (default: a seeded random batch).

    Parameters
    ----------
    net : HybridBlock
        Initialised network.
    prefix : str
        Output path prefix; its directory is created.
    input_size, batch_size, in_channels : int
        Shape the graph is traced (and statically planned) for.
    sample : NDArray, optional
        Batch for the check.
    fuse : bool
        Export the oneDNN-fused inference graph (CPU serving; see the module docstring).

    Returns
    -------
    ExportResult
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    shape = (batch_size, in_channels, input_size, input_size)
    if sample is None:
        sample = mx.nd.array(np.random.RandomState(0).normal(size=shape).astype("float32"))
    drop_prob = get_dropblock_prob(net)
    set_dropblock_prob(net, 0.0)
    try:
        # MXNet's own operators only: the files must load in any MXNet
        with portable_products(net):
            expected = _export_graph(net, prefix, sample, fuse)
    finally:
        set_dropblock_prob(net, drop_prob)
    symbol_file, params_file = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    exported = load_exported(symbol_file, params_file)
    diff = _max_difference(_numpy_outputs(exported(sample)), expected)
    log.info("exported %s and %s (input %s); max |exported - gluon| = %.3g",
             symbol_file, params_file, shape, diff)
    return ExportResult(symbol_file, params_file, shape, diff)


def _export_graph(net, prefix, sample, fuse):
    """Trace ``net`` (optionally fused), write its files, and return its outputs on
    ``sample`` before fusion (what the export is checked against)."""
    net.hybridize(static_alloc=True, static_shape=True)
    expected = _numpy_outputs(net(sample))
    try:
        if fuse:
            fuse_for_cpu_inference(net, sample)
        net.export(prefix, epoch=0)
    finally:
        if fuse:   # back to the plain graph: the fused one is for inference only
            unfuse(net)
    return expected


def _numpy_outputs(outputs) -> list:
    """A network's output (one array, or a tuple/list of them: a backbone's) as a list of
    NumPy arrays."""
    if isinstance(outputs, (tuple, list)):
        return [out.asnumpy() for out in outputs]
    return [outputs.asnumpy()]


def _max_difference(got, expected) -> float:
    if len(got) != len(expected):
        raise ExportError(f"the export has {len(got)} outputs, the network {len(expected)}")
    return max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(got, expected))


# mxnet 1.9.1 translates operators with its opset-13 rules but stamps the model with the
# installed onnx's newest opset (20 for onnx 1.15), whose Split/ReduceMean differ: restamp.
ONNX_OPSET = 13


def _declare_opset(onnx_file, version):
    import onnx
    model = onnx.load(onnx_file)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = version
    onnx.checker.check_model(model)
    onnx.save(model, onnx_file)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("ONNX export needs onnx==1.15.0 and onnxruntime: "
                           "pip install 'resnest_gluon[onnx]'") from None
    return onnxruntime


def onnx_session(onnx_file: str):
    """An onnxruntime CPU ``InferenceSession`` on ``onnx_file``, quiet about the weights
    that mxnet's exporter also lists as graph inputs."""
    onnxruntime = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3   # the exporter lists weights as inputs too: ORT warns
    return onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])


def export_onnx(symbol_file: str, params_file: str, input_shape, onnx_file: str,
                sample=None) -> float:
    """Convert an exported symbol + params to ONNX and check it with onnxruntime.

    Needs ``onnx==1.15`` and ``onnxruntime`` (the ``onnx`` extra). Returns the max abs
    difference between onnxruntime's outputs and MXNet's (all of them, for a backbone's
    several feature maps) on ``sample`` (default: a seeded random
    batch of ``input_shape``).
    """
    _import_onnxruntime()
    from mxnet import onnx as mx_onnx
    os.makedirs(os.path.dirname(os.path.abspath(onnx_file)), exist_ok=True)
    mx_onnx.export_model(symbol_file, params_file, [tuple(input_shape)], [np.float32],
                         onnx_file, dynamic=False)
    _declare_opset(onnx_file, ONNX_OPSET)
    if sample is None:
        sample = np.random.RandomState(0).normal(size=input_shape).astype("float32")
    sample = sample.asnumpy() if hasattr(sample, "asnumpy") else np.asarray(sample, np.float32)
    session = onnx_session(onnx_file)
    got = session.run(None, {session.get_inputs()[0].name: sample})
    expected = _numpy_outputs(load_exported(symbol_file, params_file)(mx.nd.array(sample)))
    diff = _max_difference(got, expected)
    log.info("exported %s; max |onnxruntime - mxnet| = %.3g", onnx_file, diff)
    return diff


def export_files(prefix: str) -> List[str]:
    """Every file an export at ``prefix`` may consist of (not its ``-fused`` variant)."""
    return [f"{prefix}-symbol.json", f"{prefix}-0000.params", f"{prefix}.onnx",
            metadata_path(prefix)]


def metadata_path(prefix: str) -> str:
    """Where the metadata of the export ``prefix`` lives: ``PREFIX-meta.json``."""
    return f"{prefix}-meta.json"


def write_export_metadata(prefix: str, model: str, num_classes: int, settings: EvalSettings,
                          batch_size: int, files: Sequence[str],
                          class_names: Optional[Sequence[str]] = None) -> str:
    """Write ``PREFIX-meta.json``: what the export was made for, for serving code.

    Parameters
    ----------
    prefix : str
        The export prefix.
    model : str
        Zoo name of the architecture.
    num_classes : int
        Output classes.
    settings : EvalSettings
        Input size, crop ratio, interpolation and mean/std the model expects.
    batch_size : int
        The fixed batch size of the exported graph.
    files : sequence of str
        The files of the export (names relative to the metadata file's folder).
    class_names : sequence of str, optional
        Names of the classes in label order.

    Returns
    -------
    str
        The path written.
    """
    meta = {"format": _METADATA_FORMAT, "model": model, "num_classes": int(num_classes),
            "input_shape": [int(batch_size), 3, settings.size, settings.size],
            **settings.to_dict(), "class_names": list(class_names) if class_names else None,
            "files": [os.path.basename(f) for f in files]}
    path = metadata_path(prefix)
    with open(path + ".tmp", "w") as handle:
        json.dump(meta, handle, indent=1)
    os.replace(path + ".tmp", path)
    return path


def read_export_metadata(prefix: str) -> Optional[dict]:
    """The metadata of the export ``prefix``, or None when it has none (older exports).

    Raises
    ------
    ExportError
        The file exists but is not export metadata, or its fields are not what they should be.
    """
    path = metadata_path(prefix)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except ValueError as err:
        raise ExportError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != _METADATA_FORMAT:
        raise ExportError(f"{path} is not resnest_gluon export metadata")
    bad = [key for key, ok in _METADATA_FIELDS.items() if not ok(meta.get(key))]
    if bad:
        raise ExportError(f"{path}: field(s) {', '.join(bad)} missing or malformed (edited by "
                          f"hand? export again)")
    return meta


def _numbers(count):
    return lambda v: (isinstance(v, list) and len(v) == count
                      and all(isinstance(x, (int, float)) for x in v))


_METADATA_FIELDS = {
    "model": lambda v: isinstance(v, str),
    "num_classes": lambda v: isinstance(v, int) and v >= 1,
    "size": lambda v: isinstance(v, int) and v >= 32,
    "crop_ratio": lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
    "interpolation": lambda v: v in INTERPOLATIONS,
    "mean": _numbers(3),
    "std": _numbers(3),
}
