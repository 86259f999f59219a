"""Parallel batch loading: worker processes decode and augment into shared memory.

This module owns :class:`BatchLoader`.

How it works: the loader is given the list of batches (record indices, from
:mod:`.partition`). Batch ``k`` goes to worker ``k % workers`` and to shared-memory slot
``k % slots``; the worker reads the records, applies the transform with an RNG seeded by
``(seed, epoch, record index)`` and writes the pixels (normalised, or raw uint8) and labels
straight into the slot. The augmentation of a record is therefore a function of the record and
the epoch alone: it does not depend on the number of workers, on the rank, or on where in the
epoch a resumed run starts. The main process copies the slot
into an NDArray, frees it for batch ``k + slots`` and yields. Nothing but indices and short
status tuples crosses the process boundary.

A record that cannot be decoded is replaced by another record of the same batch, counted, and
reported with its shard and index (rate-limited); a label outside ``[0, classes)`` stops the
run with an error naming the shard and index.
"""
import collections
import logging
import multiprocessing as mp
import os
import queue
import random
import signal
import time
import traceback
from multiprocessing import shared_memory
from typing import Callable, Optional, Sequence

import cv2
import mxnet as mx
import numpy as np

from ..errors import UserError
from .normalize import Normalization
from .recordio import ShardSet, unpack_record
from .transforms import DECODE_ERRORS, check_jpeg_decoder, decode_error

__all__ = ["BatchLoader", "DataError", "augmentation_rng"]

log = logging.getLogger(__name__)


class DataError(UserError, RuntimeError):
    """Bad data that must stop the run (e.g. a label outside the class range)."""


def augmentation_rng(seed: int, epoch: int, record: int) -> random.Random:
    """The RNG that augments ``record`` in ``epoch``: a pure function of the three."""
    return random.Random((int(seed) << 64) | (int(epoch) << 40) | int(record))


class _Layout:
    """Where a batch lives in a shared-memory slot: pixels, then labels."""

    def __init__(self, batch_size, size, normalization: Optional[Normalization]):
        self.batch_size, self.size, self.normalization = batch_size, size, normalization
        normalized = normalization is not None
        self.shape = (batch_size, 3, size, size) if normalized else (batch_size, size, size, 3)
        self.dtype = np.float32 if normalized else np.uint8
        self.pixel_bytes = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
        self.slot_bytes = self.pixel_bytes + 4 * batch_size
        self.slot_bytes += -self.slot_bytes % 64

    def views(self, buf, slot):
        base = slot * self.slot_bytes
        pixels = np.ndarray(self.shape, self.dtype, buf, base)
        labels = np.ndarray((self.batch_size,), np.float32, buf, base + self.pixel_bytes)
        return pixels, labels


def _store(pixels, pos, rgb, normalization):
    if normalization is None:
        pixels[pos] = rgb
    else:
        normalization.write_chw(pixels[pos], rgb)


