"""The two long steps over a grid's work directory: measuring and training every point.

This module owns :func:`summarize` (params, GFLOPs and measured img/s per point, cached in
``DIR/summary.json``), :func:`train_points` (each point's trainer in ``DIR/<point>``, locally or
under horovodrun, finished points skipped, interrupted ones resumed, failures recorded in
``DIR/status.json``) and :func:`point_progress` (where a point stands, from what its trainer
wrote: a point is finished when ``final.params`` exists and ``metrics.jsonl`` holds its last
epoch).
"""
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from .. import config as cfg
from ..models import count_flops, count_params
from ..training.metrics import read_metrics
from ..training.setup import build_network
from .grid import Grid, GridError, Point, point_config, point_tree

__all__ = ["point_progress", "summarize", "train_command", "train_points", "cost_key",
           "read_json"]

log = logging.getLogger(__name__)


def point_progress(point_dir: str, epochs: int) -> Dict[str, Any]:
    """Where a point's training stands, from its trainer's outputs.

    Returns
    -------
    dict
        ``finished`` (``final.params`` written and the last epoch logged), ``epochs_done``,
        ``epochs``, and ``top1`` / ``top5`` / ``val_images`` of the latest evaluation in
        ``metrics.jsonl`` (None before the first one).
    """
    records = [r for r in read_metrics(os.path.join(point_dir, "metrics.jsonl"))
               if r.get("kind") == "epoch"]
    done = max((r["epoch"] + 1 for r in records), default=0)
    evals = [r for r in records if r.get("val_top1") is not None]
    last = evals[-1] if evals else {}
    final = os.path.exists(os.path.join(point_dir, "final.params"))
    return {"finished": final and done >= epochs, "epochs_done": done, "epochs": epochs,
            "top1": last.get("val_top1"), "top5": last.get("val_top5"),
            "val_images": last.get("val_images")}


def _write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Dict[str, Any]:
    """A JSON file of the work directory; empty when missing (or unreadable: logged)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is unreadable; ignoring it", path)
        return {}


def cost_key(config: cfg.Config, size: int) -> Dict[str, Any]:
    """What a point's params and GFLOPs depend on (a cached record is reused when equal)."""
    return {"model": config.model.name, "overrides": config.model.overrides,
            "classes": config.data.num_classes, "size": size}


def summarize(grid: Grid, workdir: str, overrides: Sequence[str] = (),
              points: Optional[Sequence[str]] = None, size: Optional[int] = None,
              batch: Optional[int] = None, repeats: Optional[int] = None,
              measure: Optional[Callable[..., Dict[str, float]]] = None,
              force: bool = False) -> List[Dict[str, Any]]:
    """Params, GFLOPs at ``size`` and measured img/s of every point, without training.

    Records are cached in ``workdir/summary.json`` (rewritten after each point) and reused
    when the architecture, size, batch and repeats are the same, unless ``force``.

    Parameters
    ----------
    grid : Grid
    workdir : str
    overrides : list of str
        ``section.key=value`` applied to every point.
    points : list of str, optional
        Only these points.
    size, batch, repeats : int, optional
        Default: the grid's ``summary`` section.
    measure : callable, optional
        ``measure(name, mode, batch, size, repeats, overrides=...) -> {"img_per_s",
        "peak_mb"}`` with mode ``"infer"`` or ``"train"``; without it no speed is measured.
    force : bool
        Measure again even when cached.

    Returns
    -------
    list of dict
        One record per point: ``point``, ``radix``, ``cardinality``, ``width``, ``params``,
        ``gflops``, ``size``, ``speed`` (``batch``, ``repeats``, ``infer_img_per_s``,
        ``train_img_per_s``, ``train_peak_mb``, ``cores``; None when not measured) and
        ``error`` (None, or what failed).
    """
    size, batch = size or grid.summary.size, batch or grid.summary.batch
    repeats = repeats or grid.summary.repeats
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "summary.json")
    cache = read_json(path).get("points", {})
    selected = grid.select(points)
    records = []
    for n, point in enumerate(selected, 1):
        old = {} if force else cache.get(point.name, {})
        record = {"point": point.name, "radix": point.radix, "cardinality": point.cardinality,
                  "width": point.width, "size": size, "error": None, "speed": None}
        try:
            config = point_config(grid, point, overrides)
            key = cost_key(config, size)
            record["key"] = key
            cached = old.get("key") == key and old.get("params") is not None
            if cached:
                record.update(params=old["params"], gflops=old["gflops"])
            else:
                net = build_network(config)
                record.update(params=count_params(net), gflops=count_flops(net, size) / 1e9)
            speed = old.get("speed") if cached else None
            if speed and (speed.get("batch"), speed.get("repeats")) != (batch, repeats) \
                    and measure is not None:
                speed = None
            cached = cached and (speed is not None or measure is None)
            if speed is None and measure is not None:
                speed = {"batch": batch, "repeats": repeats, "cores": os.cpu_count()}
                for mode in ("infer", "train"):
                    result = measure(config.model.name, mode, batch, size, repeats,
                                     overrides=config.model.overrides)
                    speed[f"{mode}_img_per_s"] = result["img_per_s"]
                    speed[f"{mode}_peak_mb"] = result["peak_mb"]
            record["speed"] = speed
        except Exception as err:  # pylint: disable=broad-except
            # one broken point is reported; the others are still measured
            record["error"] = f"{type(err).__name__}: {err}".strip()
            log.error("[%d/%d] %s failed: %s", n, len(selected), point.name, record["error"])
        else:
            rate = speed or {}
            log.info("[%d/%d] %s: %.2f M params, %.3g GFLOPs @%d%s%s", n, len(selected),
                     point.name, record["params"] / 1e6, record["gflops"], size,
                     f", {rate['infer_img_per_s']:.2f} / {rate['train_img_per_s']:.2f} img/s "
                     f"(infer / train, batch {rate['batch']})" if rate else "",
                     " (cached)" if cached else "")
        records.append(record)
        cache[point.name] = record
        _write_json(path, {"points": cache})
    return records


