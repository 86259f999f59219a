"""What a network expects as input at evaluation: the one rule for eval settings.

This module owns :class:`EvalSettings` (size, centre-crop ratio, interpolation, mean/std) and
:func:`resolve_eval_settings`, which the training loop, ``verify``, ``export`` and ``predict``
all call, so that a model is evaluated, exported and served at the same settings.
"""
import dataclasses
from typing import Optional, Tuple

from .zoo import eval_crop_ratio, get_spec

__all__ = ["EvalSettings", "resolve_eval_settings"]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Evaluation preprocessing of one model.

    Attributes
    ----------
    size : int
        Side of the square network input.
    crop_ratio : float
        Centre crop / resized shorter side.
    interpolation : str
        Resize filter (``bicubic``, ``bilinear``, ...).
    mean, std : tuple of float
        Per-channel RGB normalisation, 0-255 scale: the network sees ``(x - mean) / std``.
    """

    size: int
    crop_ratio: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists)."""
        return {"size": self.size, "crop_ratio": self.crop_ratio,
                "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}


def resolve_eval_settings(model: str, train_size: Optional[int] = None,
                          size: Optional[int] = None, crop_ratio: Optional[float] = None,
                          interpolation: Optional[str] = None) -> EvalSettings:
    """The evaluation settings of zoo model ``model``; explicit values win.

    Parameters
    ----------
    model : str
        Zoo name (its spec gives the defaults).
    train_size : int, optional
        The size the network was trained at. Trained at the spec's own train size (or not
        given), it is evaluated at the spec's eval size (e.g. 256 for ResNeSt-101, 320 for
        -200, 416 for -269); trained at another size, at that size.
    size, crop_ratio, interpolation : optional
        Explicit choices (a config's ``data.eval_size``/``data.crop_ratio``, a command-line
        flag). The crop ratio defaults to 0.875 below 320 px and ``size/(size+32)`` from 320.

    Returns
    -------
    EvalSettings
    """
    spec = get_spec(model)
    if size is None:
        size = spec.eval_size if train_size in (None, spec.train_size) else train_size
    return EvalSettings(size=int(size), crop_ratio=float(crop_ratio or eval_crop_ratio(size)),
                        interpolation=interpolation or spec.interpolation,
                        mean=tuple(spec.mean), std=tuple(spec.std))
