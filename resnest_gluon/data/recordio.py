"""The RecordIO shard format: writing, indexing, reading and resolving shard lists.

This module owns everything about the bytes on disk, for the packer (``recordio_tools``) and
the input pipeline alike:

* MXNet's RecordIO container (dmlc-core): each record is ``magic:u32, lrec:u32, payload,
  padding to 4 bytes`` with ``lrec = cflag << 29 | length``; a payload that contains the magic
  number at a 4-byte aligned position is split into parts (cflag 1 = first, 2 = middle,
  3 = last) and the magic is implied between them.
* The image record payload: ``IRHeader(flag:u32, label:f32, id:u64, id2:u64)``, then ``flag``
  extra float32 labels when ``flag > 0``, then the encoded image.
* The ``.idx`` file: ``key<TAB>byte offset`` per line.
* Shard names ``NAME-00000-of-00008.rec`` / ``.idx``; a single im2rec ``train.rec`` + ``.idx``
  is a one-shard list.

Pure Python (no MXNet), so packer and loader workers start fast and fork safely; files written
here are read by ``mx.recordio``, ``mx.io.ImageRecordIter`` and ``ImageRecordDataset``
(``tests/test_recordio.py``).
"""
import bisect
import glob
import hashlib
import json
import os
import re
import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError
from ..paths import read_text

__all__ = ["MAGIC", "RecordFormatError", "MissingIndexError", "IRHeader", "pack_record",
           "unpack_record", "RecordWriter", "RecordFile", "ShardSet", "shard_name",
           "resolve_shards", "rebuild_index", "sha256_file", "read_classes_file",
           "find_manifest", "ShardSetError", "ShardNotFoundError", "shard_prefix", "shard_numbers",
           "set_files"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LREC = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1


class RecordFormatError(UserError, ValueError):
    """A record or index that does not follow the format (names shard and position)."""


class ShardNotFoundError(UserError, FileNotFoundError):
    """No record file where the user said there is one."""


class MissingIndexError(UserError, FileNotFoundError):
    """A ``.rec`` file without its ``.idx``."""


class IRHeader(NamedTuple):
    """Image record header; ``label`` is a float or an array when ``flag > 0``."""

    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int

    @property
    def class_label(self) -> float:
        """The class label: the scalar label, or the first entry of a label vector (im2rec
        writes vectors for multi-label and detection records)."""
        return float(self.label) if self.flag == 0 else float(self.label[0])


def pack_record(label, image_bytes: bytes, record_id: int = 0, id2: int = 0) -> bytes:
    """Payload of one image record: header, optional label vector, encoded image."""
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(label), record_id, id2) + image_bytes
    vector = np.asarray(label, dtype=np.float32).ravel()
    return _HEADER.pack(len(vector), 0.0, record_id, id2) + vector.tobytes() + image_bytes


