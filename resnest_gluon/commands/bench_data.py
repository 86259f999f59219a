"""``scripts/bench_data.py``: images/s of the input pipeline against the two references.

Generates ImageNet-like JPEG shards (500x375, quality 90, cut from real photos), then measures,
in one run and on the same cores: our training pipeline with and without AutoAugment, with
RandAugment (timm's rand-m9-n2-mstd0.5) and with RandAugment and random erasing (0.25), and
our eval pipeline at 1 and 2 workers (CutMix and mixup run on the training device, not in the
loader); the authors' pipeline (Gluon DataLoader over
ImageRecordDataset with the equivalent transforms); and ``mx.io.ImageRecordIter`` for the recipe
it supports (no AutoAugment), both as one iterator with N threads and as N one-thread
iterators over 1/N of the data in parallel processes. Every pipeline ends in normalised float32
NCHW batches.
"""
import argparse
import logging
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time

import mxnet as mx
import numpy as np
from PIL import Image

from ..data import (
    BatchLoader,
    EvalTransform,
    Normalization,
    RandAugment,
    RandomErasing,
    ShardSet,
    TrainTransform,
    eval_batches,
    train_batches,
)
from ..data.autoaugment import AutoAugment
from ..models import IMAGENET_MEAN_RGB as MEAN_RGB
from ..models import IMAGENET_STD_RGB as STD_RGB
from . import setup_logging
from .cli import command

log = logging.getLogger("bench_data")


