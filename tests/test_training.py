"""The trainer end to end on real data (scikit-learn's digits as RecordIO shards): a smoke
run, a real 2-worker Horovod run, kill -9 / SIGTERM / corrupt-checkpoint resume, NaN stop,
config errors, and verify/export/predict on the result."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from runs import (
    HOROVODRUN,
    ROOT,
    assert_ranks_identical,
    newest_meta,
    tiny,
    train_cli,
    write_rank_dumper,
)

from resnest_gluon.config import load_config
from resnest_gluon.training import fit
from resnest_gluon.training.checkpoint import CheckpointManager
from resnest_gluon.training.metrics import read_metrics
from resnest_gluon.training.schedule import Schedule


def test_single_process_smoke_train(digits, tmp_path):
    config = load_config(None, tiny(digits, "train.epochs=2", "data.mixup_alpha=0.2",
                                    "train.ema_decay=0.9"))
    summary = fit(config, str(tmp_path))
    assert summary["status"] == "finished" and summary["global_step"] == 12
    assert summary["last_eval"]["images"] == 37
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "best.params", "final.params"):
        assert os.path.exists(tmp_path / name), name
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) == 12 and len(epochs) == 2
    assert all(np.isfinite(r["loss"]) for r in steps)
    # LR follows warm-up then cosine, per step, computed from the loader's 6 steps/epoch
    expected = Schedule(0.2 * 16 / 256, 6, 2, 1.0)
    assert [r["lr"] for r in steps] == pytest.approx([expected(s - 1) for s in range(1, 13)])
    assert epochs[1]["val_images"] == 37 and 0 <= epochs[1]["val_top1"] <= 1
    assert load_config(str(tmp_path / "config.yaml")).train.epochs == 2
    meta = newest_meta(tmp_path)
    assert (meta["epoch"], meta["batch"], meta["global_step"]) == (2, 0, 12)


def test_horovod_two_workers_identical_params_and_exact_eval(digits, tmp_path):
    # run through the real CLI as users do, then dump each rank's weights with a driver
    overrides = tiny(digits, "train.epochs=2")
    result = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                             os.path.join(ROOT, "scripts", "train.py"), "--workdir",
                             str(tmp_path / "run"), *overrides], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    epochs = [r for r in records if r["kind"] == "epoch"]
    # global batch 32: 96 // 32 = 3 steps per epoch on each rank
    assert [r["step"] for r in epochs] == [3, 6]
    assert all(r["val_images"] == 37 for r in epochs)      # 18 + 19, each image once
    dumper = write_rank_dumper(tmp_path)
    result = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                             dumper, str(tmp_path / "run2"), *tiny(digits, "train.epochs=1")],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_ranks_identical(tmp_path / "run2")


def test_corrupt_newest_checkpoint_falls_back(digits, tmp_path, caplog):
    fit(load_config(None, tiny(digits, "train.epochs=2")), str(tmp_path))
    newest = tmp_path / "checkpoints" / "step-00000012"
    with open(newest / "model.params", "r+b") as handle:
        handle.truncate(1000)
    manager = CheckpointManager(str(tmp_path), is_writer=False)
    folder, meta = manager.latest()
    assert folder.endswith("step-00000006") and meta["global_step"] == 6
    assert "step-00000012 is damaged" in caplog.text
    summary = fit(load_config(None, tiny(digits, "train.epochs=3")), str(tmp_path))
    assert summary["global_step"] == 18


def test_max_steps_at_the_end_of_an_epoch_ends_the_epoch_first(digits, tmp_path):
    summary = fit(load_config(None, tiny(digits, "train.max_steps=6")), str(tmp_path))
    assert (summary["status"], summary["global_step"]) == ("max_steps", 6)
    assert summary["last_eval"]["images"] == 37            # the epoch was evaluated
    meta = newest_meta(tmp_path)
    assert (meta["epoch"], meta["batch"], meta["global_step"]) == (1, 0, 6)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000006"]
    # a limit at the very end is just the end of the run
    summary = fit(load_config(None, tiny(digits, "train.max_steps=18")), str(tmp_path))
    assert (summary["status"], summary["global_step"]) == ("finished", 18)
    assert os.path.exists(tmp_path / "final.params")
    epochs = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [6, 12, 18]


def test_nan_loss_stops_naming_its_window_and_keeps_the_last_checkpoint(digits, tmp_path):
    fit(load_config(None, tiny(digits, "train.max_steps=6")), str(tmp_path))
    assert newest_meta(tmp_path)["global_step"] == 6
    # relaunched with the same limit: nothing more to do
    summary = fit(load_config(None, tiny(digits, "train.max_steps=6")), str(tmp_path))
    assert (summary["status"], summary["global_step"]) == ("max_steps", 6)
    # the same run, relaunched with an absurd learning rate
    run = train_cli(tmp_path, tiny(digits, "optim.lr=1e12", "optim.warmup_epochs=0",
                                   "train.epochs=3", "train.log_every=4"))
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 1, output[-3000:]
    found = re.search(r"the loss became NaN or infinite between steps (\d+) and (\d+) \(epoch "
                      r"(\d+)", output)
    assert found, output[-3000:]
    first, last, epoch = map(int, found.groups())
    # a log window: after the checkpoint, at most log_every steps, ending at a multiple of 4
    assert 7 <= first <= last <= first + 3 and last % 4 == 0 and epoch == (last - 1) // 6 + 1
    assert newest_meta(tmp_path)["global_step"] == 6
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000006"]
    assert not os.path.exists(tmp_path / "final.params")


def test_config_errors_exit_2_naming_the_key(digits, tmp_path):
    run = train_cli(tmp_path, tiny(digits, "train.epoch=3"))
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2 and "did you mean 'train.epochs'" in output
    run = train_cli(tmp_path, tiny(digits, "data.train=/nonexistent/train"))
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2 and "no RecordIO files match '/nonexistent/train'" in output
    run = train_cli(tmp_path, tiny(digits, "train.dtype=float16"))
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2 and "train.dtype=float16 needs a GPU" in output
    assert "Traceback" not in output


def test_verify_export_predict_on_a_trained_model(digits, tmp_path):
    fit(load_config(None, tiny(digits, "train.epochs=1")), str(tmp_path))
    train, val = digits
    (tmp_path / "cfg.yaml").write_text((tmp_path / "config.yaml").read_text())
    verify = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "verify.py"),
                             "--config", str(tmp_path / "cfg.yaml"), "--params",
                             str(tmp_path / "final.params"), "--rec-val", val, "--json",
                             "--per-class-csv", str(tmp_path / "per_class.csv")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert verify.returncode == 0, verify.stderr[-3000:]
    result = json.loads(verify.stdout.strip().splitlines()[-1])
    assert result["images"] == 37 and 0 <= result["top5"] <= 1
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,correct,images,accuracy" and len(lines) == 11
    assert sum(int(line.split(",")[2]) for line in lines[1:]) == 37

    def verify_with(*extra):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "verify.py"),
                               "--config", str(tmp_path / "cfg.yaml"), "--params",
                               str(tmp_path / "final.params"), "--rec-val", val, "--json",
                               *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    # on CPUs verify evaluates the oneDNN-fused graph: the same counts as the training
    # loop's plain graph, also with a last batch of 5 (37 = 4 x 8 + 5)
    plain, plain_log = verify_with("--plain-graph", "--batch-size", "8")
    fused, fused_log = verify_with("--batch-size", "8")
    assert plain == fused == result
    assert "oneDNN-fused graph" in fused_log and "oneDNN-fused graph" not in plain_log
    export = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export.py"),
                             "--config", str(tmp_path / "cfg.yaml"), "--params",
                             str(tmp_path / "final.params"), "--output",
                             str(tmp_path / "export" / "m"), "--onnx", "--fuse",
                             "--batch-size", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    diffs = [float(line.split("=", 1)[1].split()[0]) for line in export.stdout.splitlines()
             if "max |" in line]
    assert len(diffs) == 3 and max(diffs) < 1e-4
    assert os.path.exists(tmp_path / "export" / "m-fused-symbol.json")
    images = sorted(os.path.join(os.path.dirname(train), f) for f in
                    os.listdir(os.path.dirname(train)) if f.endswith(".png"))[:3]
    meta = json.loads((tmp_path / "export" / "m-meta.json").read_text())
    assert (meta["model"], meta["num_classes"], meta["size"], meta["crop_ratio"]) == \
        ("resnest14", 10, 32, 1.0)
    assert meta["input_shape"] == [2, 3, 32, 32] and meta["interpolation"] == "bicubic"
    assert meta["class_names"] == [str(d) for d in range(10)]   # from train.classes.tsv
    assert set(meta["files"]) == {"m.onnx", "m-symbol.json", "m-0000.params"}
    fused_meta = json.loads((tmp_path / "export" / "m-fused-meta.json").read_text())
    assert fused_meta["size"] == 32 and "m-fused-symbol.json" in fused_meta["files"]

    def predict(*extra):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"),
                               "--model", str(tmp_path / "export" / "m"), *extra, *images],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    # the size, crop and class names come from the export's metadata
    done = predict("--json")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["top"]) == 5 for r in rows)
    assert all(abs(sum(t["prob"] for t in r["top"]) - 1) < 0.5 for r in rows)
    assert all(t["name"] == str(t["label"]) for r in rows for t in r["top"])
    assert predict("--json", "--size", "32", "--classes", train + ".classes.tsv").stdout == \
        done.stdout
    refused = predict("--size", "224")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--size 224 conflicts with the export: resnest14 was exported for 32x32 input" in \
        refused.stderr and "Traceback" not in refused.stderr


def _rank_pids(marker, rank):
    """PIDs of the training processes of ``rank`` (main process and its loader workers)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and f"\0HOROVOD_RANK={rank}\0" in "\0" + environ:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("how", ["dead", "stuck"])
