"""Running a network in reduced precision.

This module owns :func:`to_precision`: float16 by casting the parameters (what GPUs run; MXNet
has no float16 GEMM on CPU) and bfloat16 through MXNet AMP (oneDNN kernels on CPUs with
AVX512-BF16), which keeps numerically sensitive operators (softmax, BatchNorm statistics, sums)
in float32. And :func:`narrowest`, which the blocks use where a small float32 tensor (attention
weights, a DropBlock mask scale) meets a float16 activation under AMP.
"""
import sys

import mxnet as mx

__all__ = ["to_precision", "PRECISIONS", "narrowest", "amp_active"]

PRECISIONS = ("float32", "float16", "bfloat16")


def to_precision(net, dtype: str, input_shape=(1, 3, 224, 224), ctx=None):
    """Return a network that computes in ``dtype``.

    Parameters
    ----------
    net : HybridBlock
        An initialised network (float32).
    dtype : {"float32", "float16", "bfloat16"}
        float32 returns ``net``; float16 casts ``net`` in place (inputs must then be float16);
        bfloat16 returns a new AMP-converted ``SymbolBlock`` that takes and returns float32.
    input_shape : tuple
        Example input shape used to trace the graph for bfloat16.
    ctx : mxnet.Context, optional
        Context of the example input (default CPU).

    Returns
    -------
    HybridBlock
    """
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")
    if dtype == "float32":
        return net
    if dtype == "float16":
        net.cast("float16")
        return net
    from mxnet.contrib import amp  # imported here: AMP registers its op lists on import

    from .splat import portable_products  # the compiled split-attention op is float32 only
    ctx = ctx or mx.cpu()
    with portable_products(net):
        net.hybridize(static_alloc=True, static_shape=True)
        net(mx.nd.zeros(input_shape, ctx=ctx))
        return amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=ctx)


def amp_active() -> bool:
    """Whether ``mxnet.contrib.amp.init`` ran in this process (AMP has no public flag)."""
    amp = sys.modules.get("mxnet.contrib.amp.amp")
    return bool(getattr(amp, "_amp_initialized", False))


def narrowest(F, *arrays):
    """``arrays`` in the narrowest of their dtypes when the graph is traced under MXNet AMP.

    AMP runs softmax and reductions in float32 and treats elementwise and broadcast
    operators, and batch_dot, as widest-type: where a small float32 tensor (attention weights,
    a mask scale) meets a float16 activation, the whole activation would be cast to float32,
    and every operator after it would run in float32. Casting the small tensor to float16
    instead keeps the activations float16. Outside AMP nothing is inserted: float32 graphs,
    and their ONNX exports, stay as they are.
    """
    if not amp_active():
        return arrays
    return F.amp_multicast(*arrays, num_outputs=len(arrays), cast_narrow=True)
