"""``recordio_tools pack``: images -> sharded RecordIO with a classes file and a manifest.

Shards are written under temporary names and renamed when complete, with a small per-shard
JSON written last; a re-run with the same inputs and options skips the shards that are
complete and writes the rest. Unreadable or non-image inputs are reported and skipped.
"""
import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
import signal
import sys
import time

from PIL import Image, ImageFile
from tqdm import tqdm

from resnest_gluon.commands.cli import command, non_negative_int, positive_float, positive_int
from resnest_gluon.data.recordio import (
    RecordWriter,
    ShardSetError,
    pack_record,
    set_files,
    sha256_file,
    shard_name,
    shard_numbers,
)
from resnest_gluon.data.transforms import decode_error, to_rgb
from resnest_gluon.paths import make_parent, output_prefix, read_text

from . import sources
from .sources import SourceError

__all__ = ["pack", "build_parser", "main", "encode_image"]

log = logging.getLogger("recordio_tools.pack")
FORMAT = "resnest_gluon-shards/1"


def encode_image(path: str, resize: int = 0, quality: int = 95):
    """Read one input and return ``(payload_bytes, (w, h), None)`` or ``(None, None, reason)``.

    Without ``resize`` JPEG and PNG bytes are stored unchanged (after a decode check); other
    formats are re-encoded as JPEG. With ``resize`` the shorter side is reduced to ``resize``
    (never enlarged) and the image re-encoded as JPEG at ``quality``.
    """
    # Truncated files must fail the check even if an imported library (gluoncv does) set
    # Pillow's process-wide LOAD_TRUNCATED_IMAGES.
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        img = Image.open(io.BytesIO(raw))
        fmt = img.format
        size = img.size
        if resize and min(size) > resize:
            scale = resize / min(size)
            target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            if fmt == "JPEG":
                img.draft("RGB", target)
            img = to_rgb(img).resize(target, Image.BICUBIC)
        elif fmt in ("JPEG", "PNG") and not resize:
            # decode check at reduced scale: reads the whole entropy-coded stream
            if fmt == "JPEG":
                img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return raw, size, None
        else:
            img = to_rgb(img)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue(), img.size, None
    except Exception as err:  # pylint: disable=broad-except
        # any failure of an input is that input's problem: report and skip it
        return None, None, decode_error(err)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _encode_task(args):
    index, path, label, resize, quality = args
    payload, size, reason = encode_image(path, resize, quality)
    if payload is None:
        return index, path, label, None, None, reason
    return index, path, label, pack_record(label, payload, record_id=index), size, None


