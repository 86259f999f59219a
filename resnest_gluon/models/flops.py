"""Cost of a network: parameter count and multiply-adds from the traced graph.

This module owns :func:`count_params`, :func:`count_flops` and :func:`stage_shapes`.
Multiply-adds are read from the hybridized symbol with its inferred shapes: every
``Convolution`` costs ``output elements x (input channels / groups) x kernel area`` (the
compiled Winograd operator is counted as the convolution it computes, not by its fewer
multiplications) and every ``FullyConnected`` ``batch x in x out``. Normalisation,
activations, pooling and the split attention's element-wise work are not counted, as in the
published GFLOPs.
"""
import json

import mxnet as mx
import numpy as np

from .extension import CONV3X3_OP

__all__ = ["count_params", "count_flops", "stage_shapes"]


def count_params(net, trainable_only: bool = False) -> int:
    """Number of parameter values of ``net``.

    Parameters
    ----------
    net : Block
        The network (shapes must be known: built with ``in_channels`` everywhere, as ours are).
    trainable_only : bool
        Leave out BatchNorm running statistics. The published ResNeSt counts
        (docs/reference.md, e.g. 27.5M for ResNeSt-50) include them, so the default does too.
    """
    return int(sum(np.prod(p.shape) for p in net.collect_params().values()
                   if not trainable_only or p.grad_req != "null"))


def _trace(net, size, in_channels=3):
    data = mx.sym.var("data")
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = mx.sym.Group(list(out))
    return out, {"data": (1, in_channels, size, size)}


def count_flops(net, size: int = 224, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of a single ``size x size`` image.

    Parameters
    ----------
    net : HybridBlock
        The network (its parameters need not be initialised).
    size : int
        Input height and width.

    Returns
    -------
    int
        Multiply-add count (divide by 1e9 for the usual "GFLOPs").
    """
    sym, shapes = _trace(net, size, in_channels)
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(**shapes)
    shape_of = dict(zip(internals.list_outputs(), out_shapes))
    arg_shapes, _, _ = internals.infer_shape(**shapes)
    arg_shape_of = dict(zip(internals.list_arguments(), arg_shapes))
    nodes = json.loads(sym.tojson())["nodes"]

    def entry_shape(node_id, index):
        # a variable, or an output of an operator (a weight split per group is one)
        name = nodes[node_id]["name"]
        if nodes[node_id]["op"] == "null":
            return arg_shape_of[name]
        return shape_of.get(f"{name}_output", shape_of.get(f"{name}_output{index}"))

    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", CONV3X3_OP, "FullyConnected"):
            continue
        out_shape = shape_of[node["name"] + "_output"]
        w_shape = entry_shape(*node["inputs"][1][:2])
        if node["op"] != "FullyConnected":
            # weight: (out, in / groups, kh, kw): each output element costs in/groups*kh*kw.
            total += int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))
        else:
            total += int(np.prod(out_shape)) * int(w_shape[1])
    return total


def stage_shapes(net, size: int = 224, in_channels: int = 3):
    """Output shape ``(C, H, W)`` of the stem and of each stage for a ``size`` input.

    Returns
    -------
    list of (str, tuple)
        ``[("stem", shape), ("layer1", shape), ...]``.
    """
    result = []
    shape = (1, in_channels, size, size)
    x = mx.sym.var("data")
    stem = net.maxpool(mx.sym.Activation(net.bn1(net.conv1(x)), act_type="relu"))
    result.append(("stem", stem.infer_shape(data=shape)[1][0][1:]))
    feat = stem
    for name in ("layer1", "layer2", "layer3", "layer4"):
        feat = getattr(net, name)(feat)
        result.append((name, feat.infer_shape(data=shape)[1][0][1:]))
    return result