def _worker_loop(shards, transform, task_queue, result_queue, shm_name, layout, classes, seed,
                 unreadable_label):
    # A worker whose main process vanished (kill -9) exits instead of waiting forever.
    parent = os.getppid()
    shm = shared_memory.SharedMemory(name=shm_name)
    pixels = labels = None
    try:
        while True:
            try:
                task = task_queue.get(timeout=2.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if task is None:
                return
            batch_no, slot, indices, epoch = task
            pixels, labels = layout.views(shm.buf, slot)
            corrupt, good = [], []
            try:
                for pos, index in enumerate(indices):
                    rng = augmentation_rng(seed, epoch, index)
                    try:
                        header, image = unpack_record(shards.read(int(index)))
                        label = header.class_label
                        rgb = transform(image, rng)
                    except DECODE_ERRORS as err:
                        check_jpeg_decoder()        # (the process's fault, not the record's)
                        corrupt.append((int(index), decode_error(err)))
                        continue
                    if classes and not 0 <= label < classes:
                        raise DataError(f"label {label:g} outside [0, {classes}) in "
                                        f"{shards.describe(int(index))}")
                    _store(pixels, pos, rgb, layout.normalization)
                    labels[pos] = label
                    good.append(pos)
                if corrupt:
                    if not good:
                        raise DataError(f"every record of batch {batch_no} is unreadable, "
                                        f"e.g. {shards.describe(corrupt[0][0])}: {corrupt[0][1]}")
                    bad_positions = sorted(set(range(len(indices))) - set(good))
                    for n, pos in enumerate(bad_positions):
                        donor = good[n % len(good)]
                        pixels[pos] = pixels[donor]
                        labels[pos] = (labels[donor] if unreadable_label is None
                                       else unreadable_label)
                result_queue.put((batch_no, len(indices), corrupt, None))
            except Exception as err:  # pylint: disable=broad-except
                message = f"{err}" if isinstance(err, UserError) else traceback.format_exc()
                result_queue.put((batch_no, 0, [], message))
    finally:
        del pixels, labels
        shm.close()


def _worker_main(*args):
    # The main process decides when to stop (on SIGTERM it first saves a checkpoint): the
    # workers ignore the signals a scheduler sends to the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker_loop(*args)


class BatchLoader:
    """Iterate over batches of decoded, augmented images, loaded by worker processes.

    Parameters
    ----------
    shards : ShardSet
        The records.
    batches : sequence of index arrays
        Record indices of each batch, in order (e.g. from :func:`.partition.train_batches`).
    transform : callable
        ``transform(image_bytes, rng) -> (size, size, 3) uint8``.
    size : int
        Output side.
    classes : int, optional
        Number of classes; labels outside ``[0, classes)`` raise :class:`DataError`.
    workers : int
        Worker processes (0: load in this process, for debugging).
    prefetch : int
        Batches in flight per worker.
    seed, epoch : int
        Seed the augmentation RNGs.
    normalization : Normalization, optional
        Yield float32 NCHW normalised by the workers with it; without it, raw uint8 NHWC (4x
        less to copy; :meth:`Normalization.batch` normalises it on the device).
    ctx : mxnet.Context, optional
        Where the NDArrays are created (default CPU).
    pinned : bool, optional
        Stage each batch in page-locked host memory and upload it asynchronously (default:
        when ``ctx`` is a GPU).
    persistent : bool
        Keep the worker processes (and their shared memory) from one iteration to the next:
        :meth:`start_epoch` gives the next epoch's batches, :meth:`close` ends them. Forking
        after CUDA is initialised costs seconds per fork; a training run forks once.
    unreadable_label : float, optional
        The label an unreadable record's place in its batch gets. Its pixels are always
        another record's of the batch (the batch keeps its shape); None (training) also gives
        it that record's label, a value such as -1 (evaluation) marks it, so that nothing is
        counted for it.

    Yields
    ------
    tuple of NDArray
        ``(images, labels float32 (n,))``.
    """

    def __init__(self, shards: ShardSet, batches: Sequence, transform: Callable, size: int,
                 classes: Optional[int] = None, workers: int = 2, prefetch: int = 2,
                 seed: int = 0, epoch: int = 0,
                 normalization: Optional[Normalization] = None, ctx=None,
                 report_every: float = 30.0, unreadable_label: Optional[float] = None,
                 pinned: Optional[bool] = None, persistent: bool = False):
        self.shards = shards
        self.batches = list(batches)
        self.transform = transform
        self.size = int(size)
        self.classes = classes
        self.workers = max(0, int(workers))
        self.prefetch = max(1, int(prefetch))
        self.seed, self.epoch = int(seed), int(epoch)
        self.normalization = normalization
        self.ctx = ctx or mx.cpu()
        self.pinned = self.ctx.device_type == "gpu" if pinned is None else bool(pinned)
        self.unreadable_label = unreadable_label
        self.persistent = persistent
        self._pool = None
        self._report_every = report_every
        self._reset_counts()

    def _reset_counts(self):
        self.corrupt_count = 0
        self.corrupt_by_shard = collections.Counter()
        self.images_loaded = 0
        self._last_report = 0.0
        self._reported = 0

    def start_epoch(self, batches: Sequence, epoch: int):
        """Serve ``batches`` of ``epoch`` on the next iteration (with the same workers when
        persistent); the counts of unreadable records start again."""
        self.batches = list(batches)
        self.epoch = int(epoch)
        self._reset_counts()
        return self

    def close(self):
        """End the persistent workers and free their shared memory (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return len(self.batches)

    @property
    def batch_size(self):
        return max((len(b) for b in self.batches), default=0)

    def corrupt_shards(self, limit: int = 5) -> str:
        """Where this loader's unreadable records were, most first: ``a.rec (12), b.rec (3)``."""
        top = self.corrupt_by_shard.most_common()
        text = ", ".join(f"{name} ({count})" for name, count in top[:limit])
        return text + (f" and {len(top) - limit} more shard(s)" if len(top) > limit else "")

    def _note_corrupt(self, corrupt):
        self.corrupt_count += len(corrupt)
        now = time.monotonic()
        for index, reason in corrupt:
            self.corrupt_by_shard[os.path.basename(
                self.shards.paths[self.shards.locate(index)[0]])] += 1
            # the first 10 individually, then at most one line per report interval
            if self._reported < 10 or now - self._last_report > self._report_every:
                log.warning("skipped unreadable record %s (%s); %d skipped so far",
                            self.shards.describe(index), reason, self.corrupt_count)
                self._reported += 1
                self._last_report = now

    def __iter__(self):
        if not self.batches:
            return
        layout = _Layout(self.batch_size, self.size, self.normalization)
        if self.workers == 0:
            shm = shared_memory.SharedMemory(create=True, size=layout.slot_bytes)
            try:
                yield from self._iter_inline(shm, layout)
            finally:
                shm.close()
                shm.unlink()
            return
        if self._pool is not None and self._pool.layout.shape != layout.shape:
            self.close()   # another batch size: new shared memory
        pool = self._pool or _WorkerPool(self, layout)
        try:
            yield from self._iter_workers(pool)
        finally:
            if self.persistent and pool.alive():
                pool.drain()
                self._pool = pool
            else:
                pool.close()
                self._pool = None

    def _collect(self, result, shm, slot, layout):
        batch_no, count, corrupt, error = result
        if error is not None:
            raise DataError(error)
        if corrupt:
            self._note_corrupt(corrupt)
        pixels, labels = layout.views(shm.buf, slot)
        # Through page-locked memory to a GPU: the host copy is a memcpy and the upload an
        # asynchronous DMA that overlaps the device's work (from pageable memory it blocks).
        staging = mx.cpu_pinned() if self.pinned else self.ctx
        out = (mx.nd.array(pixels[:count], ctx=staging, dtype=layout.dtype),
               mx.nd.array(labels[:count], ctx=staging, dtype=np.float32))
        if self.pinned:
            out = tuple(array.copyto(self.ctx) for array in out)
        del pixels, labels   # views into shared memory must not outlive it
        self.images_loaded += count
        return out

    def _iter_inline(self, shm, layout):
        tasks, results = queue.Queue(), queue.Queue()
        for batch_no, indices in enumerate(self.batches):
            tasks.put((batch_no, 0, indices, self.epoch))
            tasks.put(None)
            _worker_loop(self.shards, self.transform, tasks, results, shm.name, layout,
                         self.classes, self.seed, self.unreadable_label)
            yield self._collect(results.get(), shm, 0, layout)

    def _iter_workers(self, pool):
        slots, workers = pool.slots, self.workers

        def dispatch(batch_no):
            if batch_no < len(self.batches):
                pool.put(batch_no % workers, (batch_no, batch_no % slots,
                                              np.asarray(self.batches[batch_no]), self.epoch))

        for batch_no in range(min(slots, len(self.batches))):
            dispatch(batch_no)
        for batch_no in range(len(self.batches)):
            result = pool.get(batch_no % workers)
            batch = self._collect(result, pool.shm, batch_no % slots, pool.layout)
            dispatch(batch_no + slots)
            yield batch


class _WorkerPool:
    """The worker processes of a :class:`BatchLoader`, their queues and shared memory.

    Each worker takes its tasks in order from its own queue and answers in order on its own
    result queue; :meth:`drain` waits for every answer still owed, so that no worker writes
    into a slot the next iteration hands to another.
    """

    def __init__(self, loader: BatchLoader, layout: _Layout):
        self.layout = layout
        self.slots = max(1, loader.workers * loader.prefetch)
        self.shm = shared_memory.SharedMemory(create=True, size=self.slots * layout.slot_bytes)
        context = mp.get_context("fork")
        # N workers on N cores: OpenCV's own threads would oversubscribe them. Set here, before
        # the fork: a forked child inherits the parent's thread pool without its threads, and
        # resizing that pool there (or running a parallel operation on it) waits forever.
        cv2.setNumThreads(1)
        count = loader.workers
        self.tasks = [context.Queue() for _ in range(count)]
        self.results = [context.Queue() for _ in range(count)]
        self.owed = [0] * count
        self.procs = [context.Process(
            target=_worker_main, daemon=True,
            args=(loader.shards, loader.transform, self.tasks[w], self.results[w],
                  self.shm.name, layout, loader.classes, loader.seed,
                  loader.unreadable_label))
            for w in range(count)]
        for proc in self.procs:
            proc.start()

    def put(self, worker: int, task):
        self.tasks[worker].put(task)
        self.owed[worker] += 1

    def get(self, worker: int):
        """The next result of ``worker``; :class:`DataError` if it died."""
        while True:
            try:
                result = self.results[worker].get(timeout=5.0)
                self.owed[worker] -= 1
                return result
            except queue.Empty:
                if not self.procs[worker].is_alive():
                    raise DataError(f"input worker {worker} died (exit code "
                                    f"{self.procs[worker].exitcode}); out of memory?") from None

    def alive(self) -> bool:
        return all(proc.is_alive() for proc in self.procs)

    def drain(self):
        """Wait for the results of the tasks still in flight (an iteration left early)."""
        for worker, owed in enumerate(self.owed):
            for _ in range(owed):
                self.get(worker)

    def close(self):
        for task_queue in self.tasks:
            task_queue.put(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():   # stuck: workers ignore SIGTERM, so kill
                proc.kill()
                proc.join(timeout=5)
        self.shm.close()
        self.shm.unlink()
