"""AutoAugment (Cubuk et al., 2019) with the ImageNet policy, on PIL images.

This module owns the image operations, their magnitude scales and the 25 ImageNet
sub-policies. Magnitudes are the paper's 10 levels (0..9): shear up to 0.3, translation up to
150/331 of the image side, rotation up to 30 degrees, enhancement factors 1 +- 0.9, posterize
from 8 down to 4 bits, solarize threshold from 256 down to 0; geometric ops fill with grey 128
as in the original implementation. A random sign is drawn for the signed operations.

The colour operations are written here rather than taken from ``ImageEnhance``/``ImageOps``,
for speed (they were half of an augmented image's cost): AutoContrast, Equalize, Brightness
and Contrast are per-value lookup tables computed with Pillow's own arithmetic, so their
results are Pillow's exactly; Color and Sharpness blend with OpenCV, which rounds where
Pillow truncates, so they differ from Pillow's by at most one level.
"""
import random
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image, ImageOps, ImageStat

__all__ = ["IMAGENET_POLICY", "OPS", "AutoAugment", "apply_op", "magnitude_value",
           "op_value"]

FILL = (128, 128, 128)
LEVELS = 10

# (operation, probability, level) pairs of the paper's ImageNet policy.
IMAGENET_POLICY: List[Tuple[Tuple[str, float, int], Tuple[str, float, int]]] = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
]


def _affine(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=FILL)


def _blend_table(base: float, factor: float) -> List[int]:
    """``Image.blend`` of a constant image ``base`` with an image at ``factor``, per input
    value, in Pillow's arithmetic (float32, clipped, truncated), for all three bands."""
    values = np.arange(256, dtype=np.float32) - np.float32(base)
    values *= np.float32(factor)
    values += np.float32(base)
    return np.clip(values, 0, 255).astype(np.uint8).tolist() * 3


def _brightness(img, factor):
    return img.point(_blend_table(0, factor))


def _contrast(img, factor):
    mean = int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)
    return img.point(_blend_table(mean, factor))


def _blend_with(img, degenerate: np.ndarray, factor: float):
    rgb = np.asarray(img)
    return Image.fromarray(cv2.addWeighted(rgb, factor, degenerate, 1.0 - factor, 0.0))


def _color(img, factor):
    grey = cv2.cvtColor(np.asarray(img.convert("L")), cv2.COLOR_GRAY2RGB)
    return _blend_with(img, grey, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13   # ImageFilter.SMOOTH


def _sharpness(img, factor):
    rgb = np.asarray(img)
    smooth = cv2.filter2D(rgb, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    # Pillow's 3x3 filters leave the outermost pixels as they were.
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]
    return _blend_with(img, smooth, factor)


def _point_per_band(img, table):
    """``img`` through ``table(histogram)`` of each band, a 256-entry lookup table."""
    tables = [table(hist) for hist in np.asarray(img.histogram(), np.int64).reshape(-1, 256)]
    return img.point(np.concatenate(tables).tolist())


def _autocontrast_table(hist):
    present = np.flatnonzero(hist)
    low, high = (present[0], present[-1]) if present.size else (0, 0)
    if high <= low:
        return np.arange(256)
    scale = 255.0 / (high - low)
    return np.clip((np.arange(256) * scale - low * scale).astype(np.int64), 0, 255)


def _equalize_table(hist):
    present = hist[hist > 0]
    step = (present.sum() - present[-1]) // 255 if present.size > 1 else 0
    if not step:
        return np.arange(256)
    below = np.concatenate([[0], np.cumsum(hist)[:-1]])
    return np.minimum((step // 2 + below) // step, 255)


def _posterize(img, bits):
    return img if bits >= 8 else ImageOps.posterize(img, int(bits))


def _solarize(img, threshold):
    return img if threshold >= 256 else ImageOps.solarize(img, threshold)


# name -> (function(img, value), maximum value, signed)
OPS: Dict[str, Tuple[Callable, float, bool]] = {
    "ShearX": (lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), 0.3, True),
    "ShearY": (lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), 0.3, True),
    "TranslateX": (lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), 150 / 331,
                   True),
    "TranslateY": (lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), 150 / 331,
                   True),
    "Rotate": (lambda img, v: img.rotate(v, resample=Image.NEAREST, fillcolor=FILL), 30.0, True),
    "Color": (_color, 0.9, True),
    "Contrast": (_contrast, 0.9, True),
    "Brightness": (_brightness, 0.9, True),
    "Sharpness": (_sharpness, 0.9, True),
    "Posterize": (_posterize, None, False),
    "Solarize": (_solarize, None, False),
    "AutoContrast": (lambda img, v: _point_per_band(img, _autocontrast_table), None, False),
    "Equalize": (lambda img, v: _point_per_band(img, _equalize_table), None, False),
    "Invert": (lambda img, v: ImageOps.invert(img), None, False),
}
_ENHANCERS = {"Color", "Contrast", "Brightness", "Sharpness"}


def op_value(name: str, amount: float, full: float = 1.0, sign: float = 1.0) -> float:
    """The argument of operation ``name`` at ``amount`` out of ``full`` (its strongest), with
    ``sign`` for the signed operations; AutoAugment's levels (out of 9) and RandAugment's
    magnitudes (as a fraction of 10) both map onto it."""
    if name == "Posterize":
        return 8 - round(amount * 4 / full)       # 8 bits (identity) .. 4 bits
    if name == "Solarize":
        return 256 - amount * 256 / full          # 256 (identity) .. 0
    _, maximum, signed = OPS[name]
    if maximum is None:
        return 0.0
    value = maximum * amount / full * (sign if signed else 1.0)
    return 1.0 + value if name in _ENHANCERS else value


def magnitude_value(name: str, level: int, sign: float = 1.0) -> float:
    """The operation's argument at ``level`` (0..9), with ``sign`` for signed operations."""
    if not 0 <= level < LEVELS:
        raise ValueError(f"AutoAugment level must be in 0..{LEVELS - 1}, got {level}")
    return op_value(name, level, LEVELS - 1, sign)


def apply_op(img: Image.Image, name: str, value: float) -> Image.Image:
    """Apply operation ``name`` with argument ``value`` (see :func:`magnitude_value`)."""
    return OPS[name][0](img, value)


class AutoAugment:
    """Pick one sub-policy at random and apply its two operations with their probabilities.

    Parameters
    ----------
    policy : list, optional
        Sub-policies as in :data:`IMAGENET_POLICY` (the default).
    """

    def __init__(self, policy=None):
        self.policy = policy or IMAGENET_POLICY
        for sub in self.policy:
            for name, prob, level in sub:
                if name not in OPS or not 0 <= prob <= 1:
                    raise ValueError(f"bad AutoAugment operation {(name, prob, level)}")
                magnitude_value(name, level)

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for name, prob, level in self.policy[rng.randrange(len(self.policy))]:
            if rng.random() < prob:
                sign = -1.0 if rng.random() < 0.5 else 1.0
                img = apply_op(img, name, magnitude_value(name, level, sign))
        return img
