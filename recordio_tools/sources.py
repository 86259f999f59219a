"""Where images come from: an ImageNet-style tree, a validation folder with a label file, or
an im2rec ``.lst`` list. Each source resolves to ``(path, label)`` items and a class list."""
import csv
import logging
import os
from typing import Dict, List, Optional, Tuple

from resnest_gluon.data.recordio import read_classes_file
from resnest_gluon.errors import UserError

__all__ = ["SourceError", "Item", "scan_tree", "scan_flat_with_labels", "read_lst", "read_classes",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
Item = Tuple[str, int]
log = logging.getLogger("recordio_tools.sources")


class SourceError(UserError, ValueError):
    """Inputs that cannot be packed as given (no images, unknown classes, missing labels)."""


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_classes(path: str) -> List[str]:
    """Class ids (wnids) in index order from a packer classes file."""
    return [cid for cid, _ in read_classes_file(path)]


def scan_tree(root: str, classes: Optional[List[str]] = None):
    """``root/<class>/<image>``: items and classes (sorted folder names unless given)."""
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                     and not d.startswith("."))
    if not folders:
        raise SourceError(f"{root} has no class folders (expected {root}/<class>/<image>; for "
                          f"a flat folder of images give --labels)")
    classes = classes or folders
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise SourceError(f"{root}: {len(unknown)} folder(s) are not classes of the --classes "
                          f"file ({len(classes)} classes): {unknown[:5]}")
    items, empty = [], []
    for folder in folders:
        found = len(items)
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in sorted(files):
                if not name.startswith("."):
                    items.append((os.path.join(dirpath, name), index[folder]))
        if len(items) == found:
            empty.append(folder)
    if not items:
        raise SourceError(f"{root}: the {len(folders)} class folder(s) hold no files")
    if empty:
        log.warning("%d class folder(s) hold no files and get no records: %s", len(empty),
                    ", ".join(empty[:10]))
    return items, classes


def _read_label_file(path: str) -> Dict[str, str]:
    """``filename class`` per line, or LOC_val_solution-style CSV ``ImageId,PredictionString``."""
    mapping = {}
    with open(path, newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.lower().startswith("imageid,"):
            for row in csv.DictReader(handle):
                mapping[row["ImageId"]] = row["PredictionString"].split()[0]
        else:
            for line_no, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise SourceError(f"{path}:{line_no}: expected 'filename class'")
                mapping[fields[0]] = fields[1]
    return mapping


def scan_flat_with_labels(folder: str, label_file: str, classes: Optional[List[str]] = None):
    """A flat folder of images plus a label file mapping file names (with or without
    extension) to class ids or indices."""
    mapping = _read_label_file(label_file)
    if not mapping:
        raise SourceError(f"{label_file} lists no files")
    values = sorted(set(mapping.values()))
    if classes is None:
        if all(v.isdigit() for v in values):
            classes = [str(i) for i in range(max(int(v) for v in values) + 1)]
        else:
            classes = values
    index = {c: i for i, c in enumerate(classes)}
    items, missing = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name.startswith("."):
            continue
        key = name if name in mapping else os.path.splitext(name)[0]
        if key not in mapping:
            missing.append(name)
            continue
        cls = mapping[key]
        if cls not in index:
            if cls.isdigit() and int(cls) < len(classes):
                items.append((path, int(cls)))
                continue
            raise SourceError(f"{label_file}: class {cls!r} of {name} is not a known class")
        items.append((path, index[cls]))
    if missing:
        raise SourceError(f"{len(missing)} file(s) in {folder} have no label in {label_file}, "
                          f"e.g. {missing[:3]}")
    if not items:
        raise SourceError(f"{folder} holds no files to pack")
    return items, classes


def read_lst(lst_path: str, root: str = ""):
    """im2rec list: ``index<TAB>label<TAB>path`` (path relative to ``root``)."""
    items = []
    with open(lst_path) as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                if line.strip():
                    raise SourceError(f"{lst_path}:{line_no}: expected index<TAB>label<TAB>path")
                continue
            try:
                label = int(float(fields[1]))
            except ValueError:
                raise SourceError(f"{lst_path}:{line_no}: label {fields[1]!r} is not a "
                                  f"number") from None
            if label < 0:
                raise SourceError(f"{lst_path}:{line_no}: negative label {label}")
            items.append((os.path.join(root, fields[-1]), label))
    if not items:
        raise SourceError(f"{lst_path} lists no files")
    classes = [str(i) for i in range(max((lab for _, lab in items), default=-1) + 1)]
    return items, classes
