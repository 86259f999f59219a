"""The compiled resampler gives Pillow's pixels exactly, and Pillow's where it cannot run.

``resnest_gluon.data.resample.resize_box`` is the evaluation transform's resize: Pillow's
anti-aliased filters computed by ``data/csrc/resample.cc``. The reference here is Pillow
itself (``Image.resize`` with a box), on real photos (scikit-learn's samples, JPEG-decoded)
and on noise, over random boxes, output sizes (shrinking and enlarging), filters and modes.
"""
import io
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from resnest_gluon.data import EvalTransform
from resnest_gluon.data.resample import compiled_resize_available, resize_box

FILTERS = [Image.BICUBIC, Image.BILINEAR, Image.LANCZOS, Image.BOX, Image.HAMMING]


@pytest.fixture(scope="module")
def sample_photos():
    from sklearn.datasets import load_sample_images
    return [Image.fromarray(image) for image in load_sample_images().images]


def _random_case(rng, width, height):
    """A box inside ``width x height`` (sub-pixel edges, sometimes whole or touching the
    border) and an output size."""
    x0 = rng.uniform(0, width - 0.01) if rng.random() < 0.7 else 0
    y0 = rng.uniform(0, height - 0.01) if rng.random() < 0.7 else 0
    x1 = rng.uniform(x0 + 0.001, width) if rng.random() < 0.7 else width
    y1 = rng.uniform(y0 + 0.001, height) if rng.random() < 0.7 else height
    size = (rng.randint(1, 300), rng.randint(1, 300)) if rng.random() < 0.9 else (width, height)
    return (x0, y0, x1, y1), size


def test_it_is_compiled_here():
    assert compiled_resize_available()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_random_boxes_of_photos_equal_pillow_exactly(sample_photos, mode):
    rng = random.Random(mode)
    for trial in range(300):
        img = sample_photos[trial % 2].convert(mode)
        box, size = _random_case(rng, *img.size)
        resample = FILTERS[trial % len(FILTERS)]
        expected = np.asarray(img.resize(size, resample, box=box))
        got = resize_box(img, size, resample, box)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        assert np.array_equal(got, expected), (mode, img.size, box, size, resample)


def test_noise_small_images_and_enlarging_equal_pillow_exactly():
    """Noise has the sharpest edges (every clip and rounding is exercised); 1-pixel sides and
    enlarging by up to 300x cover the border cases of the taps."""
    rng, pixels = random.Random(1), np.random.default_rng(1)
    for trial in range(400):
        width, height = rng.randint(1, 40), rng.randint(1, 40)
        img = Image.fromarray(pixels.integers(0, 256, (height, width, 3), dtype=np.uint8))
        box, size = _random_case(rng, width, height)
        resample = FILTERS[trial % len(FILTERS)]
        expected = np.asarray(img.resize(size, resample, box=box))
        assert np.array_equal(resize_box(img, size, resample, box), expected)


def test_the_eval_transform_gives_pillows_pixels(sample_photos):
    for crop_ratio, size in ((0.875, 224), (320 / 352, 320), (0.875, 97)):
        transform = EvalTransform(size, crop_ratio)
        for photo in sample_photos:
            buffer = io.BytesIO()
            photo.save(buffer, "JPEG", quality=90)
            img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            scale = transform.resize / min(img.size)
            side = size / scale
            left, top = (img.size[0] - side) / 2, (img.size[1] - side) / 2
            expected = np.asarray(img.resize((size, size), Image.BICUBIC,
                                             box=(left, top, left + side, top + side)))
            assert np.array_equal(transform(buffer.getvalue()), expected)


def test_what_it_does_not_implement_goes_to_pillow(sample_photos):
    img = sample_photos[0]
    box = (10.5, 20.25, 300.75, 200.0)
    nearest = resize_box(img, (64, 48), Image.NEAREST, box)
    assert np.array_equal(nearest, np.asarray(img.resize((64, 48), Image.NEAREST, box=box)))
    rgba = img.convert("RGBA")
    assert np.array_equal(resize_box(rgba, (64, 48), Image.BICUBIC, box),
                          np.asarray(rgba.resize((64, 48), Image.BICUBIC, box=box)))
    with pytest.raises(ValueError):      # Pillow's own refusal of a box outside the image
        resize_box(img, (64, 48), Image.BICUBIC, (0, 0, img.size[0] + 5, 10))


def test_without_a_compiler_pillow_resizes_with_one_warning(tmp_path, digits):
    """Also through an evaluation loader with two worker processes: they inherit the main
    process's verdict, so the warning is logged once, and the batches are Pillow's pixels."""
    code = textwrap.dedent(f"""
        import logging, sys
        import numpy as np
        from PIL import Image
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        from resnest_gluon.data import BatchLoader, EvalTransform, ShardSet, eval_batches
        from resnest_gluon.data.recordio import unpack_record
        from resnest_gluon.data.resample import compiled_resize_available, resize_box
        shards = ShardSet({digits[1]!r})
        transform = EvalTransform(24)
        loader = BatchLoader(shards, eval_batches(len(shards), 8), transform, 24, workers=2)
        first = next(iter(loader))[0].asnumpy()[0]
        record = unpack_record(shards.read(0))[1]
        img = Image.fromarray(np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3))
        box = (3.5, 2.0, 70.25, 51.0)
        out = resize_box(img, (20, 17), Image.BICUBIC, box)
        same = np.array_equal(out, np.asarray(img.resize((20, 17), Image.BICUBIC, box=box)))
        print("compiled", compiled_resize_available(), "same", same,
              "loader", np.array_equal(first, transform(record)))
    """)
    env = dict(os.environ, RESNEST_GLUON_EXTENSIONS=str(tmp_path), CXX="/nonexistent/c++")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiled False same True loader True" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "resized by Pillow" in warnings[0], done.stderr
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".so")]
