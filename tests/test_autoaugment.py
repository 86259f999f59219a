"""AutoAugment: every operation against a known answer and Pillow, the policy against the paper."""
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from resnest_gluon.data.autoaugment import (
    IMAGENET_POLICY,
    OPS,
    AutoAugment,
    apply_op,
    magnitude_value,
)


@pytest.fixture(scope="module")
def image():
    from sklearn.datasets import load_sample_images
    return Image.fromarray(load_sample_images().images[1]).resize((96, 64))


def arr(img):
    return np.asarray(img).astype(int)


def test_policy_is_the_papers_imagenet_policy():
    assert len(IMAGENET_POLICY) == 25
    assert IMAGENET_POLICY[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
    assert IMAGENET_POLICY[-1] == (("Equalize", 0.8, 8), ("Equalize", 0.6, 3))
    used = {name for sub in IMAGENET_POLICY for name, _, _ in sub}
    assert used == {"Posterize", "Rotate", "Solarize", "AutoContrast", "Equalize", "Color",
                    "Contrast", "Invert", "Sharpness", "ShearX"}


def test_identities(image):
    assert np.array_equal(arr(apply_op(apply_op(image, "Invert", 0), "Invert", 0)), arr(image))
    assert np.array_equal(arr(apply_op(image, "Rotate", 0.0)), arr(image))
    assert np.array_equal(arr(apply_op(image, "Posterize", 8)), arr(image))
    assert np.array_equal(arr(apply_op(image, "Solarize", 256)), arr(image))
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        assert np.array_equal(arr(apply_op(image, name, 0.0)), arr(image)), name
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert np.abs(arr(apply_op(image, name, 1.0)) - arr(image)).max() <= 1, name


def test_known_answers(image):
    a = arr(image)
    np.testing.assert_array_equal(arr(apply_op(image, "Invert", 0)), 255 - a)
    np.testing.assert_array_equal(arr(apply_op(image, "Posterize", 4)), a & 0xF0)
    np.testing.assert_array_equal(arr(apply_op(image, "Solarize", 128)),
                                  np.where(a >= 128, 255 - a, a))
    np.testing.assert_array_equal(arr(apply_op(image, "Solarize", 0)), 255 - a)
    black = arr(apply_op(image, "Brightness", 0.0))
    assert black.max() == 0
    gray = arr(apply_op(image, "Color", 0.0))
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1
    auto = arr(apply_op(image, "AutoContrast", 0))
    assert auto.min() == 0 and auto.max() == 255
    eq = arr(apply_op(image, "Equalize", 0))
    assert abs(np.mean(eq) - 127.5) < 20                         # histogram spread out
    moved = arr(apply_op(image, "TranslateX", 0.25))              # a quarter to the left
    np.testing.assert_array_equal(moved[:, :72], a[:, 24:])
    assert (moved[:, 72:] == 128).all()                           # grey fill
    rotated = arr(apply_op(image, "Rotate", 30.0))
    assert (rotated[0, 0] == 128).all()                           # corner filled grey


def test_magnitudes_follow_the_paper():
    assert magnitude_value("Rotate", 9) == pytest.approx(30)
    assert magnitude_value("Rotate", 9, -1) == pytest.approx(-30)
    assert magnitude_value("ShearX", 9) == pytest.approx(0.3)
    assert magnitude_value("TranslateY", 9) == pytest.approx(150 / 331)
    assert magnitude_value("Color", 9) == pytest.approx(1.9)
    assert magnitude_value("Color", 9, -1) == pytest.approx(0.1)
    assert magnitude_value("Color", 0) == 1.0
    assert [magnitude_value("Posterize", lv) for lv in (0, 5, 9)] == [8, 6, 4]
    assert magnitude_value("Solarize", 0) == 256 and magnitude_value("Solarize", 9) == 0
    with pytest.raises(ValueError):
        magnitude_value("Rotate", 10)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_keeps_shape_and_dtype(image, name):
    out = apply_op(image, name, magnitude_value(name, 5, -1))
    assert out.size == image.size and out.mode == "RGB"
    assert np.asarray(out).dtype == np.uint8


def test_policy_application_is_seeded(image):
    aa = AutoAugment()
    outs = [arr(aa(image, random.Random(s))) for s in range(20)]
    assert any(not np.array_equal(o, arr(image)) for o in outs)
    np.testing.assert_array_equal(arr(aa(image, random.Random(3))), outs[3])
    with pytest.raises(ValueError):
        AutoAugment([(("Nope", 0.5, 1), ("Invert", 0.5, 1))])


_PILLOW = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
}


@pytest.mark.parametrize("name", sorted(_PILLOW))
def test_colour_operations_equal_pillows(image, name):
    """Our table and OpenCV versions against Pillow's own on a photo, a low-contrast photo,
    a posterized one, a nearly flat one and noise, at factors in and beyond [0, 1]: exact for
    the table ones, within one level for the blends (OpenCV rounds, Pillow truncates)."""
    a = np.asarray(image, np.float32)
    flat = np.full_like(a, 77)
    flat[0, 0] = 200
    noise = np.random.RandomState(0).randint(0, 256, (9, 7, 3))
    images = [a, a * 0.3 + 80, (a // 64) * 64, flat, noise]
    tolerance = 1 if name in ("Color", "Sharpness") else 0
    for pixels in images:
        img = Image.fromarray(np.asarray(pixels, np.uint8))
        for factor in (0.0, 0.1, 0.37, 1.0, 1.3, 1.9):
            ours, pillow = arr(apply_op(img, name, factor)), arr(_PILLOW[name](img, factor))
            assert np.abs(ours - pillow).max() <= tolerance, (name, factor)
