"""Run observability: the JSON-lines metrics log and the training-curve plot.

This module owns :class:`MetricsLog` (``metrics.jsonl``, rank 0: appended to, and cut back to
a checkpoint's step at resume) and
:func:`plot_curves` (loss, learning rate and top-1 against epochs, to PNG).
"""
import json
import os
import time
from typing import Optional

from ..paths import atomic_write, raise_if_full

__all__ = ["MetricsLog", "plot_curves", "read_metrics", "peak_memory_mb", "device_memory_mb",
           "pyplot", "save_figure"]


def device_memory_mb(ctx) -> Optional[float]:
    """Memory in use on ``ctx``'s GPU in MB (MXNet's pool keeps what it allocated, so this is
    the run's peak so far), or None on a CPU (see :func:`peak_memory_mb`)."""
    if ctx.device_type != "gpu":
        return None
    import mxnet as mx
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return (total - free) / 2**20


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MetricsLog:
    """Append records to ``path`` (one JSON object per line) when ``enabled``."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, kind: str, **fields):
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        try:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:   # a torn line is skipped by read_metrics
            raise_if_full(err, os.path.dirname(os.path.abspath(self.path)), 0, self.path)
            raise

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (and a torn last line); returns how many
        were dropped. Used at resume: the work after the checkpoint is done again."""
        if not self.enabled or not os.path.exists(self.path):
            return 0
        records = read_metrics(self.path)
        keep = [r for r in records if r.get("step", 0) <= step]
        with open(self.path) as handle:
            lines = sum(1 for line in handle if line.strip())
        if len(keep) == lines:
            return 0
        atomic_write(self.path, lambda handle: handle.writelines(json.dumps(r) + "\n"
                                                                 for r in keep))
        return lines - len(keep)


def read_metrics(path: str):
    """All records of a metrics log (a torn last line, from a kill, is ignored)."""
    records = []
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed; imported on first use)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int) -> str:
    """Write ``fig`` to ``path`` through a temporary file and a rename, then close it."""
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(metrics_path: str, png_path: str) -> str:
    """Draw loss, LR and validation top-1 against epoch into ``png_path``."""
    plt = pyplot()
    records = read_metrics(metrics_path)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    evals = [r for r in epochs if r.get("val_top1") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["epoch_float"] for r in steps], [r["loss"] for r in steps], lw=0.8,
                 label="train (steps)")
    axes[0].plot([r["epoch"] + 1 for r in epochs], [r["train_loss"] for r in epochs], "o-",
                 label="train (epoch mean)")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    axes[1].plot([r["epoch_float"] for r in steps], [r["lr"] for r in steps])
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[2].plot([r["epoch"] + 1 for r in evals], [100 * r["val_top1"] for r in evals], "o-",
                 label="top-1")
    axes[2].plot([r["epoch"] + 1 for r in evals], [100 * r["val_top5"] for r in evals], "s--",
                 label="top-5")
    axes[2].set(xlabel="epoch", ylabel="accuracy (%)", title="validation")
    axes[2].legend()
    fig.tight_layout()
    return save_figure(fig, png_path, dpi=90)
