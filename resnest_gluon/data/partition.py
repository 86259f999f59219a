"""Which records each rank reads, in which order: the training and validation partitions.

This module owns :func:`train_batches` and :func:`eval_batches`; both are pure functions of
their arguments (seed, epoch, rank, world size), so every rank computes its share without
communication and a resumed run sees the same order.

Training order and the randomness it gives
------------------------------------------
Reading every record at a random position made Gluon + Horovod 5x slower (each read a seek),
so records are read in chunks: each epoch the record sequence is rotated by a random offset,
cut into chunks of ``chunk`` consecutive records, and the chunks are put in a random order.
Every rank takes one contiguous piece of that order (so it reads whole chunks, sequentially),
and shuffles its piece within windows of ``window`` records. A batch therefore mixes records
from about ``window / chunk`` random places of the dataset (16 by default); the packer already
shuffled the records globally, and the per-epoch rotation changes which records share a chunk,
so no two epochs group records the same way. ``chunk=1`` gives a full random permutation.

Every rank gets the same number of full batches (``floor(N / (world * batch))``): no rank waits
at an allreduce for another. The few records left over differ from epoch to epoch.
"""
from typing import List

import numpy as np

__all__ = ["train_batches", "eval_batches", "batches_per_epoch"]


def batches_per_epoch(num_records: int, batch_size: int, world_size: int = 1) -> int:
    """Training batches each rank runs per epoch (the same on every rank)."""
    return num_records // (batch_size * world_size)


def epoch_order(num_records: int, seed: int, epoch: int, chunk: int = 128) -> np.ndarray:
    """The global record order of one training epoch (before splitting among ranks)."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    shift = int(rng.integers(num_records)) if num_records else 0
    order = np.roll(np.arange(num_records, dtype=np.int64), -shift)
    chunks = [order[i:i + chunk] for i in range(0, num_records, chunk)]
    return np.concatenate([chunks[i] for i in rng.permutation(len(chunks))]) if chunks \
        else order


def train_batches(num_records: int, batch_size: int, rank: int = 0, world_size: int = 1,
                  seed: int = 0, epoch: int = 0, start_batch: int = 0, chunk: int = 128,
                  window: int = 2048) -> np.ndarray:
    """Record indices of this rank's training batches for ``epoch``.

    Parameters
    ----------
    num_records : int
        Records in the training set (from the ``.idx`` files).
    batch_size : int
        Per-rank batch size.
    rank, world_size : int
        This worker and the number of workers.
    seed, epoch : int
        The order is a function of these (and of the world size, through the split).
    start_batch : int
        First batch to return (resuming inside an epoch).
    chunk, window : int
        Sequential-read chunk and shuffle window, in records (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(batches, batch_size)`` int64 array of global record indices.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    per_rank = batches_per_epoch(num_records, batch_size, world_size) * batch_size
    if per_rank == 0:
        raise ValueError(f"{num_records} records cannot fill one batch of {batch_size} on each "
                         f"of {world_size} workers; lower the batch size")
    order = epoch_order(num_records, seed, epoch, max(1, chunk))
    mine = order[rank * per_rank:(rank + 1) * per_rank].copy()
    rng = np.random.default_rng([seed, epoch, rank, world_size])
    for start in range(0, per_rank, max(1, window)):
        rng.shuffle(mine[start:start + window])
    return mine.reshape(-1, batch_size)[start_batch:]


def eval_batches(num_records: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> List[np.ndarray]:
    """Record indices of this rank's evaluation batches: every record exactly once overall.

    Rank ``r`` reads the contiguous range ``[r*N//W, (r+1)*N//W)``; the last batch of a rank
    may be short and some ranks may have one record more than others. Nothing is padded, so
    summed correct counts divided by ``N`` is the exact accuracy.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    begin = rank * num_records // world_size
    end = (rank + 1) * num_records // world_size
    indices = np.arange(begin, end, dtype=np.int64)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
