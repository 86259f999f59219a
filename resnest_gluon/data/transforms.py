"""Per-image transforms of the ImageNet recipe: decode, crop, flip, AutoAugment, colour.

This module owns :class:`TrainTransform` and :class:`EvalTransform`: callables from encoded
image bytes (and a seeded RNG) to a ``size x size x 3`` uint8 array. They run in the loader's
worker processes; mean/std normalisation and the NCHW layout follow in one pass
(:class:`resnest_gluon.data.normalize.Normalization`).

Speed choices, each giving the same distribution of outputs as the textbook sequence:

* for training, JPEG decoding uses DCT scaling (``Image.draft``) when the crop is at least
  twice the output size, decoding fewer pixels; the crop then spans 1 to 2 source pixels per
  output pixel, where OpenCV's bilinear (or bicubic) warp of the crop (:func:`resize_crop`)
  needs no anti-aliasing and costs a quarter of Pillow's resize; shrinking by more averages
  areas;
* for evaluation, Pillow's anti-aliased resize of the centre box runs compiled
  (:mod:`.resample`): the same pixels in a quarter of the time;
* brightness, contrast and saturation jitter (random order) and PCA lighting are all affine
  maps of the RGB vector, so they are composed into one 3x4 matrix and applied in a single
  pass (``cv2.transform``); the contrast mean is carried through the composition exactly.
"""
import base64
import functools
import io
import math
import random
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from ..errors import UserError
from .autoaugment import AutoAugment
from .resample import compiled_resize_available, resize_box

__all__ = ["decode", "random_resized_crop_box", "TrainTransform", "EvalTransform", "RandomErasing",
           "color_jitter_matrix", "INTERPOLATIONS", "resample_filter", "resize_crop", "to_rgb",
           "DECODE_ERRORS", "decode_error", "BrokenDecoderError", "check_jpeg_decoder"]

# ImageNet RGB covariance: eigenvalues and eigenvectors (columns), 0-255 scale.
PCA_EIGVAL = np.array([55.46, 4.794, 1.148])
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])
GRAY = np.array([0.299, 0.587, 0.114])
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
CV2_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                      "nearest": cv2.INTER_NEAREST, "lanczos": cv2.INTER_LANCZOS4}


def resample_filter(interpolation: str) -> int:
    """The Pillow filter named ``interpolation``; ``ValueError`` listing the valid names."""
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: "
                         f"{', '.join(INTERPOLATIONS)}") from None


