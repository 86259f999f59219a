"""The work directory: one run at a time, released by a kill, nothing left over."""
import os
import signal
import socket
import subprocess
import sys

from runs import ROOT, TRAIN, newest_meta, read_text, tiny, wait_for

from resnest_gluon.training.metrics import read_metrics


def overrides(digits, *extra):
    return tiny(digits, "train.epochs=1", *extra)


def train(workdir, args, log):
    with open(log, "a") as handle:
        return subprocess.Popen([sys.executable, TRAIN, "--workdir", str(workdir), *args],
                                stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def test_a_second_run_into_a_busy_workdir_stops_and_the_first_is_untouched(digits, tmp_path):
    workdir = tmp_path / "run"
    first = train(workdir, overrides(digits, "train.epochs=100"), tmp_path / "first.log")
    wait_for(lambda: any(r["kind"] == "step" for r in read_metrics(str(workdir /
                                                                       "metrics.jsonl"))),
             "the first run's first step")
    second = subprocess.run([sys.executable, TRAIN,
                             "--workdir", str(workdir),
                             *overrides(digits, "train.epochs=3", "optim.base_lr=0.5")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    message = second.stderr.strip().splitlines()[-1]
    assert f"{workdir} is in use by another run (PID {first.pid} on {socket.gethostname()}" \
        in message and "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0, read_text(tmp_path / "first.log")[-3000:]
    # the config and the metrics are the first run's alone
    assert "train:\n  epochs: 100" in read_text(workdir / "config.yaml")
    steps = [r["step"] for r in read_metrics(str(workdir / "metrics.jsonl"))
             if r["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1))


def test_kill_9_releases_the_workdir_and_leftovers_are_removed(digits, tmp_path):
    workdir = tmp_path / "run"
    first = train(workdir, overrides(digits, "train.epochs=100"), tmp_path / "first.log")
    wait_for(lambda: newest_meta(workdir) is not None,
             "the first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    # what a kill during a checkpoint write leaves behind
    leftover = workdir / "checkpoints" / ".tmp-step-00000099-12345"
    leftover.mkdir()
    (leftover / "model.params").write_bytes(b"\0" * 4096)
    again = subprocess.run([sys.executable, TRAIN,
                            "--workdir", str(workdir), *overrides(digits, "train.epochs=1")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    assert not leftover.exists()
    assert not [n for n in os.listdir(workdir / "checkpoints") if n.startswith(".")]


def test_a_workdir_that_is_a_file_is_one_clear_error(digits, tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    for workdir in (tmp_path / "taken", tmp_path / "taken" / "run"):
        done = subprocess.run([sys.executable, TRAIN, "--workdir", str(workdir),
                               *overrides(digits, "train.epochs=1")],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"--workdir {workdir}: a file is in the way" in \
            done.stderr.strip().splitlines()[-1]
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_labels_outside_num_classes_stop_before_the_first_step(digits, tmp_path):
    from resnest_gluon.data import RecordWriter, pack_record
    writer = RecordWriter(str(tmp_path / "odd.rec"))
    for label in (0, 3, 12):
        writer.write(pack_record(label, b"not even an image"))
    writer.commit()
    for extra, key, high in ((["data.num_classes=5"], "data.train", 9),
                             ([f"data.val={tmp_path / 'odd.rec'}"], "data.val", 12)):
        workdir = tmp_path / key
        done = subprocess.run([sys.executable, TRAIN,
                               "--workdir", str(workdir), *overrides(digits, *extra)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert f"{key} has labels from 0 to {high}, outside [0, " in done.stderr
        assert not os.path.exists(workdir / "metrics.jsonl")
        checkpoints = workdir / "checkpoints"
        assert not checkpoints.exists() or not os.listdir(checkpoints)
