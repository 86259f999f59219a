"""Corrupt data as an explicit budget (issue case 6): a truncated shard is refused at start,
unreadable training records beyond ``data.max_bad_fraction`` stop the run naming the shards,
and verify never scores a substituted image."""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import pytest
from runs import ROOT, TRAIN, newest_meta, tiny

from resnest_gluon import get_model
from resnest_gluon.data import RecordWriter, ShardSet, pack_record, unpack_record
from resnest_gluon.data.recordio import shard_name

VERIFY = os.path.join(ROOT, "scripts", "verify.py")


def _copy_set(source, prefix, shards, garbage=(), drop=()):
    """Write the records of ``source`` into ``shards`` new shards (no manifest): records in
    ``garbage`` keep their label but lose their image, records in ``drop`` are left out."""
    records = ShardSet(source)
    kept = [i for i in range(len(records)) if i not in drop]
    for s in range(shards):
        writer = RecordWriter(shard_name(prefix, s, shards))
        for i in kept[s * len(kept) // shards:(s + 1) * len(kept) // shards]:
            header, image = unpack_record(records.read(i))
            writer.write(pack_record(header.label, b"garbage" if i in garbage else image))
        writer.commit()
    return prefix


def _run(args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_unreadable_training_records_beyond_the_budget_stop_the_run(digits, tmp_path):
    train = _copy_set(digits[0], str(tmp_path / "bad"), 2, garbage={60, 70, 80})
    stopped = _run([TRAIN, "--workdir", str(tmp_path / "run"),
                    *tiny((train, digits[1]), "train.epochs=1")])
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert "unreadable training records in epoch 1, more than the 0 that " \
           "data.max_bad_fraction=0.001 allows for 96 records" in last
    assert "bad-00001-of-00002.rec" in last and "bad-00000" not in last
    assert not os.path.exists(tmp_path / "run" / "final.params")
    # within the budget the run goes on, warns, and records the count
    done = _run([TRAIN, "--workdir", str(tmp_path / "run2"),
                 *tiny((train, digits[1]), "train.epochs=1", "data.max_bad_fraction=0.05")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1: 3 unreadable training records skipped" in done.stderr
    steps = [json.loads(line) for line in open(tmp_path / "run2" / "metrics.jsonl")]
    assert [r["unreadable"] for r in steps if r["kind"] == "step"][-1] == 3


def test_a_truncated_shard_is_refused_before_the_first_step(digits, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for path in os.listdir(os.path.dirname(digits[0])):
        if path.startswith("train"):
            shutil.copy(os.path.join(os.path.dirname(digits[0]), path), folder)
    rec = folder / "train-00001-of-00002.rec"
    os.truncate(rec, os.path.getsize(rec) // 2)
    done = _run([TRAIN, "--workdir", str(tmp_path / "run"),
                 *tiny((str(folder / "train"), digits[1]))])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "train-00001-of-00002.rec is truncated: its index lists 48 records" in last
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "w.params")
    net = get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier())
    net.save_parameters(path)
    return path


def _verify(weights, val, *extra):
    return _run([VERIFY, "--model", "resnest14", "--num-classes", "10", "--params", weights,
                 "--rec-val", val, "--size", "32", "--crop-ratio", "1", "--workers", "1",
                 "--batch-size", "8", *extra])


def test_verify_refuses_unreadable_records_unless_allowed_and_never_scores_them(
        digits, weights, tmp_path):
    val = _copy_set(digits[1], str(tmp_path / "val"), 1, garbage={5})
    refused = _verify(weights, val, "--json")
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "1 of 37 validation records are unreadable" in last and "val-00000-of-00001.rec" \
        in last and "Traceback" not in refused.stderr
    allowed = _verify(weights, val, "--json", "--allow-bad-records")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    result = json.loads(allowed.stdout)
    assert (result["images"], result["unreadable"]) == (36, 1)
    # the score is that of the 36 readable images alone: nothing stood in for the bad one
    clean = _copy_set(digits[1], str(tmp_path / "clean"), 1, drop={5})
    reference = json.loads(_verify(weights, clean, "--json").stdout)
    assert reference["images"] == 36
    assert round(result["top1"] * 36) == round(reference["top1"] * 36)
    assert round(result["top5"] * 36) == round(reference["top5"] * 36)
    text = _verify(weights, val, "--allow-bad-records").stdout
    assert "on 36 images (1 of 37 records unreadable, left out)" in text


def test_unreadable_validation_records_stop_training_but_keep_the_epoch(digits, tmp_path):
    val = _copy_set(digits[1], str(tmp_path / "val"), 1, garbage={5})
    workdir = tmp_path / "run"
    stopped = _run([TRAIN, "--workdir", str(workdir), *tiny((digits[0], val), "train.epochs=2")])
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert "1 of 37 validation records are unreadable (more than the 0 allowed)" in last
    assert "val-00000-of-00001.rec" in last
    assert newest_meta(workdir)["global_step"] == 6          # epoch 1's training is kept
    # within the budget the relaunch goes on from there; the score leaves the record out
    done = _run([TRAIN, "--workdir", str(workdir),
                 *tiny((digits[0], val), "train.epochs=2", "data.max_bad_fraction=0.05")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and "val top-1" in done.stderr
    assert "on 36 images" in done.stderr or "(36 images)" in done.stderr
