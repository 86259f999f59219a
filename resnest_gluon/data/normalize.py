"""Mean/std normalisation of RGB images: the one formula, in the three places it runs.

This module owns :class:`Normalization`: ``(x - mean) / std`` per RGB channel, with the result
in CHW layout. The loader's workers write it straight into shared memory
(:meth:`Normalization.write_chw`), ``predict`` applies it to one image
(:meth:`Normalization.image`), and a uint8 batch can be normalised on the device
(:meth:`Normalization.batch`). The mean and std themselves belong to the model (its weights
were trained with them: ``resnest_gluon.models.resolve_eval_settings``) and are passed in.
"""
from typing import Sequence

import cv2
import mxnet as mx
import numpy as np

__all__ = ["Normalization"]


class Normalization:
    """``(x - mean) / std`` per RGB channel, as ``x * scale + shift``.

    Parameters
    ----------
    mean, std : sequence of 3 floats
        RGB mean and standard deviation on the 0-255 scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries (RGB) and std > 0, got {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.scale = (1.0 / np.asarray(self.std)).astype(np.float32)
        self.shift = (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)
        self._on_device = {}   # (context, dtype) -> (scale, shift) NDArrays, uploaded once

    def write_chw(self, out: np.ndarray, rgb: np.ndarray):
        """Write the normalised ``rgb`` (H, W, 3 uint8) into ``out`` (3, H, W float32)."""
        for channel, plane in enumerate(cv2.split(rgb)):
            target = out[channel]
            target[...] = plane
            target *= self.scale[channel]
            target += self.shift[channel]

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 image -> a new (3, H, W) float32 array."""
        out = np.empty((3,) + rgb.shape[:2], np.float32)
        self.write_chw(out, rgb)
        return out

    def batch(self, batch_uint8, ctx=None, dtype: str = "float32"):
        """An (N, H, W, 3) uint8 NDArray -> (N, 3, H, W) ``dtype`` on ``ctx``."""
        ctx = ctx or batch_uint8.context
        x = batch_uint8.as_in_context(ctx).astype(dtype)
        key = (ctx, dtype)
        if key not in self._on_device:
            self._on_device[key] = tuple(
                mx.nd.array(values, ctx=ctx, dtype=dtype).reshape((1, 1, 1, 3))
                for values in (self.scale, self.shift))
        scale, shift = self._on_device[key]
        return mx.nd.broadcast_add(mx.nd.broadcast_mul(x, scale), shift).transpose((0, 3, 1, 2))
