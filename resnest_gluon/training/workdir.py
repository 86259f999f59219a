"""The work directory of a run: one run at a time, and nothing left over from a killed one.

This module owns :class:`WorkdirLock`: an advisory POSIX record lock (``lockf``) on
``WORKDIR/.lock``, taken by the rank that writes (rank 0) for the whole run. The operating
system releases it when the process ends, however it ends, so a relaunch after kill -9 just
works, while a second launch into a directory whose run is still alive stops at once naming
the holder. A POSIX lock belongs to the process, not to the open file: the loader's forked
workers, which inherit the file, do not keep it alive after a kill (``flock`` would), and NFS
supports it through its lock manager. Once the lock is
held, temporary checkpoint folders left by a killed run are removed: no other writer can be
using them.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket

from .. import config as cfg
from ..config import ConfigError
from ..paths import atomic_write, make_folder

__all__ = ["WorkdirLock", "WorkdirBusy", "prepare_workdir", "claim_workdir", "remove_leftovers",
           "record_config"]

log = logging.getLogger(__name__)

_LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"


class WorkdirBusy(ConfigError):
    """Another live run holds the work directory."""


def prepare_workdir(workdir: str) -> str:
    """Create ``workdir`` (and its parents); a clear error when a file is in the way."""
    return make_folder(workdir, "--workdir")


class WorkdirLock:
    """Hold ``WORKDIR/.lock`` while a run writes into ``workdir``.

    Use as a context manager. On filesystems without working locks (NFS without its lock
    manager, Lustre mounted without ``flock``/``localflock``) the lock cannot be taken: a
    warning says that two runs would not be told apart, and the run goes on.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, _LOCK_FILE)
        self._handle = None

    def acquire(self):
        handle = open(self.path, "a+")
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                holder = _read_holder(handle)
                handle.close()
                raise WorkdirBusy(f"{self.workdir} is in use by another run ({holder}); wait "
                                  f"for it to finish, stop it, or use another --workdir") from None
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                handle.close()
                raise
            log.warning("cannot lock %s (%s): this filesystem does not support locks, so a "
                        "second run launched into the same directory would not be stopped",
                        self.path, os.strerror(err.errno))
        handle.seek(0)
        handle.truncate()
        json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, handle)
        handle.flush()
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            self._handle.close()   # closing the file releases the lock
            self._handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(handle) -> str:
    try:
        handle.seek(0)
        holder = json.loads(handle.read())
        return f"PID {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


def remove_leftovers(folder: str) -> int:
    """Remove the temporary checkpoint folders a killed run left in ``folder``; returns how
    many. Call only while holding the work directory's lock."""
    if not os.path.isdir(folder):
        return 0
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d unfinished checkpoint folder(s) left by an interrupted run in %s",
                 removed, folder)
    return removed


@contextlib.contextmanager
def claim_workdir(workdir: str, dist):
    """Create ``workdir`` and hold its lock (rank 0) for the ``with`` block; every rank raises
    the same :class:`WorkdirBusy` when it is taken, so that no rank waits for another."""
    prepare_workdir(workdir)
    lock, busy = WorkdirLock(workdir), None
    if dist.rank == 0:
        try:
            lock.acquire()
        except WorkdirBusy as err:
            busy = err
    if dist.size > 1 and dist.allreduce_sum([float(busy is not None)], name="workdir")[0] > 0:
        busy = busy or WorkdirBusy(f"{workdir} is in use by another run (rank 0 names it)")
    if busy is not None:
        raise busy
    try:
        if dist.rank == 0:
            remove_leftovers(os.path.join(workdir, "checkpoints"))
        yield workdir
    finally:
        lock.release()


def record_config(config, workdir: str, step: int) -> str:
    """Write the run's resolved config to ``WORKDIR/config.yaml``; when it differs from the
    one there, keep that one as ``config-<step>.yaml`` (the config the run had up to
    ``step``, where this one takes over). Call once the run is known to be valid."""
    path = os.path.join(workdir, "config.yaml")
    text = cfg.config_yaml(config)
    if os.path.isfile(path):
        with open(path) as handle:
            previous = handle.read()
        if previous == text:
            return path
        kept = _free_name(os.path.join(workdir, f"config-{step:08d}"), ".yaml")
        atomic_write(kept, lambda handle: handle.write(previous))
        log.info("the config changed: the previous one is kept as %s", kept)
    atomic_write(path, lambda handle: handle.write(text))
    return path


def _free_name(stem: str, ext: str) -> str:
    path, n = stem + ext, 1
    while os.path.exists(path):
        path, n = f"{stem}-{n}{ext}", n + 1
    return path
