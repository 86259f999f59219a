"""Evaluation: a persistent loader scores every evaluation alike with the same workers, and
per-class accuracy ranks float16 logits in float32 (float16 indices stop being exact at 2048)."""
import mxnet as mx
import numpy as np

from resnest_gluon import get_model
from resnest_gluon.data import RecordWriter, ShardSet, pack_record, unpack_record
from resnest_gluon.data.recordio import shard_name
from resnest_gluon.models import resolve_eval_settings
from resnest_gluon.training.dist import SingleProcess
from resnest_gluon.training.evaluate import eval_loader, evaluate

SETTINGS = resolve_eval_settings("resnest14", size=32, crop_ratio=1.0)


def _relabelled(source, prefix, label_of, garbage=()):
    """The records of ``source`` in one new shard, labelled ``label_of(i)``; records in
    ``garbage`` lose their image."""
    records = ShardSet(source)
    writer = RecordWriter(shard_name(prefix, 0, 1))
    for i in range(len(records)):
        _, image = unpack_record(records.read(i))
        writer.write(pack_record(label_of(i), b"garbage" if i in garbage else image))
    writer.commit()
    return ShardSet(prefix)


def test_a_persistent_eval_loader_scores_each_evaluation_like_a_fresh_one(digits, tmp_path):
    _, val = digits
    shards = _relabelled(val, str(tmp_path / "val"), lambda i: float(i % 10), garbage={5})
    net = get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier())
    dist = SingleProcess()
    args = (net, shards, dist, SETTINGS, 8, 2, 10, mx.cpu())
    fresh = evaluate(*args, per_class=True, max_unreadable=1)
    assert (fresh["images"], fresh["unreadable"]) == (36, 1)
    with eval_loader(shards, dist, SETTINGS, 8, 2, 10, mx.cpu(), persistent=True) as loader:
        pids = None
        for _ in range(2):
            again = evaluate(*args, per_class=True, max_unreadable=1, loader=loader)
            # counts start again each evaluation: the unreadable record is met once per pass
            assert (again["images"], again["unreadable"]) == (36, 1)
            assert (again["top1"], again["top5"]) == (fresh["top1"], fresh["top5"])
            np.testing.assert_array_equal(again["per_class"], fresh["per_class"])
            now = [proc.pid for proc in loader._pool.procs]
            assert pids is None or now == pids
            pids = now


def test_per_class_accuracy_is_exact_beyond_2048_classes(digits, tmp_path):
    """A network whose float16 logits peak at each image's own label (2049, 2074, ...) scores
    every image correct, in top-1, top-5 and per class."""
    _, val = digits
    classes = 3000
    labels = [2049 + 25 * i for i in range(len(ShardSet(val)))]
    shards = _relabelled(val, str(tmp_path / "val"), lambda i: float(labels[i]))
    batch = 8
    order = iter(labels)

    def oracle(data):
        logits = np.zeros((data.shape[0], classes), np.float16)
        for row in range(data.shape[0]):
            logits[row, next(order)] = 1.0
        return mx.nd.array(logits, dtype="float16")

    result = evaluate(oracle, shards, SingleProcess(), SETTINGS, batch, 1, classes, mx.cpu(),
                      per_class=True)
    assert result["images"] == len(labels)
    assert result["top1"] == result["top5"] == 1.0
    per_class = result["per_class"]
    np.testing.assert_array_equal(per_class[labels, 0], np.ones(len(labels)))
    assert per_class[:, 1].sum() == per_class[:, 0].sum() == len(labels)