def unpack_record(payload: bytes) -> Tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the encoded image bytes."""
    if len(payload) < _HEADER.size:
        raise RecordFormatError(f"record of {len(payload)} bytes is shorter than its header")
    flag, label, rid, id2 = _HEADER.unpack_from(payload)
    start = _HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise RecordFormatError(f"record header announces {flag} labels past its end")
        label = np.frombuffer(payload[start:end], dtype=np.float32)
        start = end
    return IRHeader(flag, label, rid, id2), payload[start:]


def _frames(payload: bytes):
    """Yield (cflag, part) frames for one payload, splitting at aligned magic numbers."""
    parts, start = [], 0
    aligned_end = len(payload) - len(payload) % 4
    pos = payload.find(_MAGIC_BYTES)
    while 0 <= pos < aligned_end:
        if pos % 4 == 0:
            parts.append(payload[start:pos])
            start = pos + 4
        pos = payload.find(_MAGIC_BYTES, pos + 1)
    parts.append(payload[start:])
    if len(parts) == 1:
        yield 0, parts[0]
        return
    for i, part in enumerate(parts):
        yield (1 if i == 0 else 3 if i == len(parts) - 1 else 2), part


class RecordWriter:
    """Write a ``.rec`` and its ``.idx``, under temporary names until :meth:`commit`.

    A shard that was not committed never carries its final name, so an interrupted writer
    cannot leave a file that looks complete.

    Parameters
    ----------
    rec_path : str
        Final path of the ``.rec`` file; the ``.idx`` goes beside it.
    """

    def __init__(self, rec_path: str):
        self.rec_path = rec_path
        self.idx_path = os.path.splitext(rec_path)[0] + ".idx"
        self._tmp_rec = rec_path + ".tmp"
        self._tmp_idx = self.idx_path + ".tmp"
        self._rec = open(self._tmp_rec, "wb")
        self._idx = open(self._tmp_idx, "w")
        self.count = 0

    def write(self, payload: bytes, key: Optional[int] = None) -> int:
        """Append one record; returns its key (default: running count)."""
        key = self.count if key is None else key
        offset = self._rec.tell()
        for cflag, part in _frames(payload):
            self._rec.write(_LREC.pack(MAGIC, (cflag << 29) | len(part)))
            self._rec.write(part)
            self._rec.write(b"\0" * (-len(part) % 4))
        self._idx.write(f"{key}\t{offset}\n")
        self.count += 1
        return key

    def commit(self):
        """Flush, fsync and rename both files to their final names (.idx last)."""
        for handle in (self._rec, self._idx):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self):
        """Close and delete the temporary files."""
        for handle, path in ((self._rec, self._tmp_rec), (self._idx, self._tmp_idx)):
            handle.close()
            if os.path.exists(path):
                os.remove(path)


def read_index(idx_path: str) -> np.ndarray:
    """Byte offsets of an ``.idx`` file, in file order, as int64."""
    offsets = []
    with open(idx_path) as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split("\t")
            if len(fields) != 2:
                raise RecordFormatError(f"{idx_path}:{line_no}: expected 'key<TAB>offset', "
                                        f"got {line.rstrip()!r}")
            offsets.append(int(fields[1]))
    return np.asarray(offsets, dtype=np.int64)


class RecordFile:
    """Random access to the records of one ``.rec`` through its ``.idx``.

    The file is opened lazily in the process that reads, so instances can be shared with
    forked workers. A file that ends before the last record its index lists is refused
    (:class:`RecordFormatError`) unless ``check_end`` is False (``recordio_tools check``
    reports such records one by one).
    """

    def __init__(self, rec_path: str, idx_path: Optional[str] = None, check_end: bool = True):
        self.rec_path = rec_path
        self.idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
        if not os.path.isfile(rec_path):
            raise ShardNotFoundError(f"record file not found: {rec_path}")
        if not os.path.isfile(self.idx_path):
            raise MissingIndexError(
                f"index file {self.idx_path} is missing for {rec_path}; build it with: "
                f"python -m recordio_tools index {rec_path}")
        self.offsets = read_index(self.idx_path)
        self.size = os.path.getsize(rec_path)
        self._handle = None
        self._pid = None
        if check_end:
            self._check_end()

    def _check_end(self):
        """Refuse a ``.rec`` that ends before the last record its index lists (a copy or
        download cut short). Reads only that record's part headers (8 bytes each): every
        rank opens every shard."""
        if not len(self.offsets):
            return
        last = int(self.offsets.max())
        problem = _record_end_problem(self.rec_path, last, self.size)
        if problem is None:
            return
        if problem != "truncated":
            raise RecordFormatError(
                f"{self.rec_path}: the last record its index lists is unreadable ({problem}); "
                f"is {self.idx_path} the index of another file? Rebuild it with: python -m "
                f"recordio_tools index {self.rec_path}")
        beyond = int(np.sum(self.offsets + _LREC.size > self.size))
        raise RecordFormatError(
            f"{self.rec_path} is truncated: its index lists {len(self.offsets)} records but "
            f"the file ends at byte {self.size}{f', before {beyond} of them' if beyond else ''} "
            f"(an interrupted copy? copy or pack it again)")

    def __len__(self):
        return len(self.offsets)

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._handle

    def read_at(self, offset: int) -> bytes:
        """Payload of the record starting at byte ``offset`` (parts joined)."""
        handle = self._file()
        handle.seek(offset)
        chunks = []
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise RecordFormatError(f"{self.rec_path}: truncated record header at byte "
                                        f"{handle.tell() - len(head)}")
            magic, lrec = _LREC.unpack(head)
            if magic != MAGIC:
                raise RecordFormatError(f"{self.rec_path}: no record at byte "
                                        f"{handle.tell() - 8} (bad magic)")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            data = handle.read(length)
            if len(data) < length:
                raise RecordFormatError(f"{self.rec_path}: record at byte {offset} runs past "
                                        f"the end of the file (truncated shard)")
            handle.seek(-length % 4, os.SEEK_CUR)
            if (cflag in (0, 1)) != (not chunks):
                raise RecordFormatError(f"{self.rec_path}: bad continuation flag {cflag} in "
                                        f"the record at byte {offset}")
            chunks.append(data)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(chunks)

    def read(self, index: int) -> bytes:
        """Payload of the ``index``-th record of the index."""
        return self.read_at(int(self.offsets[index]))

    def class_labels(self) -> np.ndarray:
        """The class label of every record, reading only the record headers (a few dozen
        bytes each, no image data)."""
        handle = self._file()
        labels = np.empty(len(self.offsets), dtype=np.float64)
        for n, offset in enumerate(self.offsets):
            handle.seek(int(offset))
            head = handle.read(_LREC.size + _HEADER.size + 4)
            if len(head) < _LREC.size + _HEADER.size or _LREC.unpack_from(head)[0] != MAGIC:
                raise RecordFormatError(f"{self.rec_path}: no record header at byte {offset}")
            flag, label, _, _ = _HEADER.unpack_from(head, _LREC.size)
            if flag > 0:
                if len(head) < _LREC.size + _HEADER.size + 4:
                    raise RecordFormatError(f"{self.rec_path}: truncated label at byte {offset}")
                label = struct.unpack_from("<f", head, _LREC.size + _HEADER.size)[0]
            labels[n] = label
        return labels

    def close(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state


def _record_end_problem(rec_path: str, offset: int, size: int) -> Optional[str]:
    """None when the record at ``offset`` ends inside a file of ``size`` bytes; else
    ``"truncated"`` or what is wrong with its headers. Follows the part headers only."""
    with open(rec_path, "rb") as handle:
        position, first = offset, True
        while True:
            handle.seek(position)
            head = handle.read(_LREC.size)
            if len(head) < _LREC.size:
                return "truncated"
            magic, lrec = _LREC.unpack(head)
            if magic != MAGIC:
                return f"bad magic at byte {position}"
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if (cflag in (0, 1)) != first:
                return f"bad continuation flag {cflag} at byte {position}"
            position += _LREC.size + length + (-length % 4)
            if position - (-length % 4) > size:
                return "truncated"
            if cflag in (0, 3):
                return None
            first = False


def rebuild_index(rec_path: str, idx_path: Optional[str] = None) -> int:
    """Scan a ``.rec`` and write its ``.idx`` (keys are record numbers); returns the count.
    Nothing is written when the scan fails."""
    if not rec_path.endswith(".rec"):
        raise RecordFormatError(f"{rec_path} is not a .rec file")
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    with open(rec_path, "rb") as rec:
        starts = _record_starts(rec, rec_path, os.path.getsize(rec_path))
    tmp = f"{idx_path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as out:
            out.writelines(f"{n}\t{start}\n" for n, start in enumerate(starts))
        os.replace(tmp, idx_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(starts)


def _record_starts(rec, rec_path: str, size: int) -> List[int]:
    """Byte offsets of the records of an open ``.rec`` file, read from its part headers."""
    starts, offset, record_start = [], 0, 0
    while offset < size:
        head = rec.read(8)
        if len(head) < 8:
            raise RecordFormatError(f"{rec_path}: truncated header at byte {offset}")
        magic, lrec = _LREC.unpack(head)
        if magic != MAGIC:
            raise RecordFormatError(f"{rec_path}: bad magic at byte {offset} (not a RecordIO "
                                    f"file, or damaged there)")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if cflag in (0, 1):
            record_start = offset
        offset += 8 + length + (-length % 4)
        if offset > size:
            raise RecordFormatError(f"{rec_path}: record at byte {record_start} runs past "
                                    f"the end of the file (truncated)")
        rec.seek(offset)
        if cflag in (0, 3):
            starts.append(record_start)
    return starts


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file (manifest and checkpoint checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_classes_file(path: str) -> List[Tuple[str, str]]:
    """The packer's ``PREFIX.classes.tsv`` (``index<TAB>class id<TAB>name``) as a list of
    ``(class id, name)`` in label order."""
    rows = []
    for line_no, line in enumerate(read_text(path, "classes").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise RecordFormatError(f"{path}:{line_no}: expected 'index<TAB>class id<TAB>name' "
                                    f"(a classes file written by pack), got "
                                    f"{line.strip()[:60]!r}")
        name = fields[2] if len(fields) > 2 else fields[1]
        rows.append((int(fields[0]), fields[1], name))
    if not rows:
        raise RecordFormatError(f"{path} lists no classes")
    rows.sort()
    if [i for i, _, _ in rows] != list(range(len(rows))):
        raise RecordFormatError(f"{path}: class indices are not 0..{len(rows) - 1}")
    return [(cid, name) for _, cid, name in rows]


def shard_name(prefix: str, index: int, total: int, ext: str = ".rec") -> str:
    """``PREFIX-00003-of-00008.rec``."""
    return f"{prefix}-{index:05d}-of-{total:05d}{ext}"


_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.(rec|idx|json|rec\.tmp|idx\.tmp)$")


class ShardSetError(UserError, ValueError):
    """Shard files that do not form one complete set (stray, mixed or missing shards)."""


def shard_prefix(path: str) -> Optional[str]:
    """``/data/train`` for ``/data/train-00003-of-00008.rec`` (also its .idx/.json); None for
    a file that is not named as a shard."""
    match = _SHARD_RE.search(path)
    return path[:match.start()] if match else None


def shard_numbers(path: str) -> Tuple[int, int]:
    """``(3, 8)`` for ``PREFIX-00003-of-00008.rec`` (also its .idx/.json)."""
    match = _SHARD_RE.search(path)
    if match is None:
        raise ValueError(f"{path} is not named as a shard (PREFIX-xxxxx-of-yyyyy.rec)")
    return int(match.group(1)), int(match.group(2))


def set_files(prefix: str) -> List[str]:
    """Every file of the shard sets named ``prefix`` on disk, whatever their count: shards,
    indexes, per-shard stats and unfinished temporaries (not the manifest)."""
    return sorted(p for p in glob.glob(glob.escape(prefix) + "-*-of-*")
                  if shard_prefix(p) == prefix)


def resolve_shards(spec: Union[str, Sequence[str]]) -> List[str]:
    """Turn a user's shard spec into the sorted list of ``.rec`` paths.

    Accepted: a ``.rec`` file (one shard, e.g. im2rec output), a shard prefix
    (``/data/train`` for ``/data/train-*-of-*.rec``), a glob, a directory holding shards, or a
    list of any of these. Shards named ``PREFIX-xxxxx-of-yyyyy.rec`` must form complete sets:
    where ``PREFIX.manifest.json`` exists, exactly the shards it lists; without a manifest, one
    count ``yyyyy`` and every number below it.

    Raises
    ------
    FileNotFoundError
        Nothing matches ``spec``.
    ShardSetError
        A set is incomplete, holds shards its manifest does not list (left by an earlier pack
        of the same prefix), or mixes counts.
    """
    if not isinstance(spec, str):
        paths = []
        for item in spec:
            paths.extend(resolve_shards(item))
        return paths
    if os.path.isfile(spec):
        if not spec.endswith(".rec"):
            raise ShardSetError(f"{spec} is not a .rec file (give the .rec of a shard, or the "
                                f"shard prefix)")
        return [spec]
    if os.path.isdir(spec):
        candidates = sorted(glob.glob(os.path.join(glob.escape(spec), "*.rec")))
        _check_one_set_in_folder(spec, candidates)
    elif glob.has_magic(spec):
        candidates = sorted(p for p in glob.glob(spec) if p.endswith(".rec"))
    else:
        candidates = [p for p in set_files(spec) if p.endswith(".rec")]
        if not candidates and os.path.isfile(spec + ".rec"):
            candidates = [spec + ".rec"]
    if not candidates:
        raise ShardNotFoundError(f"no RecordIO files match {spec!r} (give a .rec file, a shard "
                                f"prefix such as /data/train for train-00000-of-00008.rec, a "
                                f"glob, or a directory)")
    sets = {}
    for path in candidates:
        sets.setdefault(shard_prefix(path), []).append(path)
    for prefix, paths in sets.items():
        if prefix is not None:
            _check_shard_set(spec, prefix, paths)
    return candidates


def _check_one_set_in_folder(folder: str, paths: List[str]):
    """A folder stands for the one shard set it holds; several (train and val, or two packs)
    would be read as one, so they are refused."""
    names = sorted({os.path.basename(shard_prefix(p) or p) for p in paths})
    if len(names) > 1:
        raise ShardSetError(f"{folder} holds {len(names)} shard sets ({_first(names, 5)}); "
                            f"give the prefix of one, e.g. "
                            f"{os.path.join(folder, names[0])}")


def _check_shard_set(spec: str, prefix: str, paths: List[str]):
    """Raise :class:`ShardSetError` unless ``paths`` are exactly one complete set."""
    name = os.path.basename(prefix)
    manifest = prefix + ".manifest.json"
    if os.path.isfile(manifest):
        listed = _manifest_shards(manifest)
        stray = sorted(os.path.basename(p) for p in paths if os.path.basename(p) not in listed)
        if stray:
            raise ShardSetError(
                f"{spec!r}: {len(stray)} shard(s) of {name} are not in its manifest "
                f"{manifest}: {_first(stray)}. They are left from another pack of the same "
                f"prefix (with another --shards count?): delete them, or pack again with "
                f"--overwrite")
        present = {os.path.basename(p) for p in paths}
        missing = sorted(listed - present)
        if missing:
            raise ShardSetError(f"{spec!r}: {len(listed) - len(missing)} of {len(listed)} "
                                f"shards present; missing {_first(missing)}, listed in "
                                f"{os.path.basename(manifest)} (an interrupted copy or pack? "
                                f"copy or pack them again)")
        return
    counts = {}
    for path in paths:
        counts.setdefault(shard_numbers(path)[1], []).append(path)
    if len(counts) > 1:
        kinds = ", ".join(f"{len(v)} file(s) -of-{n:05d}" for n, v in sorted(counts.items()))
        raise ShardSetError(f"{spec!r}: the shards of {name} are from packs with different "
                            f"counts ({kinds}) and there is no {os.path.basename(manifest)} to "
                            f"say which is current: delete the stale set")
    expected = next(iter(counts))
    if len(paths) != expected:
        present = {shard_numbers(p)[0] for p in paths}
        missing = sorted(set(range(expected)) - present)
        raise ShardSetError(f"{spec!r}: {len(paths)} of {expected} shards present; missing "
                            f"shard numbers {missing[:5]} (an interrupted pack? re-run it)")


def _first(names: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def _manifest_shards(path: str) -> set:
    """The ``.rec`` names a manifest lists; :class:`ShardSetError` when it is unreadable."""
    try:
        with open(path) as handle:
            return {shard["rec"] for shard in json.load(handle)["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ShardSetError(f"{path} is unreadable ({type(err).__name__}: {err}); pack the "
                            f"set again, or delete the manifest to use the shards as they "
                            f"are") from None


class ShardSet:
    """Several record files seen as one sequence; global index -> (shard, record).

    Parameters
    ----------
    spec : str or list of str
        Anything :func:`resolve_shards` accepts.
    """

    def __init__(self, spec):
        self.paths = resolve_shards(spec)
        self.files = [RecordFile(p) for p in self.paths]
        self.starts = np.cumsum([0] + [len(f) for f in self.files]).tolist()

    def __len__(self):
        return self.starts[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """``(shard number, record number inside the shard)`` of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside 0..{len(self) - 1}")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def read(self, index: int) -> bytes:
        """Payload of the record at global ``index``."""
        shard, local = self.locate(index)
        return self.files[shard].read(local)

    def describe(self, index: int) -> str:
        """Human-readable location, e.g. ``train-00001-of-00004.rec record 17``."""
        shard, local = self.locate(index)
        return f"{os.path.basename(self.paths[shard])} record {local}"

    def shard_sizes(self) -> List[int]:
        return [len(f) for f in self.files]

    def label_range(self) -> Tuple[float, float]:
        """``(smallest, largest)`` class label of the set: from the packer's manifest for the
        shards it lists (each manifest read once), else from the record headers."""
        low, high = float("inf"), float("-inf")
        manifests = {}
        for path, records in zip(self.paths, self.files):
            manifest = find_manifest(path)
            if manifest is not None and manifest not in manifests:
                manifests[manifest] = _read_manifest_classes(manifest)
            listed, per_class = manifests.get(manifest) or (set(), None)
            if per_class is not None and os.path.basename(path) in listed:
                present = np.flatnonzero(np.asarray(per_class) > 0)
                if len(present):
                    low, high = min(low, float(present[0])), max(high, float(present[-1]))
            elif len(records):
                labels = records.class_labels()
                low, high = min(low, float(labels.min())), max(high, float(labels.max()))
        return low, high


def find_manifest(rec_path: str) -> Optional[str]:
    """``PREFIX.manifest.json`` of a shard ``PREFIX-xxxxx-of-yyyyy.rec``, if present."""
    prefix = shard_prefix(rec_path) or rec_path[:-4]
    path = prefix + ".manifest.json"
    return path if os.path.isfile(path) else None


def _read_manifest_classes(path: str):
    """``(names of the shards listed, per-class record counts)`` of a manifest, or None when
    it cannot be read."""
    try:
        with open(path) as handle:
            manifest = json.load(handle)
        return {shard["rec"] for shard in manifest["shards"]}, manifest["per_class"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
