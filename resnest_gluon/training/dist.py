"""Distributed context: the only module that imports horovod.

This module owns :func:`init_distributed` and the two contexts it returns: a single-process
one, and a Horovod one when the process was launched by ``horovodrun`` (or mpirun). The rest of
the package sees rank, size and a few collective operations, and runs without horovod
installed.
"""
import logging
import os

import mxnet as mx
import numpy as np

__all__ = ["SingleProcess", "HorovodContext", "init_distributed", "launched_by_horovod"]

log = logging.getLogger(__name__)

_LAUNCHER_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launched_by_horovod() -> bool:
    """True when a Horovod launcher started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARIABLES)


class SingleProcess:
    """One worker: collectives are identities."""

    rank, size, local_rank = 0, 1, 0
    name = "single process"

    def allreduce_sum(self, values, name: str = "scalars") -> np.ndarray:
        """Sum ``values`` (a float64 vector) over workers.

        ``name`` identifies the collective: reusing it for the same purpose (and length) lets
        Horovod's response cache skip the negotiation.
        """
        return np.asarray(values, dtype=np.float64)

    def broadcast_parameters(self, params):
        """Make every worker's parameters equal rank 0's."""

    def make_trainer(self, params, optimizer, optimizer_params, fp16_allreduce=False):
        """A Gluon trainer whose ``step`` averages gradients over all workers."""
        return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore="device")

    def barrier(self):
        """Wait for all workers."""


def _bind_pillow_to_its_own_libjpeg():
    """Load Pillow's C module before Horovod makes libmxnet's symbols global.

    libmxnet.so exports a libjpeg of its own under the same versioned names as Pillow's
    (``jpeg_read_header@LIBJPEG_6.2`` ...). Horovod's MXNet module loads libmxnet globally, and a
    Pillow loaded after that binds its JPEG calls to libmxnet's copy: every JPEG decode then
    fails with "broken data stream" (the shards are fine). Python loads extension modules with
    RTLD_NOW, so a Pillow imported first keeps its own libjpeg for the life of the process,
    forked loader workers included.
    """
    import PIL.Image  # noqa: F401  (imported for its side effect on symbol binding)


class HorovodContext(SingleProcess):
    """Workers launched by horovodrun; gradients allreduced by Horovod."""

    name = "horovod"

    def __init__(self, fusion_threshold_mb=64.0, cycle_time_ms=5.0, stall_timeout=1800.0):
        # Horovod reads its knobs at init: set them unless the user exported their own.
        os.environ.setdefault("HOROVOD_FUSION_THRESHOLD", str(int(fusion_threshold_mb * 2**20)))
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(cycle_time_ms))
        # A stalled collective (a dead or stuck peer) shuts the job down instead of hanging.
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", "60")
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(stall_timeout)))
        _bind_pillow_to_its_own_libjpeg()
        import horovod.mxnet as hvd  # the one place horovod is imported
        self.hvd = hvd
        hvd.init()
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def allreduce_sum(self, values, name: str = "scalars") -> np.ndarray:
        array = mx.nd.array(np.asarray(values, dtype=np.float64), dtype="float64")
        return self.hvd.allreduce(array, average=False, name=name).asnumpy()

    def broadcast_parameters(self, params):
        self.hvd.broadcast_parameters(params, root_rank=0)

    def make_trainer(self, params, optimizer, optimizer_params, fp16_allreduce=False):
        compression = (self.hvd.Compression.fp16 if fp16_allreduce
                       else self.hvd.Compression.none)
        return self.hvd.DistributedTrainer(params, optimizer, optimizer_params,
                                           compression=compression)

    def barrier(self):
        self.allreduce_sum([0.0], name="barrier")


def init_distributed(config=None, stall_timeout=1800.0):
    """Horovod when launched by horovodrun, else a single process.

    Parameters
    ----------
    config : DistConfig, optional
        Fusion threshold, cycle time.
    """
    if not launched_by_horovod():
        return SingleProcess()
    kwargs = {}
    if config is not None:
        kwargs = dict(fusion_threshold_mb=config.fusion_threshold_mb,
                      cycle_time_ms=config.cycle_time_ms)
    return HorovodContext(stall_timeout=stall_timeout, **kwargs)
