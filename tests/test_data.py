"""Input pipeline: partitions, determinism, transforms, mixing, bad records."""
import io
import random

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from recordio_tools.pack import pack
from recordio_tools.sources import scan_tree
from resnest_gluon.data import (
    BatchLoader,
    DataError,
    EvalTransform,
    MixConfig,
    Normalization,
    RecordWriter,
    ShardSet,
    TrainTransform,
    batches_per_epoch,
    eval_batches,
    pack_record,
    soft_targets,
    targets_for_batch,
    train_batches,
)
from resnest_gluon.data.transforms import (
    GRAY,
    PCA_EIGVAL,
    PCA_EIGVEC,
    apply_affine,
    color_jitter_matrix,
    random_resized_crop_box,
    resample_filter,
    resize_crop,
)
from resnest_gluon.models import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

IMAGENET = Normalization(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("records", [97, 1001])
def test_train_partition_equal_batches_disjoint(world, records):
    batch = 4
    parts = [train_batches(records, batch, r, world, seed=3, epoch=2, chunk=8, window=32)
             for r in range(world)]
    expected = batches_per_epoch(records, batch, world)
    assert all(p.shape == (expected, batch) for p in parts)
    flat = np.concatenate([p.ravel() for p in parts])
    assert len(set(flat.tolist())) == len(flat)                 # no record twice
    assert flat.min() >= 0 and flat.max() < records
    assert records - len(flat) < world * batch                  # only the remainder dropped


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("records", [1, 7, 97, 1001])
def test_eval_partition_covers_every_record_once(world, records):
    seen = np.concatenate([np.concatenate(eval_batches(records, 8, r, world) or [[]])
                           for r in range(world)]).astype(int)
    assert sorted(seen.tolist()) == list(range(records))


def test_train_order_deterministic_resumable_and_shuffled():
    a = train_batches(1000, 10, 1, 2, seed=5, epoch=3)
    np.testing.assert_array_equal(a, train_batches(1000, 10, 1, 2, seed=5, epoch=3))
    np.testing.assert_array_equal(train_batches(1000, 10, 1, 2, seed=5, epoch=3, start_batch=7),
                                  a[7:])
    assert not np.array_equal(a, train_batches(1000, 10, 1, 2, seed=5, epoch=4))
    assert not np.array_equal(a, train_batches(1000, 10, 1, 2, seed=6, epoch=3))
    # a batch mixes records from many places, not one run of consecutive records
    first = np.sort(train_batches(10000, 64, 0, 1, seed=0, epoch=0)[0])
    assert first[-1] - first[0] > 1000
    with pytest.raises(ValueError, match="lower the batch size"):
        train_batches(10, 8, 0, 2)


def test_random_resized_crop_box_ranges():
    rng = random.Random(0)
    for _ in range(500):
        left, top, right, bottom = random_resized_crop_box(500, 375, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        assert 0.079 * 500 * 375 <= w * h <= 500 * 375
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 or (w, h) == (500, 375)


def _naive_jitter(rgb, rng, strength, lighting):
    """Sequential float implementation of the same random draws (reference)."""
    x = rgb.astype(np.float64)
    steps = ["brightness", "contrast", "saturation"]
    rng.shuffle(steps)
    for step in steps:
        if step == "brightness":
            x = x * rng.uniform(1 - strength, 1 + strength)
        elif step == "contrast":
            c = rng.uniform(1 - strength, 1 + strength)
            x = c * x + (1 - c) * (x @ GRAY).mean()
        else:
            s = rng.uniform(1 - strength, 1 + strength)
            x = s * x + (1 - s) * (x @ GRAY)[..., None]
    alpha = np.array([rng.gauss(0, lighting) for _ in range(3)])
    x = x + PCA_EIGVEC @ (alpha * PCA_EIGVAL)
    return np.clip(np.round(x), 0, 255)


def test_fused_colour_matrix_equals_sequential_jitter_and_lighting(photos):
    rgb = np.asarray(Image.open(io.BytesIO(_jpeg_bytes())).convert("RGB"))
    for seed in range(5):
        matrix = color_jitter_matrix(rgb.reshape(-1, 3).mean(0), random.Random(seed), 0.4, 0.4,
                                     0.4, 0.1)
        fused = apply_affine(rgb, matrix).astype(int)
        naive = _naive_jitter(rgb, random.Random(seed), 0.4, 0.1)
        assert np.abs(fused - naive).max() <= 1
    identity = color_jitter_matrix((1, 2, 3), random.Random(0), 0, 0, 0, 0)
    np.testing.assert_array_equal(apply_affine(rgb, identity), rgb)


def _jpeg_bytes(size=(200, 150)):
    from sklearn.datasets import load_sample_images
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("size", [64, 224, 320])
def test_train_transform_shape_dtype_and_seeded(size):
    transform = TrainTransform(size)
    data = _jpeg_bytes((500, 375))
    a = transform(data, random.Random(1))
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, transform(data, random.Random(1)))
    assert not np.array_equal(a, transform(data, random.Random(2)))
    assert transform.interpolation == ("bicubic" if size >= 320 else "bilinear")


@pytest.mark.parametrize("box, interpolation", [
    ((10.3, 20.6, 210.2, 170.4), "bilinear"),    # 200 x 150 -> 128: within 2x, interpolated
    ((0, 0, 500, 375), "bilinear"),              # 500 x 375 -> 128: beyond 2x, area averaged
    ((40, 30, 100, 90), "bicubic"),              # 60 x 60 -> 128: enlarged
    ((3.3, 4.7, 13.9, 15.1), "bilinear"),        # a tiny box: its fractions matter
])
def test_resize_crop_matches_pillows_antialiased_resize(box, interpolation):
    """The OpenCV crop-and-resize of the training path stays close to Pillow's exact,
    anti-aliased ``resize(box=...)`` on a real photo (mean error 0.13-0.81 of 255 levels
    here, bound 1.2; a box 4 pixels off gives 2.2 or more)."""
    from sklearn.datasets import load_sample_images
    photo = Image.fromarray(load_sample_images().images[1]).resize((500, 375), Image.BICUBIC)
    ours = resize_crop(np.asarray(photo), box, 128, interpolation).astype(np.float64)
    pillow = np.asarray(photo.resize((128, 128), resample_filter(interpolation), box=box),
                        np.float64)
    assert ours.shape == (128, 128, 3)
    assert np.abs(ours - pillow).mean() < 1.2


def test_eval_transform_is_resize_then_centre_crop():
    data = _jpeg_bytes((300, 200))
    out = EvalTransform(64, crop_ratio=0.8, interpolation="bilinear")(data)
    # reference: resize shorter side to ceil(64 / 0.8) = 80, centre crop 64
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((120, 80), Image.BILINEAR)
    ref = np.asarray(img.crop((28, 8, 92, 72)))
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - ref).mean() < 3          # same view; filters differ at edges


