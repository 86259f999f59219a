"""Rules for the files the tools write: output prefixes, parent folders and free space.

One home for what every writer does before it writes: a prefix that ends in ``/`` names a
folder (the files go inside it under a default name), parent folders are created with a clear
error when a file is in the way, and a large write checks the free space first so that a full
disk is one line (:class:`~resnest_gluon.errors.DiskFullError`) instead of a half-written
file. Imports nothing of the package but its errors.
"""
import contextlib
import errno
import os
import shutil
from typing import Optional

from .errors import DiskFullError, UserError

__all__ = ["output_prefix", "make_folder", "make_parent", "read_text", "free_bytes",
           "ensure_free_space", "raise_if_full", "atomic_write"]


def output_prefix(prefix: str, default_name: str) -> str:
    """The path prefix files are named from: ``prefix`` itself, or ``prefix/default_name``
    when ``prefix`` ends with a path separator (``out/`` -> ``out/train``)."""
    if prefix.endswith(("/", os.sep)):
        return os.path.join(prefix, default_name)
    return prefix


def make_folder(folder: str, what: str = "output", path: Optional[str] = None) -> str:
    """Create ``folder`` and its parents; returns it.

    Raises
    ------
    UserError
        When a file stands where a folder is needed, or the folder cannot be created; the
        message names ``what`` the user gave (``--workdir``) and ``path`` (default ``folder``).
    """
    named = f"{what} {path or folder}"
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{named}: a file is in the way ({folder} or one of its parents is "
                        f"not a folder)") from None
    except PermissionError:
        raise UserError(f"{named}: permission denied creating {folder}") from None
    except OSError as err:
        raise UserError(f"{named}: cannot create {folder} ({err.strerror})") from None
    return folder


def make_parent(path: str, what: str = "output") -> str:
    """Create the folder that will hold ``path`` (see :func:`make_folder`); returns it."""
    return make_folder(os.path.dirname(os.path.abspath(path)), what, path)


def read_text(path: str, what: str) -> str:
    """The text of the file the user named as ``what`` (``--classes``, ``config``); a
    :class:`UserError` naming it when it is missing, a folder, or not text."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file (a binary file given by "
                        f"mistake?)") from None


def free_bytes(folder: str) -> int:
    """Bytes available to this user in the filesystem that holds ``folder``."""
    return shutil.disk_usage(folder).free


def ensure_free_space(folder: str, needed: int, what: str):
    """Raise :class:`DiskFullError` when fewer than ``needed`` bytes are free in ``folder``."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFullError(errno.ENOSPC, _full_message(folder, needed, what, free), folder)


def raise_if_full(err: BaseException, folder: str, needed: int, what: str):
    """Turn an ENOSPC (or MXNet's incomplete-write error) met while writing ``what`` into
    ``folder`` into :class:`DiskFullError`; anything else is left to the caller."""
    text = str(err)
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "Write incomplete" in text or "No space left" in text)
    if full:
        raise DiskFullError(errno.ENOSPC, _full_message(folder, needed, what, None),
                            folder) from None


def atomic_write(path: str, write, mode: str = "w", what: Optional[str] = None):
    """Write ``path`` through ``write(handle)`` into a temporary file renamed into place: the
    old content stays whole if writing fails; a full disk raises :class:`DiskFullError`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as handle:
            write(handle)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise_if_full(err, os.path.dirname(os.path.abspath(path)), 0,
                      what or os.path.basename(path))
        raise
    os.replace(tmp, path)
    return path


def _full_message(folder, needed, what, free):
    need = f"needs ~{max(needed, 1e6) / 1e6:.0f} MB" if needed else ""
    have = "" if free is None else f"{free / 1e6:.0f} MB free"
    detail = ", ".join(part for part in (need, have) if part)
    return (f"no space left on device in {folder} writing {what}"
            f"{f' ({detail})' if detail else ''}; free some space and run the same command "
            f"again")
