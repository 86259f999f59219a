"""Checkpoints: atomic, verified, rotated; resume from the newest complete one.

This module owns :class:`CheckpointManager`. Layout under the work directory::

    checkpoints/step-00001234/model.params    network parameters (the live, trained weights)
    checkpoints/step-00001234/trainer.states  optimizer state (momentum)
    checkpoints/step-00001234/ema.params      moving average of the weights (when on)
    checkpoints/step-00001234/meta.json       position, epoch sums, loss scale, config hash,
                                              checksums
    best.params, final.params                 the best and the last model (as evaluated)

A checkpoint is written into a temporary folder and renamed into place, and its ``meta.json``
holds the checksums of the other files, so a checkpoint that is truncated or corrupted on
disk is detected at resume and the one before it is used. Only rank 0 writes. Before writing,
the free space is checked against the size of the newest checkpoint (or an estimate from the
parameters); a full disk, then or during the write, removes the temporary folder and raises
:class:`~resnest_gluon.errors.DiskFullError`, so the run stops with one line and the
checkpoints before it stay whole for the relaunch.
"""
import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from typing import List, Optional

import mxnet as mx
import numpy as np

from ..config import read_yaml
from ..data.recordio import sha256_file
from ..errors import reason_of
from ..models.convert import WeightsMismatchError, match_parameters
from ..paths import ensure_free_space, raise_if_full

__all__ = ["CheckpointManager", "atomic_save_parameters", "parameter_bytes", "save_trainer_states",
           "checkpoint_differences"]

