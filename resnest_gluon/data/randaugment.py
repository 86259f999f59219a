"""RandAugment (Cubuk et al., 2020) as timm runs it, on the AutoAugment operations.

This module owns :class:`RandAugment`: ``n`` operations drawn uniformly from
:data:`RAND_OPS`, each applied with probability 0.5 (timm's default) at magnitude ``m`` on a
0-10 scale, optionally drawn per operation from a normal distribution of standard deviation
``mstd`` around ``m`` and clipped to [0, 10] (timm's ``mstd``). The operations and their
ranges at magnitude 10 are :mod:`.autoaugment`'s at its top level: shear 0.3, translation 0.45
of the side, rotation 30 degrees, enhancement 1 +- 0.9, posterize to 4 bits, solarize at 0.
At magnitude 0 every operation but AutoContrast, Equalize and Invert is the identity.
"""
import random
from typing import Sequence

from PIL import Image

from .autoaugment import OPS, apply_op, op_value

__all__ = ["RandAugment", "RAND_OPS", "rand_value", "MAX_MAGNITUDE"]

MAX_MAGNITUDE = 10.0
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
            "TranslateY")


def rand_value(name: str, magnitude: float, sign: float = 1.0) -> float:
    """The argument of operation ``name`` at ``magnitude`` in [0, 10], with ``sign`` for the
    signed operations."""
    return op_value(name, min(max(magnitude, 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE, sign=sign)


class RandAugment:
    """Apply ``n`` random operations at magnitude ``m`` (see the module docstring).

    Parameters
    ----------
    n : int
        Operations per image.
    m : float
        Magnitude, 0 to 10 (timm's ``rand-m9-n2`` is ``m=9, n=2``).
    mstd : float
        Standard deviation of the per-operation magnitude (0: always ``m``).
    prob : float
        Probability of applying each drawn operation.
    ops : sequence of str
        The operations to draw from.
    """

    def __init__(self, n: int = 2, m: float = 9.0, mstd: float = 0.0, prob: float = 0.5,
                 ops: Sequence[str] = RAND_OPS):
        if n < 1 or not 0 <= m <= MAX_MAGNITUDE or mstd < 0 or not 0 <= prob <= 1:
            raise ValueError(f"RandAugment needs n >= 1, m in [0, 10], mstd >= 0, prob in "
                             f"[0, 1]; got n={n}, m={m}, mstd={mstd}, prob={prob}")
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment operations {unknown}")
        self.n, self.m, self.mstd, self.prob, self.ops = int(n), float(m), mstd, prob, tuple(ops)

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for _ in range(self.n):
            name = self.ops[rng.randrange(len(self.ops))]
            if rng.random() >= self.prob:
                continue
            magnitude = self.m if self.mstd <= 0 else rng.gauss(self.m, self.mstd)
            sign = -1.0 if rng.random() < 0.5 else 1.0
            img = apply_op(img, name, rand_value(name, magnitude, sign))
        return img