def plan_shards(items, num_shards):
    """Split items into ``num_shards`` contiguous, nearly equal pieces."""
    n = len(items)
    return [items[i * n // num_shards:(i + 1) * n // num_shards] for i in range(num_shards)]


def _shard_digest(shard_items, options):
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for index, path, label in shard_items:
        digest.update(f"{index}\t{label}\t{path}\n".encode())
    return digest.hexdigest()


def pack(items, classes, prefix, num_shards=None, shard_size_mb=None, resize=0, quality=95,
         shuffle=True, seed=0, workers=None, class_names=None, progress=True, overwrite=False):
    """Pack ``(path, label)`` items into shards ``PREFIX-xxxxx-of-yyyyy.rec``.

    Parameters
    ----------
    items : list of (str, int)
        Input files and labels.
    classes : list of str
        Class ids by label index (written to ``PREFIX.classes.tsv``).
    prefix : str
        Output path prefix.
    num_shards, shard_size_mb : int, float, optional
        Number of shards, or a target shard size from which it is derived (default: 1 shard
        per 100 MB of input, at least 1).
    resize, quality : int
        Shorter-side resize (0 keeps the files unchanged) and JPEG quality.
    shuffle, seed : bool, int
        Seeded shuffle of the records before sharding.
    workers : int, optional
        Encoding processes (default: CPU count).
    class_names : dict, optional
        Human-readable names by class id.
    overwrite : bool
        Delete the shard set already at ``prefix`` first. Without it, a set of another shard
        count there is refused (:class:`ShardSetError`): the two would mix.

    Returns
    -------
    dict
        The manifest (also written to ``PREFIX.manifest.json``).
    """
    if not items:
        raise SourceError("no input images found")
    make_parent(prefix, "output prefix")
    indexed = [(i, path, label) for i, (path, label) in enumerate(sorted(items))]
    if shuffle:
        random.Random(seed).shuffle(indexed)
    num_shards = _shard_count(indexed, num_shards, shard_size_mb)
    _clear_previous_set(prefix, num_shards, overwrite)
    options = {"resize": resize, "quality": quality, "shuffle": shuffle, "seed": seed,
               "num_shards": num_shards}
    _write_classes(prefix, classes, class_names or {})
    _write_list(prefix, indexed)
    stats, todo = _complete_shards(prefix, plan_shards(indexed, num_shards), options)
    started = time.time()
    _encode_shards(prefix, num_shards, todo, stats, resize, quality, workers, progress)
    manifest = _write_manifest(prefix, classes, stats, options)
    _report(prefix, manifest, time.time() - started)
    return manifest


def _shard_count(indexed, num_shards, shard_size_mb) -> int:
    """``num_shards``, or one per ``shard_size_mb`` (default 100) MB of input; never more
    shards than records."""
    if num_shards is None:
        total_bytes = sum(os.path.getsize(p) for _, p, _ in indexed if os.path.exists(p))
        target = (shard_size_mb or 100) * 1e6
        num_shards = max(1, math.ceil(total_bytes / target))
    return max(1, min(int(num_shards), len(indexed)))


def _write_list(prefix, indexed):
    """``PREFIX.lst``: im2rec's ``index<TAB>label<TAB>path`` of every input, in index order."""
    with open(prefix + ".lst", "w") as lst:
        for index, path, label in sorted(indexed):
            lst.write(f"{index}\t{label}\t{path}\n")


def _complete_shards(prefix, shard_plans, options):
    """``(stats, todo)``: the stats of the shards a previous run of the same pack completed
    (None for the others), and ``(shard, items, digest)`` of the shards left to write."""
    num_shards = len(shard_plans)
    stats, todo = [None] * num_shards, []
    for s, shard_items in enumerate(shard_plans):
        digest = _shard_digest(shard_items, options)
        stats_path = shard_name(prefix, s, num_shards, ".json")
        rec_path = shard_name(prefix, s, num_shards, ".rec")
        if os.path.exists(stats_path) and os.path.exists(rec_path):
            with open(stats_path) as handle:
                previous = json.load(handle)
            if previous.get("digest") == digest:
                stats[s] = previous
                continue
        todo.append((s, shard_items, digest))
    if len(todo) < num_shards:
        log.info("%d of %d shards already complete; packing the other %d",
                 num_shards - len(todo), num_shards, len(todo))
    return stats, todo


def _encode_shards(prefix, num_shards, todo, stats, resize, quality, workers, progress):
    """Encode and write the shards of ``todo`` (in worker processes), filling ``stats``."""
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=sum(len(t[1]) for t in todo), unit="img",
               desc=f"pack {os.path.basename(prefix)}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    # Ctrl-C reaches the whole process group: the workers leave it to this process
    pool = (mp.get_context("fork").Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN))
            if workers > 1 else None)
    try:
        for s, shard_items, digest in todo:
            tasks = [(i, p, lab, resize, quality) for i, p, lab in shard_items]
            results = (pool.imap(_encode_task, tasks, chunksize=8) if pool
                       else map(_encode_task, tasks))
            stats[s] = _write_shard(prefix, s, num_shards, results, digest, bar)
    finally:
        bar.close()
        if pool:
            pool.terminate()