def test_soft_targets_and_mixup_sum_to_one():
    labels = mx.nd.array([0, 3, 1, 2])
    targets = soft_targets(labels, 5, 0.1)
    np.testing.assert_allclose(targets.sum(axis=1).asnumpy(), 1, rtol=1e-6)
    assert targets[1, 3].asscalar() == pytest.approx(0.9 + 0.02)
    data = mx.nd.random.normal(shape=(4, 3, 8, 8))
    mix = MixConfig(5, smoothing=0.1, mixup_alpha=0.2)
    mixed, soft, sparse = targets_for_batch(data, labels, mix, np.random.default_rng(0))
    assert not sparse and soft.shape == (4, 5)
    np.testing.assert_allclose(soft.sum(axis=1).asnumpy(), 1, rtol=1e-5)
    # sample 0 is mixed with sample 3 (the batch reversed) with the same weight as its target
    lam = soft[0, 0].asscalar() - 0.02
    lam = (lam - 0) / 0.9
    np.testing.assert_allclose(mixed[0].asnumpy(), lam * data[0].asnumpy() +
                               (1 - lam) * data[3].asnumpy(), rtol=1e-4, atol=1e-5)
    same, labels_out, sparse = targets_for_batch(data, labels, MixConfig(5), None)
    assert sparse and labels_out is labels and same is data


def _shard_with(tmp_path, payloads):
    writer = RecordWriter(str(tmp_path / "s.rec"))
    for label, image in payloads:
        writer.write(pack_record(label, image))
    writer.commit()
    return ShardSet(str(tmp_path / "s.rec"))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_record_is_skipped_counted_and_batch_stays_full(tmp_path, workers, caplog):
    good = _jpeg_bytes()
    shards = _shard_with(tmp_path, [(0, good), (1, b"\xff\xd8garbage"), (2, good), (1, good)])
    loader = BatchLoader(shards, [np.arange(4)], EvalTransform(32), 32, classes=3,
                         workers=workers, normalization=IMAGENET)
    (images, labels), = list(loader)
    assert images.shape == (4, 3, 32, 32) and loader.corrupt_count == 1
    assert labels.asnumpy().tolist()[0] == 0 and labels.asnumpy().tolist()[2:] == [2, 1]
    assert "s.rec record 1" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_label_out_of_range_stops_with_location(tmp_path, workers):
    shards = _shard_with(tmp_path, [(0, _jpeg_bytes()), (7, _jpeg_bytes())])
    loader = BatchLoader(shards, [np.arange(2)], EvalTransform(32), 32, classes=5,
                         workers=workers)
    with pytest.raises(DataError, match=r"label 7 outside \[0, 5\) in s.rec record 1"):
        list(loader)


