"""RecordIO shards: pack -> check -> read round trips, compatibility with MXNet's readers,
resume of an interrupted pack, and detection of broken shards."""
import json
import os
import struct

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from recordio_tools import check as check_mod
from recordio_tools.__main__ import main as tools_main
from recordio_tools.pack import pack
from recordio_tools.sources import read_classes, scan_tree
from resnest_gluon.data.recordio import (
    MAGIC,
    MissingIndexError,
    RecordFile,
    RecordWriter,
    ShardSet,
    pack_record,
    rebuild_index,
    resolve_shards,
    unpack_record,
)


def _pack_tree(tree, prefix, **kw):
    items, classes = scan_tree(tree)
    return pack(items, classes, prefix, workers=kw.pop("workers", 1), progress=False, **kw)


def test_pack_check_read_round_trip_on_real_photos(photo_tree, tmp_path):
    prefix = str(tmp_path / "out" / "train")
    manifest = _pack_tree(photo_tree, prefix, num_shards=4)
    assert manifest["records"] == 15 and manifest["num_shards"] == 4
    assert manifest["per_class"] == [5, 5, 5]
    assert tools_main(["check", prefix, "--quiet"]) == 0
    shards = ShardSet(prefix)
    assert len(shards) == 15 and shards.shard_sizes() == [3, 4, 4, 4]
    # every record holds the original file's bytes (no re-encode) and its label
    lst = {int(row.split("\t")[0]): row.rstrip("\n").split("\t") for row in open(prefix + ".lst")}
    seen = set()
    for index in range(len(shards)):
        header, image = unpack_record(shards.read(index))
        _, label, path = lst[header.id]
        assert image == open(path, "rb").read()
        assert header.label == float(label) == float(path.split(os.sep)[-2][1:])
        seen.add(header.id)
    assert seen == set(range(15))
    assert read_classes(prefix + ".classes.tsv") == ["c0", "c1", "c2"]


def test_resize_option_reencodes_shorter_side(photo_tree, tmp_path):
    prefix = str(tmp_path / "small")
    _pack_tree(photo_tree, prefix, num_shards=1, resize=100, quality=80)
    header, image = unpack_record(ShardSet(prefix).read(0))
    assert Image.open(__import__("io").BytesIO(image)).size == (133, 100)


def test_mxnet_readers_read_our_shards(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    _pack_tree(photo_tree, prefix, num_shards=2, shuffle=False)
    rec = prefix + "-00001-of-00002.rec"
    reader = mx.recordio.MXIndexedRecordIO(rec[:-4] + ".idx", rec, "r")
    ours = RecordFile(rec)
    for i in range(len(ours)):
        assert reader.read_idx(i) == ours.read(i)
    it = mx.io.ImageRecordIter(path_imgrec=rec, data_shape=(3, 64, 64), batch_size=4, resize=64)
    batch = next(iter(it))
    assert batch.data[0].shape == (4, 3, 64, 64)
    expected = [unpack_record(ours.read(i))[0].label for i in range(4)]
    assert batch.label[0].asnumpy().tolist() == expected
    dataset = mx.gluon.data.vision.ImageRecordDataset(rec)
    assert len(dataset) == 8 and dataset[0][0].shape == (300, 400, 3)


def test_im2rec_style_single_file_is_a_shard_list(tmp_path):
    # written by MXNet's own writer, as tools/im2rec.py does
    rec, idx = str(tmp_path / "val.rec"), str(tmp_path / "val.idx")
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
    rng = np.random.default_rng(0)
    for i in range(5):
        img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        writer.write_idx(i, mx.recordio.pack_img(mx.recordio.IRHeader(0, i % 2, i, 0), img,
                                                 quality=95))
    writer.close()
    for spec in (rec, str(tmp_path / "val"), [rec], str(tmp_path / "*.rec")):
        assert resolve_shards(spec) == [rec]
    shards = ShardSet(rec)
    header, image = unpack_record(shards.read(3))
    assert header.label == 1.0 and header.id == 3
    assert Image.open(__import__("io").BytesIO(image)).size == (50, 40)
    assert check_mod.check(rec, num_classes=2, progress=False)[0] == []


def test_payload_containing_the_magic_number(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payloads = [magic * 3 + b"abc", b"x" * 4 + magic + b"y" * 9 + magic, b"ab" + magic + b"cd",
                b"plain"]
    writer = RecordWriter(str(tmp_path / "m.rec"))
    for p in payloads:
        writer.write(p)
    writer.commit()
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "m.idx"), str(tmp_path / "m.rec"), "r")
    ours = RecordFile(str(tmp_path / "m.rec"))
    for i, p in enumerate(payloads):
        assert ours.read(i) == p
        assert reader.read_idx(i) == p
    os.remove(tmp_path / "m.idx")
    assert rebuild_index(str(tmp_path / "m.rec")) == 4
    assert [RecordFile(str(tmp_path / "m.rec")).read(i) for i in range(4)] == payloads


def test_label_vectors_round_trip():
    header, image = unpack_record(pack_record([1.0, 2.5, 3.0], b"img", record_id=7))
    assert header.flag == 3 and header.id == 7 and image == b"img"
    np.testing.assert_array_equal(header.label, [1.0, 2.5, 3.0])


