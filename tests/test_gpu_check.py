"""The prepared GPU check, run here with --cpu-smoke: its shards, runs, verification, table
and verdict work end to end, so that the one run on a lent GPU machine is not its first."""
import os
import subprocess
import sys

from runs import ROOT

from resnest_gluon.commands.gpu_check import problems


def test_the_gpu_check_runs_end_to_end_on_a_cpu(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"),
                           "--cpu-smoke", "--steps", "4", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and
            "precision" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| float32", "batch_dot"], ["| float32", "broadcast_mul"],
        ["| bfloat16", "batch_dot"], ["| bfloat16", "broadcast_mul"]]
    assert all(row.rstrip(" |").endswith("24") for row in rows)      # every val image


def test_the_verdict_names_each_problem():
    good = dict(dtype="float32", product="batch_dot", error=None, first_loss=2.3,
                last_loss=2.1, eval_images=24)
    assert problems([good, dict(good, product="broadcast_mul")], 24) == []
    found = problems([good, dict(good, product="broadcast_mul", first_loss=2.5,
                                 eval_images=23),
                      dict(good, dtype="float16", error="exit 1: boom")], 24)
    assert found == ["float16/batch_dot: exit 1: boom",
                     "float32/broadcast_mul: evaluated 23 of 24 images",
                     "float32: the products disagree on the first loss (2.300000 vs 2.500000)"]