def test_dead_or_stuck_worker_ends_the_job_in_bounded_time(digits, tmp_path, how):
    workdir = tmp_path / how
    job = subprocess.Popen([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                            os.path.join(ROOT, "scripts", "train.py"), "--workdir", str(workdir),
                            *tiny(digits, "train.epochs=500", "train.stall_timeout=60")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline and not any(
            r["kind"] == "step" and r["step"] >= 3
            for r in read_metrics(str(workdir / "metrics.jsonl"))):
        time.sleep(0.5)
    pids = _rank_pids(str(workdir), 1)
    assert pids, "rank 1 not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL if how == "dead" else signal.SIGSTOP)
    started = time.time()
    try:
        output = job.communicate(timeout=240)[0]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, output[-2000:]
    assert time.time() - started < 240


def test_resume_with_another_number_of_workers(digits, tmp_path):
    # one epoch alone (6 steps of 16), then the rest under horovodrun -np 2 (3 steps per epoch)
    fit(load_config(None, tiny(digits, "train.epochs=1", "model.dropblock_prob=0.3")),
        str(tmp_path))
    assert newest_meta(tmp_path)["global_step"] == 6
    result = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                             os.path.join(ROOT, "scripts", "train.py"), "--workdir",
                             str(tmp_path), *tiny(digits, "train.epochs=3",
                                                  "model.dropblock_prob=0.3")],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "steps per epoch changed 6 -> 3" in result.stdout + result.stderr
    meta = newest_meta(tmp_path)
    # the step counts updates on: 6 alone, then 2 epochs of 3
    assert (meta["epoch"], meta["world_size"], meta["global_step"]) == (3, 2, 12)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "step-00000006", "step-00000009", "step-00000012"]
    # the schedule continued from epoch 1 in the new units: warm-up done, cosine to the end
    schedule = Schedule(0.2 * 32 / 256, 3, 3, 1.0)
    assert meta["lr"] == pytest.approx(schedule(9))
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["lr"] for r in steps[6:]] == pytest.approx([schedule(s) for s in range(3, 9)])
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(0, 6), (1, 9), (2, 12)]
    # DropBlock: 0.3 over 1 epoch first, then the 3-epoch ramp continues at epochs 2 and 3
    assert [round(r["dropblock_prob"], 4) for r in epochs] == [0.3, 0.2, 0.3]