def test_interrupted_pack_finishes_missing_shards_only(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    _pack_tree(photo_tree, prefix, num_shards=3)
    names = [f"{prefix}-0000{i}-of-00003" for i in range(3)]
    mtimes = {n: os.path.getmtime(n + ".rec") for n in names}
    checksum = json.load(open(prefix + ".manifest.json"))["shards"][1]["rec_sha256"]
    # shard 1 "was being written" when the pack died: only temp files exist
    os.rename(names[1] + ".rec", names[1] + ".rec.tmp")
    os.remove(names[1] + ".json")
    with pytest.raises(ValueError, match="2 of 3 shards"):
        resolve_shards(prefix)
    manifest = _pack_tree(photo_tree, prefix, num_shards=3)
    assert os.path.getmtime(names[0] + ".rec") == mtimes[names[0]]
    assert os.path.getmtime(names[2] + ".rec") == mtimes[names[2]]
    assert manifest["shards"][1]["rec_sha256"] == checksum      # same bytes as before
    assert manifest["records"] == 15
    assert not os.path.exists(names[1] + ".rec.tmp")
    assert check_mod.check(prefix, progress=False)[0] == []


def test_unreadable_inputs_are_skipped_and_counted(photo_tree, tmp_path):
    with open(os.path.join(photo_tree, "c1", "notes.jpg"), "w") as handle:
        handle.write("not an image")
    good = open(os.path.join(photo_tree, "c2", "img0.jpg"), "rb").read()
    with open(os.path.join(photo_tree, "c2", "cut.jpg"), "wb") as handle:
        handle.write(good[: len(good) // 3])                      # truncated JPEG
    manifest = _pack_tree(photo_tree, str(tmp_path / "train"), num_shards=2)
    assert manifest["records"] == 15
    assert sorted(os.path.basename(s["path"]) for s in manifest["skipped"]) == ["cut.jpg",
                                                                               "notes.jpg"]


def test_other_image_formats_are_accepted(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(1)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "a/x.png")
    Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(root / "a/g.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "b/y.bmp")
    Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "CMYK").save(
        root / "b/cmyk.jpg")
    manifest = _pack_tree(str(root), str(tmp_path / "mixed"), num_shards=1)
    assert manifest["records"] == 4 and not manifest["skipped"]
    it = mx.io.ImageRecordIter(path_imgrec=str(tmp_path / "mixed-00000-of-00001.rec"),
                               data_shape=(3, 30, 30), batch_size=4)
    assert next(iter(it)).data[0].shape == (4, 3, 30, 30)


def test_validation_layout_with_label_file_and_train_classes(photo_tree, tmp_path):
    train = str(tmp_path / "train")
    _pack_tree(photo_tree, train, num_shards=1)
    flat = tmp_path / "val"
    flat.mkdir()
    lines = []
    for c in (2, 0):
        src = os.path.join(photo_tree, f"c{c}", "img1.jpg")
        name = f"ILSVRC2012_val_{c:08d}.JPEG"
        (flat / name).write_bytes(open(src, "rb").read())
        lines.append(f"{os.path.splitext(name)[0]},c{c} 1 2 3 4")
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" +
                                                   "\n".join(lines) + "\n")
    rc = tools_main(["pack", str(flat), str(tmp_path / "valrec"), "--labels",
                     str(tmp_path / "LOC_val_solution.csv"), "--classes",
                     train + ".classes.tsv", "--shards", "1", "--quiet", "--workers", "1"])
    assert rc == 0
    labels = sorted(unpack_record(ShardSet(str(tmp_path / "valrec")).read(i))[0].label
                    for i in range(2))
    assert labels == [0.0, 2.0]
    assert json.load(open(str(tmp_path / "valrec.manifest.json")))["num_classes"] == 3


def test_lst_source(photo_tree, tmp_path):
    lst = tmp_path / "list.lst"
    lst.write_text("0\t1\tc0/img0.jpg\n1\t0\tc1/img0.jpg\n")
    assert tools_main(["pack", str(lst), str(tmp_path / "fromlst"), "--root", photo_tree,
                       "--quiet", "--workers", "1"]) == 0
    assert len(ShardSet(str(tmp_path / "fromlst"))) == 2


def test_check_detects_truncated_shard_and_bad_labels(photo_tree, tmp_path, capsys):
    prefix = str(tmp_path / "train")
    _pack_tree(photo_tree, prefix, num_shards=2)
    rec = prefix + "-00001-of-00002.rec"
    size = os.path.getsize(rec)
    with open(rec, "r+b") as handle:
        handle.truncate(size - 5000)
    assert tools_main(["check", prefix, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "train-00001-of-00002.rec record" in out and "truncated" in out
    assert "checksum differs" in out
    problems, _ = check_mod.check(prefix + "-00000-of-00002.rec", num_classes=2, progress=False,
                                  checksums=False)
    assert any("outside [0, 2)" in p for p in problems)


def test_missing_index_names_the_file_and_the_fix(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    _pack_tree(photo_tree, prefix, num_shards=1)
    os.remove(prefix + "-00000-of-00001.idx")
    with pytest.raises(MissingIndexError, match="recordio_tools index"):
        ShardSet(prefix)
    assert tools_main(["index", prefix + "-00000-of-00001.rec"]) == 0
    assert len(ShardSet(prefix)) == 15


def test_inspect_writes_contact_sheet(photo_tree, tmp_path, capsys):
    prefix = str(tmp_path / "train")
    _pack_tree(photo_tree, prefix, num_shards=2)
    sheet = str(tmp_path / "sheet.png")
    assert tools_main(["inspect", prefix, "--sheet", sheet, "--samples", "6"]) == 0
    out = capsys.readouterr().out
    assert "15 records in 2 shard(s)" in out and "width: min 400" in out
    assert Image.open(sheet).size == (3 * 160, 2 * 174)


def test_nothing_matches_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no RecordIO files match"):
        resolve_shards(str(tmp_path / "nothing"))
