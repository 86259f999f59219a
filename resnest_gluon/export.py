"""Export for serving: hybridized symbol JSON + params that plain MXNet loads.

This module owns :func:`export_symbol` (``HybridBlock.export`` with DropBlock removed and the
result checked by reloading it as a ``SymbolBlock``). The files need nothing from resnest_gluon
to load: ``mx.gluon.SymbolBlock.imports(json, ["data"], params)``.
"""
import dataclasses
import logging
import os
import warnings

import mxnet as mx
import numpy as np

from .models.dropblock import get_dropblock_prob, set_dropblock_prob

__all__ = ["ExportResult", "export_symbol", "load_exported"]

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
        return mx.gluon.SymbolBlock.imports(symbol_file, ["data"], params_file,
                                            ctx=ctx or mx.cpu())


def export_symbol(net, prefix: str, input_size: int = 224, batch_size: int = 1,
                  in_channels: int = 3, sample=None) -> ExportResult:
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
        net.hybridize(static_alloc=True, static_shape=True)
        expected = net(sample).asnumpy()
        net.export(prefix, epoch=0)
    finally:
        set_dropblock_prob(net, drop_prob)
    symbol_file, params_file = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    exported = load_exported(symbol_file, params_file)
    diff = float(np.abs(exported(sample).asnumpy() - expected).max())
    log.info("exported %s and %s (input %s); max |exported - gluon| = %.3g",
             symbol_file, params_file, shape, diff)
    return ExportResult(symbol_file, params_file, shape, diff)
