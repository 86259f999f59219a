"""``recordio_tools inspect``: counts, label histogram, image sizes and a contact sheet."""
import argparse
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from resnest_gluon.commands.cli import command, positive_int
from resnest_gluon.data.recordio import ShardSet, find_manifest, read_classes_file, unpack_record
from resnest_gluon.data.transforms import to_rgb
from resnest_gluon.errors import UserError
from resnest_gluon.paths import make_parent

__all__ = ["inspect", "build_parser", "main"]


def _class_names(rec_path):
    manifest = find_manifest(rec_path)
    if not manifest:
        return {}
    classes = manifest[:-len(".manifest.json")] + ".classes.tsv"
    if not os.path.isfile(classes):
        return {}
    return {i: name for i, (_, name) in enumerate(read_classes_file(classes))}


def inspect(spec, samples=16, sheet=None, seed=0, max_sizes=2000):
    """Summarise shards; optionally write a PNG contact sheet of ``samples`` records.

    Returns
    -------
    dict
        ``records``, ``shards`` (records per shard), ``labels`` (histogram), ``sizes``
        (width/height statistics over up to ``max_sizes`` records).
    """
    if sheet and os.path.splitext(sheet)[1].lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--sheet {sheet}: give a .png or .jpg file name")
    shards = ShardSet(spec)
    labels = {}
    rng = np.random.default_rng(seed)
    size_sample = set(rng.choice(len(shards), min(max_sizes, len(shards)), replace=False).tolist())
    widths, heights = [], []
    for index in range(len(shards)):
        header, image = unpack_record(shards.read(index))
        label = int(header.class_label)
        labels[label] = labels.get(label, 0) + 1
        if index in size_sample:
            try:
                w, h = Image.open(io.BytesIO(image)).size
                widths.append(w)
                heights.append(h)
            except Exception:  # pylint: disable=broad-except
                pass   # unreadable: `check` reports those
    summary = {"records": len(shards), "shards": dict(zip(map(os.path.basename, shards.paths),
                                                          shards.shard_sizes())),
               "labels": dict(sorted(labels.items())),
               "sizes": {"width": _stats(widths), "height": _stats(heights)}}
    if sheet:
        picks = rng.choice(len(shards), min(samples, len(shards)), replace=False)
        _contact_sheet(shards, sorted(picks.tolist()), sheet, _class_names(shards.paths[0]))
        summary["sheet"] = sheet
    return summary


def _stats(values):
    if not values:
        return {}
    arr = np.asarray(values)
    return {"min": int(arr.min()), "mean": round(float(arr.mean()), 1),
            "median": float(np.median(arr)), "max": int(arr.max())}


def _contact_sheet(shards, indices, path, names, tile=160):
    cols = int(np.ceil(np.sqrt(len(indices))))
    rows = int(np.ceil(len(indices) / cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, index in enumerate(indices):
        header, image = unpack_record(shards.read(index))
        label = int(header.class_label)
        try:
            img = to_rgb(Image.open(io.BytesIO(image)))
            img.thumbnail((tile, tile))
        except Exception:  # pylint: disable=broad-except
            img = Image.new("RGB", (tile, tile), "red")
        x, y = (n % cols) * tile, (n // cols) * (tile + 14)
        sheet.paste(img, (x + (tile - img.size[0]) // 2, y + (tile - img.size[1]) // 2))
        draw.text((x + 2, y + tile), f"{label}: {names.get(label, '')}"[:26], fill="black")
    make_parent(path, "--sheet")
    sheet.save(path)


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="recordio-inspect")
    parser.description = __doc__.splitlines()[0].split(": ", 1)[1]
    parser.add_argument("shards", nargs="+", help=".rec file(s), shard prefix, glob or folder")
    parser.add_argument("--sheet", help="write a PNG contact sheet here")
    parser.add_argument("--samples", type=positive_int, default=16, help="images on the sheet (16)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--top", type=positive_int, default=20,
                        help="histogram lines to print (20)")
    return parser


def run(args) -> int:
    summary = inspect(args.shards, args.samples, args.sheet, args.seed)
    print(f"{summary['records']} records in {len(summary['shards'])} shard(s)")
    for name, count in summary["shards"].items():
        print(f"  {name}: {count}")
    labels = summary["labels"]
    print(f"{len(labels)} labels; most frequent:")
    for label, count in sorted(labels.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {label:6d} {count:8d}")
    for axis in ("width", "height"):
        s = summary["sizes"][axis]
        if s:
            print(f"{axis}: min {s['min']} median {s['median']:g} mean {s['mean']} max {s['max']}")
    if args.sheet:
        print(f"contact sheet: {args.sheet}")
    return 0


@command("inspect")
def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))
