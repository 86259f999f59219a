#!/usr/bin/env python3
"""Before ``make env`` installs this clone editable into the shared environment: remove every
trace of other clones' editable installs, so that ``import resnest_gluon`` finds this one.

The environment lives outside the clone and is shared by every clone on the machine. pip's
own ``uninstall`` of an editable install removes only the path its egg-link names, and fails
(quietly, under ``make``) when the working directory holds another clone's metadata, so paths
of earlier clones stayed in ``easy-install.pth`` ahead of the new one. This script removes,
from every ``.pth`` file of the running interpreter's site-packages, each line naming a folder
that holds a ``resnest_gluon`` package other than ``CLONE``, and the egg-link of such a
folder. Standard library only; run it with the environment's Python.

Usage: ``python scripts/point_env_at_clone.py CLONE``; prints what it removed.
"""
import glob
import os
import sys
import sysconfig


def is_other_clone(line, clone):
    """Whether a ``.pth`` line names a folder holding a ``resnest_gluon`` package, other than
    ``clone`` (a folder that no longer exists counts: its package is gone with it)."""
    path = line.strip()
    if not path or path.startswith(("#", "import ")):
        return False
    if os.path.realpath(path) == os.path.realpath(clone):
        return False
    return (os.path.isfile(os.path.join(path, "resnest_gluon", "__init__.py"))
            or not os.path.exists(path))


def clean_pth_file(pth_file, clone):
    """Remove other clones' lines from one ``.pth`` file; return the removed lines."""
    with open(pth_file, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept, removed = [], []
    for line in lines:
        (removed if is_other_clone(line, clone) else kept).append(line)
    if removed:
        with open(pth_file, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
    return [line.strip() for line in removed]


def remove_other_egg_links(site_packages, clone):
    """Delete ``resnest*gluon.egg-link`` files that point at another folder; return them."""
    removed = []
    for link in glob.glob(os.path.join(site_packages, "resnest*gluon.egg-link")):
        with open(link, encoding="utf-8") as handle:
            target = handle.readline().strip()
        if os.path.realpath(target) != os.path.realpath(clone):
            os.remove(link)
            removed.append(link)
    return removed


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.path.isdir(args[0]):
        print("usage: point_env_at_clone.py CLONE_FOLDER", file=sys.stderr)
        return 2
    clone = os.path.abspath(args[0])
    site_packages = sysconfig.get_paths()["purelib"]
    for pth_file in sorted(glob.glob(os.path.join(site_packages, "*.pth"))):
        for line in clean_pth_file(pth_file, clone):
            print(f"removed {line} from {os.path.basename(pth_file)}")
    for link in remove_other_egg_links(site_packages, clone):
        print(f"removed {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
