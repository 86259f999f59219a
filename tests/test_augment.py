"""RandAugment, CutMix (with the mixup/CutMix switch) and random erasing, against known
answers: identities at magnitude 0, areas and target weights, and frequencies over many
draws."""
import math
import random

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from runs import tiny

from resnest_gluon.config import ConfigError, load_config
from resnest_gluon.data import MixConfig, RandAugment, RandomErasing, cutmix, targets_for_batch
from resnest_gluon.data.mix import cutmix_box
from resnest_gluon.data.randaugment import RAND_OPS
from resnest_gluon.training.loop import fit

MAGNITUDE_FREE = {"AutoContrast", "Equalize", "Invert"}


@pytest.fixture(scope="module")
def photo():
    """A real photo crop at reduced contrast (so that AutoContrast has work to do)."""
    from sklearn.datasets import load_sample_images
    crop = load_sample_images().images[0][100:196, 200:296].astype(np.float32)
    return Image.fromarray((crop * 0.5 + 60).astype(np.uint8))


@pytest.mark.parametrize("name", RAND_OPS)
def test_at_magnitude_0_only_the_magnitude_free_operations_change_an_image(photo, name):
    always = RandAugment(n=1, m=0, mstd=0, prob=1.0, ops=[name])
    strong = RandAugment(n=1, m=10, mstd=0, prob=1.0, ops=[name])
    original = np.asarray(photo)
    at_zero = np.asarray(always(photo, random.Random(0)))
    assert np.array_equal(at_zero, original) == (name not in MAGNITUDE_FREE), name
    assert not np.array_equal(np.asarray(strong(photo, random.Random(0))), original), name


def test_randaugment_draws_ops_magnitudes_and_skips_as_timm_does(photo):
    augment = RandAugment(n=2, m=9, mstd=0.5)
    first = np.asarray(augment(photo, random.Random(5)))
    assert np.array_equal(first, np.asarray(augment(photo, random.Random(5))))   # seeded
    # each of n ops applied with probability 0.5: a quarter of images come out untouched
    untouched = sum(np.array_equal(np.asarray(augment(photo, random.Random(s))),
                                   np.asarray(photo)) for s in range(400))
    assert 60 < untouched < 150
    with pytest.raises(ValueError, match="m in \\[0, 10\\]"):
        RandAugment(n=2, m=11)


def test_cutmix_pastes_a_rectangle_and_mixes_targets_by_its_real_area():
    rng = np.random.default_rng(0)
    data = mx.nd.array(rng.normal(size=(6, 3, 20, 28)))
    targets = mx.nd.one_hot(mx.nd.array([0, 1, 2, 3, 4, 5]), 6) * 0.9 + 0.1 / 6
    flipped = data.asnumpy()[::-1]
    for seed in range(50):
        lam = float(np.random.default_rng(seed).beta(1.0, 1.0))
        top, bottom, left, right = cutmix_box(20, 28, lam, np.random.default_rng(seed))
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 28
        mixed, mixed_targets, own = cutmix(data, targets, lam, np.random.default_rng(seed))
        area = (bottom - top) * (right - left) / (20 * 28)
        assert own == pytest.approx(1 - area)
        inside = np.zeros((20, 28), bool)
        inside[top:bottom, left:right] = True
        got = mixed.asnumpy()
        np.testing.assert_array_equal(got[:, :, inside], flipped[:, :, inside])
        np.testing.assert_array_equal(got[:, :, ~inside], data.asnumpy()[:, :, ~inside])
        np.testing.assert_allclose(mixed_targets.asnumpy().sum(axis=1), 1.0, rtol=1e-6)
        expected = own * targets.asnumpy() + (1 - own) * targets.asnumpy()[::-1]
        np.testing.assert_allclose(mixed_targets.asnumpy(), expected, rtol=1e-6)


def test_the_switch_gives_cutmix_at_its_probability():
    mix = MixConfig(10, 0.1, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.3)
    rng = np.random.default_rng(1)
    draws = [mix.choose(rng) for _ in range(4000)]
    assert abs(draws.count("cutmix") / 4000 - 0.3) < 0.03
    assert set(draws) == {"cutmix", "mixup"}
    assert MixConfig(10, cutmix_alpha=1.0).choose(rng) == "cutmix"
    data = mx.nd.ones((4, 3, 8, 8))
    _, targets, sparse = targets_for_batch(data, mx.nd.array([0, 1, 2, 3]), mix, rng)
    assert not sparse and np.allclose(targets.asnumpy().sum(axis=1), 1.0)


def test_random_erasing_areas_ratios_and_frequency():
    erasing = RandomErasing(prob=0.5)
    rng = random.Random(3)
    boxes = [erasing.box(64, 80, rng) for _ in range(4000)]
    found = [b for b in boxes if b is not None]
    assert abs(len(found) / 4000 - 0.5) < 0.03   # ten tries almost always fit at 64x80
    for top, left, h, w in found:
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 80
        # rounding h and w to whole pixels moves area and ratio a little
        assert 0.02 * 0.8 <= h * w / (64 * 80) <= (1 / 3) * 1.25
        assert 0.3 * 0.75 <= h / w <= (1 / 0.3) * 1.33
    areas = [h * w / (64 * 80) for _, _, h, w in found]
    assert 0.13 < np.mean(areas) < 0.2             # uniform on [0.02, 1/3]: mean 0.18


@pytest.mark.parametrize("mode", ["const", "pixel"])
def test_random_erasing_fills_as_normalisation_expects(mode):
    mean, std = (120.0, 110.0, 100.0), (50.0, 40.0, 30.0)
    erasing = RandomErasing(prob=1.0, mode=mode, mean=mean, std=std, area=(0.3, 0.3),
                            ratio=(1.0, 1.0))
    image = np.zeros((100, 100, 3), np.uint8)
    image.setflags(write=False)                    # as a decoded image's buffer is
    out = erasing(image, random.Random(0))
    region = out[out.any(axis=2)]                  # the erased pixels (none are black)
    assert abs(len(region) - 3000) < 300
    if mode == "const":
        assert (region == np.rint(mean)).all()
    else:
        normalised = (region - np.asarray(mean)) / np.asarray(std)
        assert abs(normalised.mean()) < 0.1 and abs(normalised.std() - 1) < 0.1
    assert (image == 0).all()                      # a read-only input is copied, not changed


def test_augmentation_keys_are_checked():
    with pytest.raises(ConfigError, match="alternatives"):
        load_config(None, ["data.randaugment_n=2"])   # AutoAugment is on by default
    config = load_config(None, ["data.autoaugment=false", "data.randaugment_n=2"])
    assert (config.data.randaugment_m, config.data.randaugment_mstd) == (9.0, 0.5)
    for bad in ("data.cutmix_alpha=-1", "data.mix_switch_prob=2", "data.random_erasing=1.5",
                "data.erasing_mode=noise", "data.randaugment_m=12"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_training_with_every_new_augmentation(digits, tmp_path):
    summary = fit(load_config(None, tiny(digits, "train.epochs=1", "data.randaugment_n=2",
                                         "data.cutmix_alpha=1.0", "data.mixup_alpha=0.2",
                                         "data.random_erasing=0.25", "train.accumulate=2",
                                         "train.batch_size=8")), str(tmp_path))
    assert summary["status"] == "finished" and summary["global_step"] == 6
    assert math.isfinite(summary["last_eval"]["top1"])
