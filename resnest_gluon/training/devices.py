"""Which device a rank computes on, and whether the installed MXNet has code for it.

This module owns :func:`default_context`: each rank takes its own GPU whether or not the
scheduler isolates one GPU per process (:func:`gpu_index`, a pure function), and a GPU the
MXNet wheel has no kernels for is named at start-up (:func:`unsupported_gpus`) instead of
failing later inside a kernel launch.
"""
import logging
import os
import subprocess
from typing import List, Optional, Sequence, Tuple

import mxnet as mx

from ..config import ConfigError

__all__ = ["gpu_index", "default_context", "unsupported_gpus", "WHEEL_CUDA_MAJORS"]

log = logging.getLogger(__name__)

# The pip wheels mxnet-cu112 1.9.x carry kernels for compute capabilities 5.0, 6.0, 7.0, 8.0
# and 8.6 (MXNet's config/distribution/linux_cu112.cmake); a GPU runs kernels built for its own
# major version and a lower or equal minor one, so majors 5 to 8 (Maxwell to Ada) run them.
# Hopper (9.x, H100/H200) needs MXNet built from source with CUDA >= 11.8.
WHEEL_CUDA_MAJORS = (5, 6, 7, 8)


def gpu_index(local_rank: int, visible_gpus: int) -> Optional[int]:
    """The GPU (among those this process sees) that the rank ``local_rank`` uses.

    None without GPUs (CPU). 0 when one GPU is visible: the scheduler isolates one GPU per rank
    (``CUDA_VISIBLE_DEVICES`` set per process, as Slurm's ``--gpus-per-task=1`` does), so each
    rank's only device is its own. ``local_rank`` when the node's GPUs are all visible.

    Raises
    ------
    ConfigError
        More ranks on the node than visible GPUs (each rank needs its own).
    """
    if visible_gpus <= 0:
        return None
    if visible_gpus == 1:
        return 0
    if local_rank < visible_gpus:
        return local_rank
    raise ConfigError(
        f"local rank {local_rank} has no GPU of its own: this process sees {visible_gpus} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start at "
        f"most {visible_gpus} processes per node (horovodrun -H host:{visible_gpus})")


def unsupported_gpus(gpus: Sequence[Tuple[str, str, str]],
                     majors: Sequence[int] = WHEEL_CUDA_MAJORS) -> List[str]:
    """The GPUs of ``gpus`` (``(index, compute capability, name)`` as nvidia-smi prints them)
    whose compute capability the wheel has no kernels for, described for a message."""
    bad = []
    for index, capability, name in gpus:
        try:
            major = int(capability.split(".")[0])
        except ValueError:
            continue   # an older driver that cannot say: nothing to judge
        if major not in majors:
            bad.append(f"GPU {index} ({name}, compute capability {capability})")
    return bad


def _visible_gpus_from_driver() -> List[Tuple[str, str, str]]:
    """``(index, compute capability, name)`` of the GPUs this process sees, from nvidia-smi
    (empty when it is missing or cannot say)."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=index,compute_cap,name",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [tuple(field.strip() for field in line.split(",", 2))
            for line in text.splitlines() if line.count(",") >= 2]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and all(v.strip().isdigit() for v in visible.split(",")):
        wanted = {v.strip() for v in visible.split(",")}
        rows = [row for row in rows if row[0] in wanted]
    return rows


def default_context(local_rank: int = 0):
    """This rank's device: its GPU (see :func:`gpu_index`) when MXNet sees GPUs, else CPU.

    Raises
    ------
    ConfigError
        No GPU of its own, or a GPU the installed MXNet has no kernels for.
    """
    index = gpu_index(local_rank, mx.context.num_gpus())
    if index is None:
        return mx.cpu()
    bad = unsupported_gpus(_visible_gpus_from_driver())
    if bad:
        raise ConfigError(f"{', '.join(bad)}: the MXNet wheel has kernels for compute "
                          f"capabilities 5.x to 8.x only (Maxwell to Ada); Hopper GPUs need "
                          f"MXNet built from source with CUDA >= 11.8")
    return mx.gpu(index)