def resize_crop(rgb: np.ndarray, box, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The box ``(left, top, right, bottom)`` of ``rgb`` (H, W, 3 uint8), resized to
    ``size x size`` with OpenCV.

    The box keeps its sub-pixel position and size: output pixel centres map onto it as in
    Pillow's ``resize(box=...)`` (an affine warp, edges replicated). Along an axis shrunk by
    more than 2x, where interpolation would alias, the box is rounded to whole pixels and
    averaged over areas instead (``INTER_AREA``).
    """
    left, top, right, bottom = (float(v) for v in box)
    scale_x, scale_y = (right - left) / size, (bottom - top) / size
    if max(scale_x, scale_y) > 2:
        x0, y0 = int(round(left)), int(round(top))
        x1 = min(max(x0 + 1, int(round(right))), rgb.shape[1])
        y1 = min(max(y0 + 1, int(round(bottom))), rgb.shape[0])
        return cv2.resize(rgb[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    matrix = np.array([[scale_x, 0.0, left + 0.5 * scale_x - 0.5],
                       [0.0, scale_y, top + 0.5 * scale_y - 0.5]])
    return cv2.warpAffine(rgb, matrix, (size, size),
                          flags=CV2_INTERPOLATIONS[interpolation] | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB version of ``img``, whatever its mode.

    Pillow's own conversion clips 16-bit and 32-bit integer images to 0-255 (a 16-bit PNG turns
    almost white) and float images too (0-1 data turns black). Those are scaled here instead:
    integer images from 0-65535, float images from 0-1 (or taken as 0-255 when a value exceeds
    1). Alpha is dropped, palettes and CMYK/YCbCr are converted by Pillow.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
    else:
        return img.convert("RGB")
    grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


# What decoding a damaged or hostile image raises: Pillow's errors for truncated and unknown
# data (OSError, SyntaxError, ValueError) and its refusal of images with more than twice
# Image.MAX_IMAGE_PIXELS pixels (a decompression bomb).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_error(err: BaseException) -> str:
    """What went wrong decoding an image, in words (Pillow names its in-memory buffer, which
    means nothing to the user, when it cannot identify a format)."""
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or damaged at its start)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


# A 16x16 JPEG written by Pillow's own libjpeg (quality 75).
_KNOWN_GOOD_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIs"
    "IxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIy"
    "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjL/wAARCAAQABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAA"
    "AAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAk"
    "M2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKT"
    "lJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QA"
    "HwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdh"
    "cRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hp"
    "anN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk"
    "5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDl6KKKZ+jn/9k=")


class BrokenDecoderError(UserError, RuntimeError):
    """This process's Pillow cannot decode JPEGs at all: the images are not to blame."""


@functools.lru_cache(maxsize=1)
def check_jpeg_decoder() -> None:
    """Raise :class:`BrokenDecoderError` if Pillow fails to decode a known-good JPEG here.

    Called when an image fails to decode, before the image is blamed: a Pillow imported after
    ``horovod.mxnet`` binds its libjpeg calls to libmxnet's copy (same symbol names), and then
    every JPEG fails ("broken data stream"). ``training/dist.py`` imports Pillow first; a
    script importing ``horovod.mxnet`` before anything else still gets this state.
    """
    try:
        with Image.open(io.BytesIO(_KNOWN_GOOD_JPEG)) as img:
            img.load()
    except DECODE_ERRORS as err:
        raise BrokenDecoderError(
            f"Pillow cannot decode any JPEG in this process ({decode_error(err)}): "
            "horovod.mxnet was imported before Pillow, which binds Pillow's libjpeg calls to "
            "libmxnet's copy; import PIL.Image (or resnest_gluon.training) before "
            "horovod.mxnet") from None


def decode(image_bytes: bytes, draft_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Decode to an 8-bit RGB PIL image (:func:`to_rgb`); with ``draft_size`` JPEGs may decode
    at 1/2, 1/4 or 1/8 scale, never below that size."""
    img = Image.open(io.BytesIO(image_bytes))
    if draft_size is not None and img.format == "JPEG":
        img.draft("RGB", draft_size)
    return to_rgb(img)


def random_resized_crop_box(width, height, rng: random.Random, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: area fraction in ``scale``, log-uniform aspect in ``ratio``.

    Ten tries, then the centre crop with the aspect clamped into ``ratio``.

    Returns
    -------
    tuple
        ``(left, top, right, bottom)`` in pixels.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def color_jitter_matrix(mean_rgb, rng: random.Random, brightness=0.4, contrast=0.4,
                        saturation=0.4, lighting=0.1) -> np.ndarray:
    """3x4 affine map ``[A | t]`` applying jitter (random order) then PCA lighting.

    ``mean_rgb`` is the image's mean colour, needed for the contrast step (which blends with
    the mean grey level of the image as it is at that step).
    """
    matrix = np.hstack([np.eye(3), np.zeros((3, 1))])

    def compose(a, t):
        nonlocal matrix
        matrix = np.hstack([a @ matrix[:, :3], (a @ matrix[:, 3] + t)[:, None]])

    steps = []
    if brightness > 0:
        steps.append("brightness")
    if contrast > 0:
        steps.append("contrast")
    if saturation > 0:
        steps.append("saturation")
    rng.shuffle(steps)
    mean_rgb = np.asarray(mean_rgb, dtype=np.float64)
    for step in steps:
        if step == "brightness":
            compose(np.eye(3) * rng.uniform(1 - brightness, 1 + brightness), np.zeros(3))
        elif step == "contrast":
            c = rng.uniform(1 - contrast, 1 + contrast)
            current_mean = matrix[:, :3] @ mean_rgb + matrix[:, 3]
            compose(np.eye(3) * c, np.full(3, (1 - c) * GRAY @ current_mean))
        else:
            s = rng.uniform(1 - saturation, 1 + saturation)
            compose(np.eye(3) * s + (1 - s) * np.outer(np.ones(3), GRAY), np.zeros(3))
    if lighting > 0:
        alpha = np.array([rng.gauss(0, lighting) for _ in range(3)])
        compose(np.eye(3), PCA_EIGVEC @ (alpha * PCA_EIGVAL))
    return matrix


def apply_affine(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x4 colour matrix to a uint8 HxWx3 array, saturating to 0..255."""
    return cv2.transform(rgb, matrix.astype(np.float32))


class TrainTransform:
    """The training recipe for one image.

    Parameters
    ----------
    size : int
        Output side.
    autoaugment : bool
        ImageNet AutoAugment policy after crop and flip.
    jitter : float
        Brightness/contrast/saturation jitter strength (0 disables).
    lighting : float
        PCA lighting noise std (0 disables).
    scale, ratio : tuple
        RandomResizedCrop area and aspect ranges.
    interpolation : str, optional
        Resize filter; default bilinear below 320 and bicubic at 320 and above (the paper's
        large-crop path: crop, then bicubic resize).
    fast_decode : bool
        Allow reduced-scale JPEG decoding when the crop is large (see module docstring).
    randaugment : RandAugment, optional
        Instead of AutoAugment (not both).
    erasing : RandomErasing, optional
        Random erasing, last (after the colour jitter).
    """

    def __init__(self, size=224, autoaugment=True, jitter=0.4, lighting=0.1,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=None,
                 fast_decode=True, randaugment=None, erasing=None):
        if autoaugment and randaugment is not None:
            raise ValueError("AutoAugment and RandAugment are alternatives: choose one")
        self.size = int(size)
        self.autoaugment = AutoAugment() if autoaugment else randaugment
        self.erasing = erasing
        self.jitter = float(jitter)
        self.lighting = float(lighting)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.interpolation = interpolation or ("bicubic" if self.size >= 320 else "bilinear")
        resample_filter(self.interpolation)   # an unknown name fails here, listing the valid
        self.fast_decode = fast_decode

    def __call__(self, image_bytes: bytes, rng: random.Random) -> np.ndarray:
        img = Image.open(io.BytesIO(image_bytes))
        width, height = img.size
        box = random_resized_crop_box(width, height, rng, self.scale, self.ratio)
        if self.fast_decode and img.format == "JPEG":
            # Ask for an image in which the crop still spans >= size pixels.
            want = (math.ceil(width * self.size / (box[2] - box[0])),
                    math.ceil(height * self.size / (box[3] - box[1])))
            img.draft("RGB", want)
            fx, fy = img.size[0] / width, img.size[1] / height
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        rgb = resize_crop(np.asarray(to_rgb(img)), box, self.size, self.interpolation)
        if rng.random() < 0.5:
            rgb = cv2.flip(rgb, 1)
        if self.autoaugment is not None:
            rgb = np.asarray(self.autoaugment(Image.fromarray(rgb), rng))
        if self.jitter > 0 or self.lighting > 0:
            mean = cv2.mean(rgb)[:3]
            matrix = color_jitter_matrix(mean, rng, self.jitter, self.jitter, self.jitter,
                                         self.lighting)
            rgb = apply_affine(rgb, matrix)
        if self.erasing is not None:
            rgb = self.erasing(rgb, rng)
        return rgb


class RandomErasing:
    """Random erasing (Zhong et al., 2020) with timm's defaults, on 8-bit RGB images.

    With probability ``prob`` one rectangle of ``area`` (a fraction of the image, uniform in
    ``area``) and aspect ratio log-uniform in ``ratio`` is filled: ``const`` with the mean
    colour (what normalises to 0, timm's ``const`` mode), ``pixel`` with ``mean + std * N(0,
    1)`` per pixel and channel (timm's ``pixel`` mode), rounded and clipped to 0-255 since the
    image is still 8-bit here (at ImageNet's mean/std about 3% of the draws are clipped).
    Ten tries find a rectangle that fits, else the image is left whole (as timm does). A
    writable image is erased in place; a read-only one is copied first.
    """

    def __init__(self, prob: float = 0.25, mode: str = "pixel", mean=(123.675, 116.28, 103.53),
                 std=(58.395, 57.12, 57.375), area=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3)):
        if not 0 <= prob <= 1 or mode not in ("pixel", "const"):
            raise ValueError(f"random erasing needs prob in [0, 1] and mode pixel or const, got "
                             f"{prob}, {mode!r}")
        self.prob, self.mode = float(prob), mode
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.area, self.log_ratio = area, (math.log(ratio[0]), math.log(ratio[1]))

    def box(self, height: int, width: int, rng: random.Random):
        """``(top, left, h, w)`` of the rectangle to erase, or None (not erased this time)."""
        if rng.random() >= self.prob:
            return None
        for _ in range(10):
            target = rng.uniform(*self.area) * height * width
            aspect = math.exp(rng.uniform(*self.log_ratio))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        return None

    def __call__(self, rgb: np.ndarray, rng: random.Random) -> np.ndarray:
        found = self.box(rgb.shape[0], rgb.shape[1], rng)
        if found is None:
            return rgb
        top, left, h, w = found
        if self.mode == "const":
            fill = np.clip(np.rint(self.mean), 0, 255).astype(np.uint8)
        else:   # OpenCV draws straight into uint8, rounding and saturating: twice NumPy's speed
            fill = np.empty((h, w, 3), np.uint8)
            cv2.setRNGSeed(rng.getrandbits(31))
            cv2.randn(fill, tuple(self.mean.tolist()), tuple(self.std.tolist()))
        if not rgb.flags.writeable:   # a view of a decoded image's buffer
            rgb = np.array(rgb, copy=True)
        rgb[top:top + h, left:left + w] = fill
        return rgb


