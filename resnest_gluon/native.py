"""Compiled helper libraries: compile once per source and machine, cache, share safely.

This module owns the one way the project's C++ sources become shared libraries:
:func:`cached_library` compiles them on first use into a cache folder
(``$RESNEST_GLUON_EXTENSIONS``, default ``~/.cache/resnest_gluon/extensions``) under a name
derived from the sources, the flags and the machine, and returns the path. Concurrent builders
(the ranks of a job starting together, two jobs on one host) take a file lock, so one compiles
and the others use its result; a library is written under a temporary name and renamed into
place, so no process loads a half-written file. Loading is the caller's: MXNet operators
(:mod:`resnest_gluon.models.extension`) and plain C functions called through ``ctypes``
(:mod:`resnest_gluon.data.resample`). Nothing happens at import time.
"""
import fcntl
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from typing import Sequence

from .errors import UserError

__all__ = ["BuildError", "cached_library", "library_path"]

log = logging.getLogger(__name__)

_BUILD_TIMEOUT_S = 600


class BuildError(UserError, RuntimeError):
    """A library could not be built (the message says why; a missing compiler or an unwritable
    cache is the environment's to fix)."""


def _compiler() -> list:
    """The C++ compiler command: ``$CXX`` if set, else g++ or c++ from PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("g++", "c++"):
        if shutil.which(name):
            return [name]
    raise BuildError("no C++ compiler found (install g++ or set CXX)")


def _cache_folder(cache_dir: str = None) -> str:
    folder = cache_dir or os.environ.get("RESNEST_GLUON_EXTENSIONS") or os.path.join(
        "~", ".cache", "resnest_gluon", "extensions")
    return os.path.abspath(os.path.expanduser(folder))    # loaders want it absolute


def library_path(name: str, sources: Sequence[str], flags: Sequence[str],
                 key: Sequence[str] = (), cache_dir: str = None,
                 headers: Sequence[str] = ()) -> str:
    """Where the library built from ``sources`` with ``flags`` is (or will be) cached.

    The compiler itself is not part of the name (a library built on one machine loads on
    another of the same architecture, so nodes without a compiler can use a shared cache);
    the contents of the sources and of the project's own ``headers``, the flags, the
    architecture, flags given in ``$CXX`` and ``key`` (e.g. the version of the library it is
    built against) are.
    """
    digest = hashlib.sha256()
    for path in (*sources, *headers):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    extra_flags = shlex.split(os.environ.get("CXX", ""))[1:]
    digest.update(" ".join([platform.machine(), *flags, *extra_flags, *key]).encode())
    return os.path.join(_cache_folder(cache_dir), f"lib{name}-{digest.hexdigest()[:16]}.so")


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its last line is usually a summary)."""
    lines = stderr.strip().splitlines() or ["(no output)"]
    return next((line for line in lines if "error" in line.lower()), lines[-1]).strip()


def _compile(target: str, sources: Sequence[str], flags: Sequence[str], includes: Sequence[str],
             what: str, libraries: Sequence[str] = ()) -> None:
    """Compile ``sources`` into ``target`` (via a temporary file in the same folder), linked
    with ``libraries`` (linker arguments, after the sources)."""
    compiler = _compiler()
    handle, partial = tempfile.mkstemp(prefix=".build-", suffix=".so",
                                       dir=os.path.dirname(target))
    os.close(handle)
    command = [*compiler, *flags, *(f"-I{folder}" for folder in includes), *sources,
               *libraries, "-o", partial]
    log.info("compiling %s (%s, once per version)", what, os.path.basename(target))
    source = os.path.basename(sources[0])
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise BuildError(f"compiling {source} failed: {_first_error(done.stderr)}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o755 & ~umask)     # mkstemp's 0600 would hide it from other users
        os.replace(partial, target)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BuildError(f"compiling {source} failed: {err}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def cached_library(name: str, sources: Sequence[str], flags: Sequence[str],
                   key: Sequence[str] = (), includes: Sequence[str] = (), what: str = None,
                   cache_dir: str = None, libraries: Sequence[str] = (),
                   headers: Sequence[str] = ()) -> str:
    """The cached library's path, compiling it first if no process has yet.

    Parameters
    ----------
    name : str
        The library's name (``lib<name>-<digest>.so``).
    sources : sequence of str
        Absolute paths of the sources; the first names the library in messages.
    flags : sequence of str
        Compiler flags (``-shared -fPIC`` included), before the sources.
    key : sequence of str
        Anything else the library depends on (versions), for its cache name.
    includes : sequence of str
        Header folders (not part of the cache name: the version of a library's headers
        belongs in ``key``).
    what : str, optional
        What it is, in words, for the log line and errors.
    cache_dir : str, optional
        The cache folder (default ``$RESNEST_GLUON_EXTENSIONS``, else
        ``~/.cache/resnest_gluon/extensions``).
    libraries : sequence of str
        Linker arguments after the sources (``-L``, ``-l``, rpath); part of the cache name.
    headers : sequence of str
        The project's own headers the sources include (their folder among ``includes``):
        their contents are part of the cache name, so editing one rebuilds the library.

    Raises
    ------
    BuildError
        No compiler, a failed compilation, or a cache folder that cannot be written.
    """
    what = what or name
    try:
        target = library_path(name, sources, (*flags, *libraries), key, cache_dir, headers)
        if os.path.isfile(target):
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # read-only descriptor: flock works on it, and a lock file another user created
        # (without write permission for us) can still be opened
        lock = os.open(target + ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.isfile(target):
                _compile(target, sources, flags, includes, what, libraries)
        finally:
            os.close(lock)
    except OSError as err:
        raise BuildError(f"cannot build {what}: {err}") from None
    return target
