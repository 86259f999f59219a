"""The input side: RecordIO shards, partitions across ranks, transforms and parallel loading.

Imports only MXNet, NumPy, Pillow, OpenCV and the package's error base (``..errors``); never
``models``, ``training`` or ``config``.
"""
from .loader import BatchLoader, DataError, augmentation_rng
from .mix import MixConfig, cutmix, mixup, soft_targets, targets_for_batch
from .normalize import Normalization
from .partition import batches_per_epoch, eval_batches, train_batches
from .randaugment import RandAugment
from .recordio import (
                       MissingIndexError,
                       RecordFile,
                       RecordFormatError,
                       RecordWriter,
                       ShardSet,
                       pack_record,
                       resolve_shards,
                       unpack_record,
)
from .transforms import EvalTransform, RandomErasing, TrainTransform

__all__ = ["BatchLoader", "DataError", "augmentation_rng", "Normalization", "MixConfig", "mixup",
           "soft_targets", "targets_for_batch", "batches_per_epoch", "eval_batches",
           "train_batches", "MissingIndexError", "RecordFile", "RecordFormatError",
           "RecordWriter", "ShardSet", "pack_record", "resolve_shards", "unpack_record",
           "EvalTransform", "TrainTransform", "RandAugment", "RandomErasing", "cutmix"]
