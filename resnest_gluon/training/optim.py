"""The optimizer of a run: ``optim.name`` and its typed parameters as MXNet optimizer arguments,
and global gradient-norm clipping.

This module owns :func:`optimizer_arguments` (NAG, SGD, LARS and LAMB are MXNet's own) and
:func:`clip_global_norm`, which scales the gradients on the device (no read back to the host)
after the allreduce, so every worker clips the same averaged gradient alike.
"""
from typing import Tuple

import mxnet as mx

from .. import config as cfg

__all__ = ["optimizer_arguments", "clip_global_norm"]


def optimizer_arguments(oc: cfg.OptimConfig, params, learning_rate: float) -> Tuple[str, dict]:
    """``(MXNet optimizer name, its arguments)`` for ``optim`` on ``params`` (the dict or
    list of Gluon parameters the trainer gets).

    LARS leaves BatchNorm and bias parameters out of its layer-wise scaling by their names,
    which a Gluon trainer does not pass on by itself: they are given here, in the trainer's
    order (a dict's keys sorted).
    """
    name = "sgd" if oc.name == "nag" and not oc.nesterov else oc.name
    arguments = {"learning_rate": learning_rate, "wd": oc.weight_decay}
    if name in ("nag", "sgd"):
        arguments["momentum"] = oc.momentum
    elif name == "lars":
        ordered = ([params[key] for key in sorted(params.keys())]
                   if isinstance(params, (dict, mx.gluon.ParameterDict)) else list(params))
        arguments.update(momentum=oc.momentum, eta=oc.lars_eta, eps=oc.lars_epsilon,
                         param_idx2name={i: p.name for i, p in enumerate(ordered)})
    elif name == "lamb":
        arguments.update(beta1=oc.lamb_beta1, beta2=oc.lamb_beta2, epsilon=oc.lamb_epsilon,
                         bias_correction=oc.lamb_bias_correction)
    return name, arguments


def clip_global_norm(params, max_norm: float, rescale: float):
    """Scale the gradients of ``params`` so that their global L2 norm, as the optimizer will
    see it (times ``rescale``: the trainer's 1/batch and 1/loss-scale), is at most
    ``max_norm``; returns that norm before clipping as a device scalar.

    A non-finite norm (a float16 overflow) makes the gradients non-finite, so AMP's overflow
    check still skips the update.
    """
    grads = [p.grad() for p in params if p.grad_req != "null"]
    squares = [mx.nd.multi_sum_sq(*grads[i:i + 64], num_arrays=len(grads[i:i + 64]))
               for i in range(0, len(grads), 64)]
    norm = mx.nd.sqrt(mx.nd.sum(mx.nd.concat(*squares, dim=0))) * rescale
    factor = mx.nd.minimum(mx.nd.ones_like(norm), max_norm / (norm + 1e-6))
    for grad in grads:
        mx.nd.broadcast_mul(grad, factor.reshape((1,) * grad.ndim), out=grad)
    return norm
