"""Pillow's anti-aliased resize, compiled for speed: the same pixels in about a fifth of the time.

This module owns :func:`resize_box`, the evaluation transform's one resize (the published
evaluation's bicubic filter, anti-aliased, as Pillow computes it). Pillow's own resampler
spends about 1.6 ms on a 500x375 photo's centre box; ``csrc/resample.cc`` computes the same
result (bit-identical: the same coefficients, fixed-point sums and rounding, with the sums laid
out for vector units) in about 0.3 ms. It is compiled on first use and cached like the other
compiled parts (:mod:`resnest_gluon.native`); where it cannot be built, one warning is logged
and Pillow does the work, with the same result. Nothing happens at import time.
"""
import ctypes
import logging
import os
import threading

import numpy as np
from PIL import Image

from ..native import BuildError, cached_library

__all__ = ["resize_box", "compiled_resize_available"]

log = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "resample.cc")
# -ffp-contract=off: no fused multiply-adds in the coefficients, which Pillow's build has not
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
_state = {"function": None, "failure": None}
_lock = threading.Lock()
# Pillow filters the compiled resampler implements (NEAREST is not a convolution)
_FILTERS = {Image.LANCZOS, Image.BILINEAR, Image.BICUBIC, Image.BOX, Image.HAMMING}


def _build() -> str:
    return cached_library("resnest_resample", (_SOURCE,), _FLAGS, what="the image resampler")


def _load():
    function = ctypes.CDLL(_build()).resnest_resample
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_ssize_t, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                         ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_void_p]
    return function


def _compiled():
    """The compiled function, or None (its build failure logged once)."""
    if _state["function"] is None and _state["failure"] is None:
        with _lock:
            if _state["function"] is None and _state["failure"] is None:
                try:
                    _state["function"] = _load()
                except (BuildError, OSError, AttributeError) as err:
                    _state["failure"] = str(err)
                    log.warning("images are resized by Pillow (same result, slower): %s", err)
    return _state["function"]


def compiled_resize_available() -> bool:
    """Whether :func:`resize_box` runs compiled (building it on the first call)."""
    return _compiled() is not None


def resize_box(img: Image.Image, size, resample: int, box) -> np.ndarray:
    """``np.asarray(img.resize(size, resample, box=box))``, computed faster where it can be.

    Parameters
    ----------
    img : PIL.Image.Image
        An 8-bit image (``L``, ``RGB``; other modes go to Pillow).
    size : (int, int)
        Output ``(width, height)``.
    resample : int
        A Pillow filter (``Image.BICUBIC`` ...); ``NEAREST`` goes to Pillow.
    box : (float, float, float, float)
        ``(left, top, right, bottom)`` of ``img`` to resize, as in Pillow.

    Returns
    -------
    numpy.ndarray
        ``(height, width, channels)`` uint8 (``(height, width)`` for ``L``), equal to Pillow's.
    """
    function = _compiled() if img.mode in ("L", "RGB") and resample in _FILTERS else None
    if function is None:
        return _pillow_resize(img, size, resample, box)
    pixels = np.ascontiguousarray(np.asarray(img))
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    out_w, out_h = (int(v) for v in size)
    out = np.empty((out_h, out_w) + pixels.shape[2:], np.uint8)
    status = function(pixels.ctypes.data, pixels.shape[0], pixels.shape[1], channels,
                      pixels.strides[0], *(float(v) for v in box), out_w, out_h,
                      int(resample), out.ctypes.data)
    if status != 0:   # arguments Pillow refuses, or no memory: let Pillow say why
        return _pillow_resize(img, size, resample, box)
    return out


def _pillow_resize(img, size, resample, box) -> np.ndarray:
    return np.asarray(img.resize(tuple(size), resample, box=tuple(box)))


def main(argv=None) -> int:
    """Build (or find) the cached resampler (``make env`` runs it); one line either way."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = _build()
    except BuildError as err:
        log.error("error: %s (Pillow resizes instead)", err)
        return 1
    log.info("image resampler ready: %s", path)
    return 0