def _report(prefix, manifest, seconds):
    """Log what was packed and skipped; a pack with no readable image is removed and is an
    error."""
    skipped = manifest["skipped"]
    if manifest["records"] == 0:
        _remove_set(prefix)
        raise SourceError(f"none of the {len(skipped)} input file(s) is a readable image, e.g. "
                          f"{skipped[0]['path']}: {skipped[0]['reason']}")
    log.info("packed %d records into %d shards (%s-*-of-%05d.rec) in %.0f s; %d input(s) "
             "skipped as unreadable", manifest["records"], manifest["num_shards"],
             os.path.basename(prefix), manifest["num_shards"], seconds, len(skipped))
    for entry in skipped[:20]:
        log.warning("skipped %s: %s", entry["path"], entry["reason"])


def _previous_counts(prefix):
    """Shard counts of what is already at ``prefix``: its files' ``-of-N`` and its manifest's
    (None for a manifest that cannot be read)."""
    counts = {shard_numbers(path)[1] for path in set_files(prefix)}
    if os.path.isfile(prefix + ".manifest.json"):
        try:
            with open(prefix + ".manifest.json") as handle:
                counts.add(int(json.load(handle)["num_shards"]))
        except (OSError, ValueError, KeyError, TypeError):
            counts.add(None)
    return counts


def _remove_set(prefix):
    """Delete every file of the shard set at ``prefix`` (shards of any count, manifest, classes
    file, list); returns how many."""
    paths = set_files(prefix) + [prefix + ext for ext in (".manifest.json", ".classes.tsv",
                                                           ".lst")
                                 if os.path.isfile(prefix + ext)]
    for path in paths:
        os.remove(path)
    return len(paths)


def _clear_previous_set(prefix, num_shards, overwrite):
    counts = _previous_counts(prefix)
    if overwrite and counts:
        log.info("--overwrite: removed the previous set at %s (%d files)", prefix,
                 _remove_set(prefix))
        return
    other = sorted(counts - {num_shards}, key=str)
    if other:
        described = " and ".join("an unreadable manifest" if n is None else f"{n} shard(s)"
                                 for n in other)
        raise ShardSetError(
            f"{prefix} already holds a set of {described}; packing {num_shards} shard(s) "
            f"beside it would leave both and readers would refuse the mix. Pack with the old "
            f"count to refresh it, choose another prefix, or add --overwrite to delete the old "
            f"set first")


def _write_shard(prefix, s, num_shards, results, digest, bar):
    rec_path = shard_name(prefix, s, num_shards, ".rec")
    writer = RecordWriter(rec_path)
    per_class, skipped, sizes = {}, [], []
    try:
        for index, path, label, payload, size, reason in results:
            bar.update(1)
            if payload is None:
                skipped.append({"index": index, "path": path, "reason": reason})
                continue
            writer.write(payload)
            per_class[str(label)] = per_class.get(str(label), 0) + 1
            sizes.append(size)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    stats = {"shard": s, "rec": os.path.basename(rec_path),
             "idx": os.path.basename(writer.idx_path), "records": writer.count,
             "bytes": os.path.getsize(rec_path), "rec_sha256": sha256_file(rec_path),
             "idx_sha256": sha256_file(writer.idx_path), "per_class": per_class,
             "skipped": skipped, "digest": digest}
    stats_path = shard_name(prefix, s, num_shards, ".json")
    with open(stats_path + ".tmp", "w") as handle:
        json.dump(stats, handle)
    os.replace(stats_path + ".tmp", stats_path)
    return stats


def _write_classes(prefix, classes, names):
    with open(prefix + ".classes.tsv.tmp", "w") as handle:
        handle.write("# index\tclass id\tname\n")
        for i, wnid in enumerate(classes):
            handle.write(f"{i}\t{wnid}\t{names.get(wnid, wnid)}\n")
    os.replace(prefix + ".classes.tsv.tmp", prefix + ".classes.tsv")


