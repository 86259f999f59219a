"""The reference implementations the project is checked and measured against.

This module owns the twins of our zoo models in other implementations, built from one of our
zoo specs (same architecture, same parameter names and order, DropBlock off):
:func:`authors_twin` (the authors' own Gluon package, ``resnest.gluon``), :func:`gluoncv_twin`
(gluoncv's ResNeSt class) and :func:`timm_name` (timm's PyTorch model of the same network,
measured in another interpreter); and :func:`randomize_batchnorm` (weights and non-trivial
BatchNorm statistics, so that comparisons exercise BatchNorm and its folding). The model
benchmark and the tests share them. ``resnest`` and gluoncv are development dependencies,
imported only when a twin is built.
"""
import dataclasses
from typing import Optional, Tuple

import mxnet as mx
import numpy as np

from .models import get_spec

__all__ = ["authors_twin", "gluoncv_twin", "timm_name", "randomize_batchnorm"]

# timm's names of the zoo models it has (its ResNeSt-50 is "resnest50d": a deep stem and an
# average-pooled shortcut, as in the paper).
_TIMM_NAMES = {"resnest14": "resnest14d", "resnest26": "resnest26d", "resnest50": "resnest50d",
               "resnest101": "resnest101e", "resnest200": "resnest200e",
               "resnest269": "resnest269e", "resnest50_fast_1s4x24d": "resnest50d_1s4x24d",
               "resnest50_fast_4s2x40d": "resnest50d_4s2x40d"}


def gluoncv_twin(name: str, classes: int = 1000, overrides: Optional[dict] = None):
    """gluoncv's ResNeSt with the spec of our zoo model ``name`` (fields changed by
    ``overrides``, as ``model.overrides`` does in a config); not initialised."""
    from gluoncv.model_zoo.resnest import Bottleneck, ResNeSt
    spec = dataclasses.replace(get_spec(name), **(overrides or {}))
    return ResNeSt(Bottleneck, list(spec.layers), radix=max(spec.radix, 1),
                   cardinality=spec.cardinality, bottleneck_width=spec.bottleneck_width,
                   deep_stem=spec.deep_stem, stem_width=spec.stem_width,
                   avg_down=spec.avg_down, avd=spec.avd, avd_first=spec.avd_first,
                   use_splat=spec.radix > 0, final_drop=spec.final_drop, classes=classes,
                   name_prefix="resnest_")


def authors_twin(name: str, classes: int = 1000, overrides: Optional[dict] = None):
    """The authors' Gluon ResNeSt (``resnest.gluon``) with the spec of our zoo model ``name``
    and DropBlock off; not initialised. Its parameter names equal ours."""
    from resnest.gluon.resnet import Bottleneck, ResNet
    spec = dataclasses.replace(get_spec(name), **(overrides or {}))
    return ResNet(Bottleneck, list(spec.layers), radix=max(spec.radix, 1),
                  cardinality=spec.cardinality, bottleneck_width=spec.bottleneck_width,
                  deep_stem=spec.deep_stem, stem_width=spec.stem_width, avg_down=spec.avg_down,
                  avd=spec.avd, avd_first=spec.avd_first, use_splat=spec.radix > 0,
                  dropblock_prob=0.0, final_drop=spec.final_drop, classes=classes,
                  name_prefix="resnest_")


def timm_name(name: str, overrides: Optional[dict] = None) -> Optional[str]:
    """timm's name for our zoo model ``name``, or None where timm has no such network."""
    return None if overrides else _TIMM_NAMES.get(name)


def randomize_batchnorm(net, seed: int, gamma: Tuple[float, float] = (0.5, 1.5),
                        variance: Tuple[float, float] = (0.5, 1.5), shift_std: float = 0.1,
                        magnitude: float = 2.0):
    """Xavier weights, then BatchNorm ``gamma`` and running variance uniform in the given
    ranges, ``beta`` and running mean normal with ``shift_std``; returns ``net``.

    ``seed`` seeds the BatchNorm draws; the Xavier weights come from MXNet's generator as the
    caller seeded it. A ``gamma`` range below 1 (e.g. 0.2-0.6) keeps activations of order 1
    through the deepest networks.
    """
    rng = np.random.RandomState(seed)
    net.initialize(mx.init.Xavier(magnitude=magnitude), force_reinit=True)
    draws = {"running_var": lambda shape: rng.uniform(*variance, shape),
             "gamma": lambda shape: rng.uniform(*gamma, shape),
             "running_mean": lambda shape: rng.normal(0, shift_std, shape),
             "beta": lambda shape: rng.normal(0, shift_std, shape)}
    for name, param in net.collect_params().items():
        for suffix, draw in draws.items():
            if name.endswith(suffix):
                param.set_data(mx.nd.array(draw(param.shape)))
    return net