class EvalTransform:
    """Resize the shorter side to ``ceil(size / crop_ratio)``, then centre-crop ``size``.

    Done as one resize of the corresponding box of the original image, Pillow's anti-aliased
    filter computed by the compiled resampler (:func:`.resample.resize_box`, the same pixels).

    Parameters
    ----------
    size : int
        Output side.
    crop_ratio : float
        0.875 by default; ``size / (size + 32)`` for the large-crop models.
    interpolation : str
        Resize filter (bicubic by default, as the published evaluation).
    """

    def __init__(self, size=224, crop_ratio=0.875, interpolation="bicubic"):
        if not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        self.size = int(size)
        self.resize = int(math.ceil(self.size / crop_ratio))
        self.resample = resample_filter(interpolation)
        # Load (or build) the compiled resampler here, in the process that forks the loader's
        # workers: they inherit it, and a failure is reported once, not once per worker.
        compiled_resize_available()

    def __call__(self, image_bytes: bytes, rng: Optional[random.Random] = None) -> np.ndarray:
        img = decode(image_bytes)
        width, height = img.size
        scale = self.resize / min(width, height)
        # the centre size x size window of the resized image, in original pixels
        side_w, side_h = self.size / scale, self.size / scale
        left, top = (width - side_w) / 2, (height - side_h) / 2
        return resize_box(img, (self.size, self.size), self.resample,
                          (left, top, left + side_w, top + side_h))
