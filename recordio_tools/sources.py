"""Where images come from: an ImageNet-style tree, a validation folder with a label file, or
an im2rec ``.lst`` list. Each source resolves to ``(path, label)`` items and a class list."""
import csv
import io
import logging
import os
from typing import Dict, List, Optional, Tuple

from resnest_gluon.data.recordio import read_classes_file
from resnest_gluon.errors import UserError
from resnest_gluon.paths import read_text

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
    """``filename class`` per line, or LOC_val_solution-style CSV ``ImageId,PredictionString``.

    Strict: a line of another shape, or a file named twice with different classes, is a
    :class:`SourceError` naming the line (a lenient reader would invent classes or labels).
    """
    text = read_text(path, "--labels")
    lines = text.splitlines()
    mapping, where = {}, {}
    if lines and lines[0].lower().startswith("imageid,"):
        rows = ((n, [row.get("ImageId"), (row.get("PredictionString") or "").split()[:1]])
                for n, row in enumerate(csv.DictReader(io.StringIO(text)), 2))
        pairs = ((n, (name, first[0] if first else None)) for n, (name, first) in rows)
        shape = "'ImageId,PredictionString' with a class first"
    else:
        pairs = ((n, tuple(line.split())) for n, line in enumerate(lines, 1) if line.strip())
        shape = "'filename class' (two fields; no spaces in names)"
    for line_no, fields in pairs:
        if len(fields) != 2 or not all(fields):
            raise SourceError(f"{path}:{line_no}: expected {shape}, got "
                              f"{' '.join(f for f in fields if f)[:60]!r}")
        name, cls = fields
        if mapping.get(name, cls) != cls:
            raise SourceError(f"{path}:{line_no}: {name} is labelled {cls!r} here and "
                              f"{mapping[name]!r} on line {where[name]}")
        mapping[name], where[name] = cls, line_no
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
    items, missing, used = [], [], set()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name.startswith("."):
            continue
        key = name if name in mapping else os.path.splitext(name)[0]
        if key not in mapping:
            missing.append(name)
            continue
        cls = mapping[key]
        used.add(key)
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
    unused = len(mapping) - len(used)
    if unused:
        log.warning("%d name(s) of %s match no file in %s, e.g. %s", unused, label_file, folder,
                    sorted(set(mapping) - used)[:3])
    return items, classes


def read_lst(lst_path: str, root: str = ""):
    """im2rec list: ``index<TAB>label<TAB>path`` (path relative to ``root``)."""
    items = []
    for line_no, line in enumerate(read_text(lst_path, ".lst").splitlines(), 1):
        fields = line.split("\t")
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