def test_loader_results_do_not_depend_on_worker_count(photo_tree, tmp_path):
    items, classes = scan_tree(photo_tree)
    pack(items, classes, str(tmp_path / "t"), num_shards=2, workers=1, progress=False)
    shards = ShardSet(str(tmp_path / "t"))
    batches = train_batches(len(shards), 4, seed=1)
    runs = []
    for workers in (0, 1, 2):
        loader = BatchLoader(shards, batches, TrainTransform(48), 48, classes=3,
                             workers=workers, seed=1, epoch=0)
        runs.append([(x.asnumpy(), y.asnumpy()) for x, y in loader])
    for other in runs[1:]:
        for (xa, ya), (xb, yb) in zip(runs[0], other):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert runs[0][0][0].shape == (4, 48, 48, 3) and runs[0][0][0].dtype == np.uint8
    # normalised by the workers == raw normalised on the device == one image at a time
    loader = BatchLoader(shards, batches, TrainTransform(48), 48, classes=3, workers=2, seed=1,
                         normalization=IMAGENET)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 48, 48) and x.dtype == np.float32
    raw = runs[0][0][0]
    expected = IMAGENET.batch(mx.nd.array(raw, dtype="uint8")).asnumpy()
    np.testing.assert_allclose(x.asnumpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(IMAGENET.image(raw[1]), expected[1], rtol=1e-5, atol=1e-5)
    by_hand = (raw[2].astype(np.float64) - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    np.testing.assert_allclose(expected[2], by_hand.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert -3 < float(x.mean().asscalar()) < 3


def test_augmentation_is_a_function_of_the_record_not_of_the_batch(photo_tree, tmp_path):
    # A run resumed mid-epoch loads the rest of the epoch as a shorter list of batches: each
    # record must still get the augmentation it gets in the uninterrupted epoch.
    items, classes = scan_tree(photo_tree)
    pack(items, classes, str(tmp_path / "t"), num_shards=1, workers=1, progress=False)
    shards = ShardSet(str(tmp_path / "t"))
    batches = train_batches(len(shards), 4, seed=3, epoch=2)
    whole = [x.asnumpy() for x, _ in BatchLoader(shards, batches, TrainTransform(40), 40,
                                                  workers=1, seed=3, epoch=2)]
    rest = [x.asnumpy() for x, _ in BatchLoader(shards, batches[1:], TrainTransform(40), 40,
                                                 workers=2, seed=3, epoch=2)]
    assert len(rest) == len(whole) - 1 >= 2
    for a, b in zip(whole[1:], rest):
        np.testing.assert_array_equal(a, b)
    other_epoch = next(iter(BatchLoader(shards, batches[:1], TrainTransform(40), 40, seed=3,
                                        epoch=3, workers=0)))[0].asnumpy()
    assert not np.array_equal(other_epoch, whole[0])


def test_label_range_from_headers_and_from_the_manifest(digits, tmp_path):
    # no manifest (an im2rec-style file): the record headers, including label vectors
    shards = _shard_with(tmp_path, [(3, b"x"), ([12, 1], b"y"), (0, b"z")])
    assert shards.label_range() == (0, 12)
    assert list(shards.files[0].class_labels()) == [3, 12, 0]
    # packed shards: the manifest's per-class counts, without reading the records
    train, _ = digits
    assert ShardSet(train).label_range() == (0, 9)


# (mode, file format, fill value, expected RGB): every mode Pillow opens, in a file format
# that keeps it; TIFF inputs are re-encoded as JPEG by the packer, PNG and JPEG kept as they are.
IMAGE_MODES = [
    ("1", "PNG", 1, (255, 255, 255)),
    ("L", "PNG", 100, (100, 100, 100)),
    ("LA", "PNG", (100, 50), (100, 100, 100)),
    ("P", "PNG", 3, (200, 100, 50)),
    ("PA", "TIFF", (3, 50), (200, 100, 50)),
    ("RGB", "PNG", (10, 20, 30), (10, 20, 30)),
    ("RGBA", "PNG", (10, 20, 30, 40), (10, 20, 30)),
    ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),
    ("CMYK", "TIFF", (0, 255, 255, 0), (255, 0, 0)),
    ("I", "TIFF", 25700, (100, 100, 100)),           # 16-bit range: 25700 / 257 = 100
    ("I;16", "PNG", 25700, (100, 100, 100)),
    ("I;16", "TIFF", 51400, (200, 200, 200)),
    ("F", "TIFF", 0.5, (128, 128, 128)),             # 0-1 floats: 0.5 * 255
]


def _mode_image(mode, value):
    img = Image.new(mode, (16, 16), value)
    if mode in ("P", "PA"):
        img.putpalette([0, 0, 0] * 3 + [200, 100, 50] + [0, 0, 0] * 252)
    return img


def test_every_image_mode_packs_checks_and_loads_as_8_bit_rgb(tmp_path):
    from recordio_tools.check import check
    from recordio_tools.pack import pack
    items = []
    for label, (mode, fmt, value, _) in enumerate(IMAGE_MODES):
        path = str(tmp_path / f"{label:02d}.{fmt.lower()}")
        _mode_image(mode, value).save(path, fmt)
        assert Image.open(path).mode == ("I;16" if mode == "I;16" else mode) or fmt == "TIFF"
        items.append((path, label))
    names = [f"{mode}-{fmt}" for mode, fmt, _, _ in IMAGE_MODES]
    pack(items, names, str(tmp_path / "modes"), num_shards=1, workers=1, progress=False)
    assert check(str(tmp_path / "modes"), progress=False) == ([], len(IMAGE_MODES))
    shards = ShardSet(str(tmp_path / "modes"))
    loader = BatchLoader(shards, [np.arange(len(shards))], EvalTransform(16, crop_ratio=1.0), 16,
                         classes=len(IMAGE_MODES), workers=0)
    (images, labels), = list(loader)
    for rgb, label in zip(images.asnumpy(), labels.asnumpy().astype(int)):
        mode, fmt, _, expected = IMAGE_MODES[label]
        got = rgb[8, 8].astype(int)
        tolerance = 0 if fmt == "PNG" else 2          # JPEG: a flat image, about exact
        assert np.abs(got - expected).max() <= tolerance, (mode, fmt, got, expected)


@pytest.mark.parametrize("mode,value,expected", [("YCbCr", (128, 128, 128), (128, 128, 128)),
                                                 ("F", 180.0, (180, 180, 180)),
                                                 ("I", 65535, (255, 255, 255))])
def test_modes_without_a_file_format_convert_as_documented(mode, value, expected):
    from resnest_gluon.data.transforms import to_rgb
    assert to_rgb(Image.new(mode, (4, 4), value)).getpixel((1, 1)) == expected


def test_a_persistent_loader_serves_epochs_with_the_same_workers(tmp_path):
    """Epoch after epoch (and after an epoch left early) a persistent loader gives exactly
    what a fresh loader per epoch gives, without forking again."""
    good = _jpeg_bytes()
    shards = _shard_with(tmp_path, [(n % 3, good) for n in range(24)])
    transform = TrainTransform(32)

    def epoch_batches(epoch):
        return train_batches(len(shards), 4, 0, 1, seed=5, epoch=epoch, chunk=4, window=8)

    def fresh(epoch):
        loader = BatchLoader(shards, epoch_batches(epoch), transform, 32, classes=3,
                             workers=2, seed=5, epoch=epoch, normalization=IMAGENET)
        return [(x.asnumpy(), y.asnumpy()) for x, y in loader]

    loader = BatchLoader(shards, epoch_batches(0), transform, 32, classes=3, workers=2,
                         seed=5, epoch=0, normalization=IMAGENET, persistent=True)
    with loader:
        pids = None
        for epoch in (0, 1, 2):
            if epoch == 1:   # leave this epoch after one batch, as a stop request does
                next(iter(loader.start_epoch(epoch_batches(epoch), epoch)))
                continue
            got = [(x.asnumpy(), y.asnumpy())
                   for x, y in loader.start_epoch(epoch_batches(epoch), epoch)]
            expected = fresh(epoch)
            assert len(got) == len(expected) == 6
            for (x, y), (ex, ey) in zip(got, expected):
                np.testing.assert_array_equal(x, ex)
                np.testing.assert_array_equal(y, ey)
            now = [proc.pid for proc in loader._pool.procs]
            assert pids is None or now == pids
            pids = now
    assert loader._pool is None


@pytest.mark.timeout(120)
def test_workers_start_after_opencv_ran_threaded_in_the_parent(tmp_path):
    """OpenCV's thread pool, once running in the main process, is inherited by forked workers
    without its threads; the loader must not leave a worker waiting on it forever."""
    import cv2
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (999, 999))   # starts the pool's threads
    shards = _shard_with(tmp_path, [(n % 3, _jpeg_bytes()) for n in range(8)])
    loader = BatchLoader(shards, [np.arange(4), np.arange(4, 8)], TrainTransform(64), 64,
                         classes=3, workers=2, normalization=IMAGENET)
    assert [x.shape[0] for x, _ in loader] == [4, 4]