def make_shards(folder, count=400, size=(500, 375), quality=90, seed=0):
    """Write ``count`` ImageNet-like JPEGs (random crops of real photos) as 2 shards
    (``bench-*``, ours) and as one file (``reference-*``, for the reference pipelines)."""
    from sklearn.datasets import load_sample_images

    from recordio_tools.pack import pack
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    items = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w = rng.randint(300, photo.size[0])
        h = min(photo.size[1], int(w * size[1] / size[0]))
        x, y = rng.randint(0, photo.size[0] - w), rng.randint(0, photo.size[1] - h)
        img = photo.resize(size, Image.BICUBIC, box=(x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        path = os.path.join(folder, "images", f"{i:05d}.jpg")
        img.save(path, quality=quality)
        items.append((path, i % 10))
    for name, shards in (("bench", 2), ("reference", 1)):
        pack(items, [str(c) for c in range(10)], os.path.join(folder, name), num_shards=shards,
             workers=1, progress=False)
    return os.path.join(folder, "bench")


def _time_batches(iterator, images_wanted, warmup=1):
    """img/s over the batches after ``warmup``; each batch forced to be computed."""
    count, start = 0, None
    for n, batch in enumerate(iterator):
        data = batch[0] if isinstance(batch, (list, tuple)) else batch.data[0]
        data.wait_to_read()
        if n + 1 == warmup:
            start = time.perf_counter()
            continue
        if start is not None:
            count += data.shape[0]
            if count >= images_wanted:
                break
    return count / (time.perf_counter() - start)


def _repeat(batches, times):
    return [b for _ in range(times) for b in batches]


def bench_ours(prefix, mode, workers, batch, size, images):
    shards = ShardSet(prefix)
    passes = max(1, -(-(images + 2 * batch) // len(shards)))
    if mode == "eval":
        batches = _repeat(eval_batches(len(shards), batch), passes)
        transform = EvalTransform(size)
    else:
        batches = np.concatenate([train_batches(len(shards), batch, seed=0, epoch=e)
                                  for e in range(passes + 1)])
        transform = _train_transform(mode, size)
    loader = BatchLoader(shards, batches, transform, size, classes=10, workers=workers,
                         prefetch=4, normalization=Normalization(MEAN_RGB, STD_RGB))
    return _time_batches(loader, images)


def _train_transform(mode, size):
    """Our training transform for a benchmark row: ``train`` (crop, flip, jitter, lighting),
    ``train+aa`` (and AutoAugment), ``train+ra`` (RandAugment instead), ``train+ra+re`` (and
    random erasing)."""
    randaugment = RandAugment(2, 9.0, 0.5) if mode.startswith("train+ra") else None
    erasing = RandomErasing(0.25) if mode == "train+ra+re" else None
    return TrainTransform(size, autoaugment=(mode == "train+aa"), randaugment=randaugment,
                          erasing=erasing)


class _AutoAugmentNd:
    """The authors' route for AutoAugment in a Gluon pipeline: NDArray -> PIL -> NDArray."""

    def __init__(self):
        self.aa = AutoAugment()

    def __call__(self, img):
        pil = Image.fromarray(img.asnumpy())
        return mx.nd.array(np.asarray(self.aa(pil, random)), dtype=np.uint8)


def bench_gluon(prefix, mode, workers, batch, size, images):
    from mxnet.gluon.data.vision import transforms as T
    rec = _reference_file(prefix)
    dataset = mx.gluon.data.vision.ImageRecordDataset(rec)
    if mode == "eval":
        steps = [T.Resize(int(size / 0.875), keep_ratio=True), T.CenterCrop(size)]
    else:
        steps = [T.RandomResizedCrop(size), T.RandomFlipLeftRight()]
        if mode == "train+aa":
            steps.append(_AutoAugmentNd())
        steps += [T.RandomColorJitter(0.4, 0.4, 0.4), T.RandomLighting(0.1)]
    steps += [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    transform = T.Compose(steps)
    passes = max(1, -(-(images + 2 * batch) // len(dataset)) + 1)
    data = mx.gluon.data.SimpleDataset([i for _ in range(passes) for i in range(len(dataset))])
    data = data.transform(lambda i: (transform(dataset[i][0]), dataset[i][1]))
    loader = mx.gluon.data.DataLoader(data, batch_size=batch, shuffle=mode != "eval",
                                      num_workers=workers, last_batch="discard")
    return _time_batches(loader, images)


def _reference_file(prefix):
    return os.path.join(os.path.dirname(prefix), "reference-00000-of-00001.rec")


def _record_iter(rec, mode, threads, batch, size, parts=1, part=0):
    common = dict(path_imgrec=rec, data_shape=(3, size, size), batch_size=batch,
                  preprocess_threads=threads, num_parts=parts, part_index=part,
                  mean_r=MEAN_RGB[0], mean_g=MEAN_RGB[1], mean_b=MEAN_RGB[2],
                  std_r=STD_RGB[0], std_g=STD_RGB[1], std_b=STD_RGB[2], round_batch=False)
    if mode == "eval":
        return mx.io.ImageRecordIter(resize=int(size / 0.875), **common)
    return mx.io.ImageRecordIter(random_resized_crop=True, min_random_area=0.08,
                                 max_random_area=1.0, min_aspect_ratio=3 / 4,
                                 max_aspect_ratio=4 / 3, rand_mirror=True, brightness=0.4,
                                 contrast=0.4, saturation=0.4, pca_noise=0.1, shuffle=True,
                                 **common)


def _record_iter_rate(args):
    rec, mode, threads, batch, size, images, parts, part = args

    def batches():
        while True:
            it = _record_iter(rec, mode, threads, batch, size, parts, part)
            for b in it:
                yield b
    return _time_batches(batches(), images)


def bench_record_iter(prefix, mode, threads, batch, size, images, parallel=1):
    """One iterator with ``threads`` threads, or ``parallel`` one-thread iterators each over
    1/parallel of the data in its own process; returns total img/s."""
    rec = _reference_file(prefix)
    if parallel == 1:
        return _record_iter_rate((rec, mode, threads, batch, size, images, 1, 0))
    tasks = [(rec, mode, 1, batch, size, images // parallel, parallel, i)
             for i in range(parallel)]
    with mp.get_context("spawn").Pool(parallel) as pool:
        return sum(pool.map(_record_iter_rate, tasks))


def run(images=960, batch=32, size=224, cores=None, folder=None, repeats=3):
    """Measure every pipeline ``repeats`` times, interleaved (the machine is shared and
    noisy); returns rows ``(pipeline, recipe, workers, median img/s)``."""
    cores = cores or os.cpu_count() or 1
    owned = folder is None
    folder = folder or tempfile.mkdtemp(prefix="bench_data_")
    prefix = os.path.join(folder, "bench")
    if not os.path.exists(os.path.join(folder, "reference.manifest.json")):
        log.info("generating 400 ImageNet-like JPEGs (500x375, q90) in %s", folder)
        make_shards(folder)
    cases = []
    for mode in ("train+ra", "train+ra+re"):   # only ours has them
        for workers in sorted({1, cores}):
            cases.append(("ours", mode, workers,
                          lambda m=mode, w=workers: bench_ours(prefix, m, w, batch, size, images)))
    for mode in ("train+aa", "train", "eval"):
        for workers in sorted({1, cores}):
            cases.append(("ours", mode, workers,
                          lambda m=mode, w=workers: bench_ours(prefix, m, w, batch, size, images)))
            cases.append(("gluon DataLoader (authors')", mode, workers,
                          lambda m=mode, w=workers: bench_gluon(prefix, m, w, batch, size,
                                                                images)))
        if mode != "train+aa":
            cases.append(("ImageRecordIter", mode, f"1 x {cores} threads",
                          lambda m=mode: bench_record_iter(prefix, m, cores, batch, size,
                                                           images)))
            cases.append(("ImageRecordIter", mode, f"{cores} x 1 thread",
                          lambda m=mode: bench_record_iter(prefix, m, 1, batch, size, images,
                                                           cores)))
    rates = {n: [] for n in range(len(cases))}
    for rep in range(repeats):
        for n, (name, mode, workers, measure) in enumerate(cases):
            rates[n].append(measure())
            log.info("repeat %d/%d  %-28s %-8s %-14s %6.0f img/s", rep + 1, repeats, name, mode,
                     workers, rates[n][-1])
    if owned:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return [(name, mode, workers, float(np.median(rates[n])))
            for n, (name, mode, workers, _) in enumerate(cases)]


def format_table(rows, cores):
    lines = ["| pipeline | recipe | workers | img/s |", "|---|---|---|---|"]
    lines += [f"| {p} | {m} | {w} | {r:.0f} |" for p, m, w, r in rows]
    best = {}
    for p, m, _, r in rows:
        best[(p.split(" ")[0], m)] = max(best.get((p.split(" ")[0], m), 0), r)
    lines.append("")
    for mode, ref, ref_mode in (("train+aa", "gluon", "train+aa"),
                                ("train+ra", "gluon", "train+aa"),
                                ("train+ra+re", "gluon", "train+aa"),
                                ("train", "ImageRecordIter", "train"),
                                ("eval", "ImageRecordIter", "eval"), ("train", "gluon", "train")):
        if (ref, ref_mode) in best and ("ours", mode) in best:
            lines.append(f"- ours {mode} / best {ref} {ref_mode} = "
                         f"{best[('ours', mode)] / best[(ref, ref_mode)]:.2f}x")
    lines.append(f"\n({cores} cores; batch 32, output 224; median of the repeats; every "
                 f"pipeline ends in normalised float32 NCHW batches)")
    return "\n".join(lines)


@command("bench-data")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--images", type=int, default=960, help="images timed per row (960)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is shown")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cores", type=int, default=None, help="workers/threads (CPU count)")
    parser.add_argument("--folder", help="keep the generated shards here (reused if present)")
    args = parser.parse_args(argv)
    setup_logging()
    cores = args.cores or os.cpu_count() or 1
    rows = run(args.images, args.batch_size, args.size, cores, args.folder, args.repeats)
    print(format_table(rows, cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