def train_command(grid: Grid, point_yaml: str, point_dir: str,
                  overrides: Sequence[str] = ()) -> List[str]:
    """The command line that trains one point: the trainer, under horovodrun if configured.

    ``python -m resnest_gluon.commands.train --config POINT_YAML --workdir POINT_DIR
    [overrides]``, prefixed by ``horovodrun -np N -H HOSTS`` (or ``-hostfile FILE``) and the
    grid's ``extra_args`` when ``train.launcher`` is horovodrun.
    """
    launch = grid.train
    trainer = [launch.python or sys.executable, "-m", "resnest_gluon.commands.train",
               "--config", point_yaml, "--workdir", point_dir, *overrides]
    if launch.launcher == "local":
        return trainer
    hosts = (["-hostfile", launch.hostfile] if launch.hostfile
             else ["-H", launch.hosts or f"localhost:{launch.np}"])
    return [_find_horovodrun(launch.horovodrun) or launch.horovodrun, "-np", str(launch.np),
            *hosts, *launch.extra_args, *trainer]


def _find_horovodrun(name: str) -> Optional[str]:
    """``name`` on PATH, else beside this interpreter (a virtual environment's bin)."""
    found = shutil.which(name)
    if found is None:
        beside = os.path.join(os.path.dirname(sys.executable), name)
        found = beside if os.access(beside, os.X_OK) else None
    return found