def _write_manifest(prefix, classes, stats, options):
    per_class = [0] * len(classes)
    for shard in stats:
        for label, count in shard["per_class"].items():
            per_class[int(label)] += count
    manifest = {
        "format": FORMAT, "name": os.path.basename(prefix), "num_shards": len(stats),
        "num_classes": len(classes), "records": sum(s["records"] for s in stats),
        "per_class": per_class, "options": options,
        "shards": [{k: s[k] for k in ("rec", "idx", "records", "bytes", "rec_sha256",
                                      "idx_sha256", "per_class")} for s in stats],
        "skipped": [entry for s in stats for entry in s["skipped"]],
    }
    with open(prefix + ".manifest.json.tmp", "w") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(prefix + ".manifest.json.tmp", prefix + ".manifest.json")
    return manifest


def _read_class_names(path):
    names = {}
    for line in read_text(path, "--class-names").splitlines():
        parts = line.strip().split(None, 1)
        if parts:
            names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="recordio-pack")
    parser.description = ("Pack images into RecordIO shards PREFIX-00000-of-000NN.rec/.idx "
                          "(MXNet's format), with PREFIX.classes.tsv, PREFIX.manifest.json "
                          "and PREFIX.lst. Interrupted? Run the same command again: complete "
                          "shards are kept.")
    parser.add_argument("source", help="ImageNet-style tree (SOURCE/<class>/<image>), a flat "
                                       "folder (with --labels), or a .lst file (with --root)")
    parser.add_argument("prefix", help="output prefix, e.g. /data/imagenet/train; ending in / "
                                       "it names a folder and the files take the source's name "
                                       "(out/ -> out/train-00000-of-00004.rec for SOURCE train)")
    parser.add_argument("--labels", help="label file for a flat folder: 'filename class' "
                                         "lines or LOC_val_solution.csv")
    parser.add_argument("--root", default="", help="base folder of the paths in a .lst")
    parser.add_argument("--classes", help="classes file of another pack (e.g. train's "
                                          "PREFIX.classes.tsv) to reuse its label indices")
    parser.add_argument("--class-names", help="'wnid name...' lines (LOC_synset_mapping.txt)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shards", type=positive_int, help="number of shards")
    size.add_argument("--shard-size", type=positive_float, default=None,
                      help="target shard size in MB (default 100)")
    parser.add_argument("--resize", type=non_negative_int, default=0,
                        help="shorter side in pixels (0: store files unchanged, default)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (0)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the sorted order")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (CPU count)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the shard set already at PREFIX first (needed when it has "
                             "another shard count; without it a re-run keeps complete shards)")
    return parser


def _read_items(args, classes):
    """``(items, classes found)`` from the source the arguments name."""
    if not os.path.exists(args.source):
        raise SourceError(f"source not found: {args.source}")
    if args.source.endswith(".lst"):
        return sources.read_lst(args.source, args.root)
    if not os.path.isdir(args.source):
        raise SourceError(f"{args.source} is neither a folder nor a .lst file")
    if args.labels:
        return sources.scan_flat_with_labels(args.source, args.labels, classes)
    return sources.scan_tree(args.source, classes)


def default_name(source: str) -> str:
    """The name files take when the prefix is a folder: the source folder's or list's name."""
    name = os.path.basename(os.path.abspath(source))
    return os.path.splitext(name)[0] if name.endswith(".lst") else name


def run(args) -> int:
    if not 1 <= args.quality <= 100:
        raise SourceError("--quality must be in 1..100")
    prefix = output_prefix(args.prefix, default_name(args.source))
    classes = sources.read_classes(args.classes) if args.classes else None
    items, found_classes = _read_items(args, classes)
    names = _read_class_names(args.class_names) if args.class_names else {}
    manifest = pack(items, classes or found_classes, prefix, args.shards, args.shard_size,
                    args.resize, args.quality, not args.no_shuffle, args.seed, args.workers,
                    names, progress=not args.quiet, overwrite=args.overwrite)
    print(f"{manifest['records']} records in {manifest['num_shards']} shard(s), "
          f"{manifest['num_classes']} classes, {len(manifest['skipped'])} input(s) skipped; "
          f"manifest {prefix}.manifest.json")
    return 0


@command("pack")
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))