def test_bfloat16_training_on_cpu(digits, tmp_path):
    # AMP patches MXNet process-wide: run it in its own process
    run = train_cli(tmp_path, tiny(digits, "train.dtype=bfloat16", "train.max_steps=3"))
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output[-3000:]
    steps = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["kind"] == "step"]
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)
    assert newest_meta(tmp_path)["global_step"] == 3


def test_float16_loss_scale_survives_a_checkpoint(tmp_path):
    # MXNet cannot run float16 on a CPU, but the loss scaler and its checkpoint round trip
    # are plain Python state: checked with AMP initialised for float16, in its own process.
    code = textwrap.dedent("""
        import mxnet as mx
        from resnest_gluon.training.precision import AMPPrecision
        net = mx.gluon.nn.Dense(2, in_units=3)
        net.initialize()
        precision = AMPPrecision("float16")
        precision.prepare()
        trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
        precision.attach(trainer)
        scaler = trainer._amp_loss_scaler
        assert precision.state_dict()["loss_scale"] == 2.0 ** 16
        scaler._loss_scale, scaler._next_loss_scale, scaler._unskipped = 512.0, 256.0, 17
        saved = precision.state_dict()
        again = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
        restored = AMPPrecision("float16")
        restored.attach(again)
        restored.load_state_dict(saved)
        assert restored.state_dict() == {"loss_scale": 512.0, "next_loss_scale": 256.0,
                                         "unskipped": 17}
        loss = restored.scale(mx.nd.array([1.5]))
        assert loss.asscalar() == 1.5 * 512 and again._scale == 1 / 512
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