def _last_error(log_path: str, offset: int) -> str:
    """The most telling line the trainer wrote since ``offset``: its last error, else its
    last line."""
    with open(log_path, errors="replace") as handle:
        handle.seek(offset)
        lines = [line.strip() for line in handle.read().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error\b|ERROR|error:", line)]
    return (errors or lines or ["(no output)"])[-1][-500:]


def _run_trainer(command: List[str], log_path: str):
    """Run ``command`` with its output appended to ``log_path``; returns ``(exit code, error
    line or None)``. On Ctrl-C (KeyboardInterrupt) the trainer is sent SIGTERM, on which it
    saves a checkpoint and exits; once it has, KeyboardInterrupt goes on."""
    env = dict(os.environ)
    env.setdefault("TQDM_MININTERVAL", "30")   # the bar redraws in the log file: 1 per 30 s
    with open(log_path, "ab") as handle:
        offset = handle.tell()
        handle.write(f"\n$ {shlex.join(command)}\n".encode())
        handle.flush()
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            # the trainer may not have had the signal (kill -INT of this process alone):
            # SIGTERM makes it finish its step, save a checkpoint and exit
            log.warning("interrupted: the trainer saves a checkpoint and stops")
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
    return code, (_last_error(log_path, offset) if code != 0 else None)


def _percent(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def _train_point(grid: Grid, point: Point, point_dir: str, overrides: Sequence[str],
                 tag: str, dry_run: bool) -> Dict[str, Any]:
    """Launch one point's trainer unless it is finished; returns its status entry."""
    entry = {"status": "failed", "error": None, "command": None, "seconds": 0.0,
             "top1": None, "time": time.time()}
    try:
        config = point_config(grid, point, overrides)
    except cfg.ConfigError as err:
        entry["error"] = f"config error: {err}"
        log.error("%s: %s", tag, entry["error"])
        return entry
    epochs = config.train.epochs
    before = point_progress(point_dir, epochs)
    if before["finished"]:
        entry.update(status="skipped", top1=before["top1"])
        log.info("%s: skipped, finished (%d epochs, top-1 %s)", tag, epochs,
                 _percent(before["top1"]))
        return entry
    os.makedirs(point_dir, exist_ok=True)
    point_yaml = os.path.join(point_dir, "point.yaml")
    with open(point_yaml, "w") as handle:
        yaml.safe_dump(point_tree(grid, point), handle, sort_keys=False)
    command = train_command(grid, point_yaml, point_dir, overrides)
    entry["command"] = shlex.join(command)
    if dry_run:
        entry["status"] = "pending"
        return entry
    log_path = os.path.join(point_dir, "train.log")
    resuming = os.path.isdir(os.path.join(point_dir, "checkpoints"))
    log.info("%s: %s at epoch %d/%d (%s); output in %s", tag,
             "resuming" if resuming else "starting", before["epochs_done"], epochs,
             grid.train.launcher, log_path)
    tic = time.time()
    code, error = _run_trainer(command, log_path)
    after = point_progress(point_dir, epochs)
    entry.update(seconds=time.time() - tic, top1=after["top1"])
    if code != 0:
        entry["error"] = f"trainer exited with {code}: {error}"
        log.error("%s: failed after %.0f s: %s (see %s)", tag, entry["seconds"],
                  entry["error"], log_path)
    elif after["finished"]:
        entry["status"] = "finished"
        log.info("%s: finished in %.0f s, top-1 %s", tag, entry["seconds"],
                 _percent(after["top1"]))
    else:
        entry["status"] = "stopped"
        log.warning("%s: the trainer stopped at epoch %d/%d (a stop request or "
                    "train.max_steps); a relaunch resumes it", tag, after["epochs_done"],
                    epochs)
    return entry


def train_points(grid: Grid, workdir: str, overrides: Sequence[str] = (),
                 points: Optional[Sequence[str]] = None, dry_run: bool = False
                 ) -> Dict[str, Dict[str, Any]]:
    """Train every point, one after another, each in ``workdir/<point>``.

    Finished points are skipped; unfinished ones are launched again and their trainer resumes
    from its newest checkpoint. A point that fails (config error, non-zero exit) is logged
    with its error and recorded in ``workdir/status.json``; the others go on. Ctrl-C lets the
    running trainer save a checkpoint, records the point as stopped and goes on up.

    Parameters
    ----------
    grid : Grid
    workdir : str
    overrides : list of str
        ``section.key=value`` for every point (e.g. the data paths), passed to the trainer.
    points : list of str, optional
        Only these points.
    dry_run : bool
        Write each point's ``point.yaml`` and return the commands without running them.

    Returns
    -------
    dict
        Point name -> ``status`` (finished | skipped | failed | stopped | pending), ``error``,
        ``command``, ``seconds``, ``top1``.
    """
    if grid.train.launcher == "horovodrun" and not dry_run \
            and _find_horovodrun(grid.train.horovodrun) is None:
        raise GridError(f"train.launcher is horovodrun but {grid.train.horovodrun!r} is not "
                        f"found (install horovod, or set train.horovodrun to its path)")
    os.makedirs(workdir, exist_ok=True)
    status_path = os.path.join(workdir, "status.json")
    statuses = read_json(status_path)
    selected = grid.select(points)
    outcome = {}
    for n, point in enumerate(selected, 1):
        point_dir = os.path.abspath(os.path.join(workdir, point.name))
        try:
            entry = _train_point(grid, point, point_dir, overrides,
                                 f"[{n}/{len(selected)}] {point.name}", dry_run)
        except KeyboardInterrupt:
            statuses[point.name] = {"status": "stopped", "error": "interrupted",
                                    "time": time.time()}
            _write_json(status_path, statuses)
            raise
        outcome[point.name] = entry
        if not dry_run:
            statuses[point.name] = entry
            _write_json(status_path, statuses)
    return outcome
