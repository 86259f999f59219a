"""``recordio_tools check``: verify shards record by record against their index and manifest.

Checks that every ``.idx`` offset points at a record inside its ``.rec``, that every record
decodes as an image, that labels lie in ``[0, classes)``, that the ``.rec`` holds no bytes
after its last indexed record that look like a partial record, and that counts and checksums
agree with the manifest. Every problem is reported with shard and index; the exit status is
non-zero when anything is wrong.
"""
import argparse
import io
import json
import logging
import os
import sys

from PIL import Image, ImageFile
from tqdm import tqdm

from resnest_gluon.commands.cli import command, positive_int
from resnest_gluon.data.recordio import (
    MissingIndexError,
    RecordFile,
    RecordFormatError,
    find_manifest,
    resolve_shards,
    sha256_file,
    unpack_record,
)
from resnest_gluon.data.transforms import decode_error, to_rgb

__all__ = ["check", "build_parser", "main"]

log = logging.getLogger("recordio_tools.check")


def check(spec, num_classes=None, decode=True, checksums=True, progress=True):
    """Check shards; returns a list of problem strings (empty when everything is fine)."""
    problems = []
    paths = resolve_shards(spec)
    manifest_path = find_manifest(paths[0])
    manifest = json.load(open(manifest_path)) if manifest_path else None
    if manifest and num_classes is None:
        num_classes = manifest["num_classes"]
    by_name = {s["rec"]: s for s in manifest["shards"]} if manifest else {}
    total = 0
    for path in paths:
        name = os.path.basename(path)
        try:
            shard = RecordFile(path, check_end=False)
        except (MissingIndexError, RecordFormatError, ValueError) as err:
            problems.append(f"{name}: {err}")
            continue
        offsets = shard.offsets
        ends, cut, counts = [], False, {}
        for i in tqdm(range(len(shard)), desc=f"check {name}", unit="rec", disable=not progress,
                      file=sys.stderr, leave=False):
            where = f"{name} record {i} (byte {offsets[i]})"
            if not 0 <= offsets[i] < shard.size:
                problems.append(f"{where}: offset outside the file of {shard.size} bytes")
                continue
            try:
                header, image = unpack_record(shard.read(i))
            except RecordFormatError as err:
                problems.append(f"{where}: {err}")
                cut = cut or "truncated" in str(err)
                continue
            ends.append(shard._file().tell())   # pylint: disable=protected-access
            label = header.class_label
            counts[f"{label:g}"] = counts.get(f"{label:g}", 0) + 1
            if num_classes is not None and not 0 <= label < num_classes:
                problems.append(f"{where}: label {label:g} outside [0, {num_classes})")
            if decode:
                lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
                try:
                    to_rgb(Image.open(io.BytesIO(image))).load()   # as the loader decodes
                except Exception as err:  # pylint: disable=broad-except
                    problems.append(f"{where}: image does not decode ({decode_error(err)})")
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = lenient
        if ends and max(ends) < shard.size and not cut:
            problems.append(f"{name}: {shard.size - max(ends)} bytes after the last indexed "
                            f"record (a partial record, or an index that misses records)")
        total += len(shard)
        expected = by_name.get(name)
        if manifest is not None:
            if expected is None:
                problems.append(f"{name}: not listed in {manifest_path}")
            else:
                if expected["records"] != len(shard):
                    problems.append(f"{name}: {len(shard)} records, manifest says "
                                    f"{expected['records']}")
                if expected.get("per_class") is not None and not cut and \
                        expected["per_class"] != counts:
                    problems.append(f"{name}: records per class {_short(counts)} differ from "
                                    f"the manifest's {_short(expected['per_class'])}")
                if checksums and sha256_file(path) != expected["rec_sha256"]:
                    problems.append(f"{name}: checksum differs from the manifest")
    if manifest is not None and len(paths) == manifest["num_shards"] \
            and total != manifest["records"]:
        problems.append(f"{total} records in all, manifest says {manifest['records']}")
    return problems, total


def _short(per_class, shown=5):
    items = sorted(per_class.items(), key=lambda kv: float(kv[0]))
    text = ", ".join(f"{k}: {v}" for k, v in items[:shown])
    return "{" + text + (", ..." if len(items) > shown else "") + "}"


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="recordio-check")
    parser.description = __doc__.splitlines()[0].split(": ", 1)[1]
    parser.add_argument("shards", nargs="+", help=".rec file(s), shard prefix, glob or folder")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="label range (default: from the manifest)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding images")
    parser.add_argument("--no-checksum", action="store_true", help="skip checksums")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args) -> int:
    problems, total = check(args.shards, args.num_classes, not args.no_decode,
                            not args.no_checksum, progress=not args.quiet)
    for problem in problems:
        print(f"BAD {problem}")
    print(f"{total} records checked, {len(problems)} problem(s)")
    return 1 if problems else 0


@command("check")
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))
