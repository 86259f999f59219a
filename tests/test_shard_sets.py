"""Shard sets are defined by their manifest: a second pack of the same prefix cannot double the
data (issue case 2), and readers refuse stray or mixed shards instead of reading them."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from runs import ROOT

from recordio_tools.__main__ import main as tools_main
from resnest_gluon.data.recordio import ShardSet, ShardSetError, resolve_shards


def _pack(tree, prefix, *extra):
    return tools_main(["pack", tree, prefix, "--quiet", "--workers", "1", *extra])


def _set_files(prefix):
    return sorted(os.path.basename(p) for p in glob.glob(prefix + "*"))


def test_packing_again_with_another_count_is_refused_and_overwrite_replaces(photo_tree,
                                                                            tmp_path, caplog):
    prefix = str(tmp_path / "train")
    assert _pack(photo_tree, prefix, "--shards", "2") == 0
    before = {name: os.path.getmtime(os.path.join(tmp_path, name))
              for name in _set_files(prefix)}
    done = subprocess.run([sys.executable, "-m", "recordio_tools", "pack", photo_tree, prefix,
                           "--shards", "3", "--quiet", "--workers", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "already holds a set of 2 shard(s)" in done.stderr and "--overwrite" in done.stderr
    # nothing was written: the old set is whole and alone
    assert {name: os.path.getmtime(os.path.join(tmp_path, name))
            for name in _set_files(prefix)} == before
    assert len(ShardSet(prefix)) == 15

    assert _pack(photo_tree, prefix, "--shards", "3", "--overwrite") == 0
    assert not [n for n in _set_files(prefix) if "-of-00002" in n]
    assert len(resolve_shards(prefix)) == 3 and len(ShardSet(prefix)) == 15


def test_stray_shards_beside_a_manifest_are_refused_by_name(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    assert _pack(photo_tree, str(tmp_path / "old" / "train"), "--shards", "3") == 0
    assert _pack(photo_tree, prefix, "--shards", "2") == 0
    # what an older pack with another count left behind (the case before --overwrite)
    for path in glob.glob(str(tmp_path / "old" / "train-*-of-00003.*")):
        shutil.copy(path, tmp_path)
    with pytest.raises(ShardSetError, match=r"3 shard\(s\) of train are not in its manifest"):
        ShardSet(prefix)
    # the readers' CLI says the same in one line, exit 2
    done = subprocess.run([sys.executable, "-m", "recordio_tools", "inspect", prefix],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "train-00000-of-00003.rec" in done.stderr and "not in its manifest" in done.stderr


def test_without_a_manifest_mixed_counts_are_refused(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    assert _pack(photo_tree, str(tmp_path / "a" / "train"), "--shards", "2") == 0
    assert _pack(photo_tree, str(tmp_path / "b" / "train"), "--shards", "3") == 0
    for folder in ("a", "b"):
        for path in glob.glob(str(tmp_path / folder / "train-*-of-*.*")):
            shutil.copy(path, tmp_path)
    with pytest.raises(ShardSetError, match=r"2 file\(s\) -of-00002, 3 file\(s\) -of-00003"):
        ShardSet(prefix)
    for path in glob.glob(prefix + "-*-of-00003.*"):
        os.remove(path)
    assert len(ShardSet(prefix)) == 15


def test_a_prefix_reads_only_its_own_set(photo_tree, tmp_path):
    assert _pack(photo_tree, str(tmp_path / "train"), "--shards", "2") == 0
    assert _pack(photo_tree, str(tmp_path / "train-extra"), "--shards", "1") == 0
    assert [os.path.basename(p) for p in resolve_shards(str(tmp_path / "train"))] == [
        "train-00000-of-00002.rec", "train-00001-of-00002.rec"]


def test_a_manifest_that_lists_a_missing_shard_is_refused(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    assert _pack(photo_tree, prefix, "--shards", "2") == 0
    with open(prefix + ".manifest.json") as handle:
        manifest = json.load(handle)
    manifest["shards"].append(dict(manifest["shards"][-1], rec="train-00002-of-00002.rec"))
    with open(prefix + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(ShardSetError, match="2 of 3 shards present; missing "
                                            "train-00002-of-00002.rec"):
        ShardSet(prefix)


def test_a_folder_stands_for_one_set_only(photo_tree, tmp_path):
    folder = tmp_path / "data"
    assert _pack(photo_tree, str(folder) + "/", "--shards", "2") == 0
    assert len(ShardSet(str(folder))) == 15
    assert _pack(photo_tree, str(folder / "again"), "--shards", "1") == 0
    with pytest.raises(ShardSetError, match=r"holds 2 shard sets \(again, tree\); give the "
                                            r"prefix of one"):
        ShardSet(str(folder))


def test_index_writes_nothing_when_the_scan_fails(photo_tree, tmp_path):
    prefix = str(tmp_path / "train")
    assert _pack(photo_tree, prefix, "--shards", "1") == 0
    rec = prefix + "-00000-of-00001.rec"
    os.remove(prefix + "-00000-of-00001.idx")
    os.truncate(rec, os.path.getsize(rec) - 100)
    assert tools_main(["index", rec]) == 2
    assert tools_main(["index", prefix + ".manifest.json"]) == 2
    assert not [n for n in os.listdir(tmp_path) if ".idx" in n]