# The settings that decide a checkpoint's parameters: another value cannot resume it.
# Settings a checkpoint cannot be resumed across: the architecture, and the optimizer (its
# state, and the optimizer object saved with it, are of another kind).
_ARCHITECTURE_KEYS = (("model", "name"), ("model", "overrides"), ("data", "num_classes"),
                      ("optim", "name"))

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def atomic_save_parameters(net, path):
    """``net.save_parameters`` to a temporary name, then rename (a full disk: nothing left,
    :class:`~resnest_gluon.errors.DiskFullError`)."""
    folder = os.path.dirname(os.path.abspath(path))
    needed = int(1.1 * parameter_bytes(net.collect_params().values()))
    ensure_free_space(folder, needed, os.path.basename(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        net.save_parameters(tmp)
    except (OSError, mx.base.MXNetError) as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise_if_full(err, folder, needed, os.path.basename(path))
        raise
    os.replace(tmp, path)


def save_trainer_states(trainer, path: str):
    """``trainer.save_states`` with every optimizer state on the CPU.

    An NDArray loads onto the device it was saved from: states saved from each rank's GPU as
    they are would all be allocated on that GPU by every rank of a node at resume. Saved from
    the CPU they load there, and the updater moves each onto its weight's device at its first
    update (``Updater.sync_state_context``), so every rank restores onto its own device.
    """
    # pylint: disable=protected-access
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:   # the kvstore's own format (not used by our trainers)
        trainer.save_states(path)
        return
    updater = trainer._updaters[0]
    states = {index: updater.sync_state_context(state, mx.cpu())
              for index, state in updater.states.items()}
    with open(path, "wb") as handle:
        handle.write(pickle.dumps((states, updater.optimizer)))


def parameter_bytes(params) -> int:
    """Bytes the values of ``params`` (Gluon Parameters) take."""
    return sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in params)


class CheckpointManager:
    """Save and restore training state in ``workdir``.

    Parameters
    ----------
    workdir : str
        The run's work directory.
    keep : int
        Newest checkpoints to keep (the best one is kept besides).
    is_writer : bool
        Whether this process writes (rank 0).
    """

    def __init__(self, workdir: str, keep: int = 3, is_writer: bool = True):
        self.workdir = workdir
        self.folder = os.path.join(workdir, "checkpoints")
        self.keep = keep
        self.is_writer = is_writer
        if is_writer:
            os.makedirs(self.folder, exist_ok=True)

    def _steps(self):
        if not os.path.isdir(self.folder):
            return []
        found = [(int(m.group(1)), name) for name in os.listdir(self.folder)
                 if (m := _STEP_DIR.match(name))]
        return sorted(found, reverse=True)

    def save(self, net, trainer, meta: dict, ema=None) -> Optional[str]:
        """Write a checkpoint for ``meta["global_step"]``; returns its folder (rank 0).

        ``ema`` (a :class:`~resnest_gluon.training.ema.ParameterEMA`) is saved beside.
        """
        if not self.is_writer:
            return None
        name = f"step-{meta['global_step']:08d}"
        final = os.path.join(self.folder, name)
        tmp = os.path.join(self.folder, f".tmp-{name}-{os.getpid()}")
        needed = self._expected_bytes(net, ema)
        ensure_free_space(self.folder, needed, f"checkpoint {name}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            meta = self._write_files(tmp, net, trainer, meta, ema)
        except (OSError, mx.base.MXNetError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise_if_full(err, self.folder, needed, f"checkpoint {name}")
            raise
        if os.path.exists(final):   # e.g. a damaged checkpoint of this step: set it aside first
            stale = f"{tmp}.stale"
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
        self._rotate(meta.get("best_step"))
        log.info("checkpoint %s (epoch %d, batch %d)", final, meta["epoch"], meta["batch"])
        return final

    @staticmethod
    def _write_files(tmp, net, trainer, meta, ema):
        """Write a checkpoint's files into the folder ``tmp``; returns the meta written."""
        os.makedirs(tmp)
        # oneDNN BatchNorm updates its running statistics without telling the engine
        # (apache/mxnet#18610): finish every pending operation before reading them.
        mx.nd.waitall()
        net.save_parameters(os.path.join(tmp, "model.params"))
        save_trainer_states(trainer, os.path.join(tmp, "trainer.states"))
        files = ["model.params", "trainer.states"]
        if ema is not None:
            ema.save(os.path.join(tmp, "ema.params"))
            files.append("ema.params")
        meta = dict(meta, saved_at=time.time(), files={
            f: sha256_file(os.path.join(tmp, f)) for f in files})
        with open(os.path.join(tmp, "meta.json"), "w") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        return meta

    def _expected_bytes(self, net, ema) -> int:
        """What the next checkpoint will take, with a 10% margin: the newest one's size, or
        at least the weights, one optimizer state per trainable weight and the average."""
        params = list(net.collect_params().values())
        trainable = [p for p in params if p.grad_req != "null"]
        size = parameter_bytes(params) + parameter_bytes(trainable) * (2 if ema else 1)
        steps = self._steps()
        if steps:
            folder = os.path.join(self.folder, steps[0][1])
            size = max(size, sum(os.path.getsize(os.path.join(folder, name))
                                 for name in os.listdir(folder)))
        return int(1.1 * size)

    def _rotate(self, best_step):
        for n, (step, name) in enumerate(self._steps()):
            if n >= self.keep and step != best_step:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def verify(self, folder) -> dict:
        """Return the meta of a complete checkpoint folder; ``ValueError`` saying what is
        wrong otherwise."""
        meta_path = os.path.join(folder, "meta.json")
        try:
            with open(meta_path) as handle:
                meta = json.load(handle)
        except (OSError, ValueError) as err:
            raise ValueError(f"unreadable meta.json ({err})") from None
        for name, digest in meta.get("files", {}).items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ValueError(f"{name} is missing")
            if sha256_file(path) != digest:
                raise ValueError(f"{name} does not match its checksum (truncated or corrupt)")
        return meta

    def latest(self):
        """``(folder, meta)`` of the newest complete checkpoint, or ``(None, None)``.

        Damaged newer checkpoints are reported and skipped.
        """
        for _, name in self._steps():
            folder = os.path.join(self.folder, name)
            try:
                return folder, self.verify(folder)
            except ValueError as err:
                log.warning("checkpoint %s is damaged (%s); using the one before it", folder, err)
        return None, None

    def restore(self, net, trainer, ctx, ema=None, found=None):
        """Load the newest complete checkpoint (or ``found``, a :meth:`latest` result) into
        ``net``, ``trainer`` and ``ema``; returns its meta or None when there is none."""
        folder, meta = found or self.latest()
        if folder is None:
            return None
        net.load_parameters(os.path.join(folder, "model.params"), ctx=ctx)
        trainer.load_states(os.path.join(folder, "trainer.states"))
        if ema is not None:
            ema_file = os.path.join(folder, "ema.params")
            if os.path.exists(ema_file):
                ema.load(ema_file)
            else:
                log.warning("%s has no ema.params: the average restarts from the weights",
                            folder)
                ema.reset()
        log.info("resumed from %s (epoch %d, batch %d, step %d)", folder, meta["epoch"],
                 meta["batch"], meta["global_step"])
        return meta

    def save_model(self, net, name):
        """Write ``WORKDIR/name`` (best.params / final.params) atomically (rank 0)."""
        if self.is_writer:
            mx.nd.waitall()
            atomic_save_parameters(net, os.path.join(self.workdir, name))


def checkpoint_differences(folder: str, meta: dict, net, now: dict,
                           config_file: Optional[str] = None) -> List[str]:
    """Why the checkpoint in ``folder`` cannot be loaded into ``net``; empty when it can.

    Parameters
    ----------
    folder, meta
        The checkpoint and its meta.json (see :meth:`CheckpointManager.latest`).
    net
        The network of this run.
    now : dict
        This run's resolved config as a dict (``config.to_dict``).
    config_file : str, optional
        The run's config.yaml, for checkpoints whose meta does not hold their config.

    Returns
    -------
    list of str
        One entry per differing setting (``model.name``, ``model.overrides``,
        ``data.num_classes``, ``optim.name``) and one for the parameters (missing, extra,
        misshapen).
    """
    then = meta.get("config")
    if then is None and config_file and os.path.isfile(config_file):
        then = read_yaml(config_file)
    differences = []
    for section, key in _ARCHITECTURE_KEYS:
        old = _plain(((then or {}).get(section) or {}).get(key))
        new = _plain(now[section][key])
        if old is not None and old != new:
            differences.append(f"{section}.{key} {old!r} in the checkpoint, {new!r} now")
    try:
        match_parameters(net, mx.nd.load(os.path.join(folder, "model.params")))
    except WeightsMismatchError as err:
        differences.append(f"parameters: {err}")
    except mx.base.MXNetError as err:
        differences.append(f"model.params unreadable ({reason_of(err)})")
    return differences


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))
