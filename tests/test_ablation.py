"""The ablation grid (scripts/ablation.py): the published points' costs in the summary of the
real grid, the grid file's checks, the launch command lines, and a demo-scale grid on the
digits run end to end through the CLI (summary, train with resume / skip / a failing point,
report)."""
import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from resnest_gluon import ablation
from resnest_gluon.commands import ablation as command
from resnest_gluon.models import count_flops, count_params, get_model, get_spec
from resnest_gluon.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = os.path.join(ROOT, "configs", "ablation.yaml")
DEMO = os.path.join(ROOT, "configs", "ablation_demo.yaml")
PUBLISHED = {"0s1x64d": "resnet50d", **{t: f"resnest50_fast_{t}" for t in (
    "1s1x64d", "2s1x64d", "4s1x64d", "1s2x40d", "2s2x40d", "4s2x40d", "1s4x24d")}}


def test_summary_of_the_real_grid_matches_the_zoo(tmp_path, capsys):
    assert command.main(["summary", "--grid", GRID, "--workdir", str(tmp_path),
                         "--no-speed"]) == 0
    table = capsys.readouterr().out.splitlines()
    records = json.loads((tmp_path / "summary.json").read_text())["points"]
    names = [p.name for p in ablation.load_grid(GRID).points]
    assert names == [f"{r}s{w}" for w in ("1x64d", "2x40d", "4x24d") for r in (0, 1, 2, 4)]
    assert set(records) == set(names) and set(PUBLISHED) <= set(names)
    for point, zoo in PUBLISHED.items():
        net = get_model(zoo)
        record = records[point]
        assert record["params"] == count_params(net), point
        assert record["gflops"] == pytest.approx(count_flops(net, 224) / 1e9, abs=1e-9), point
        spec = get_spec(zoo)
        assert abs(record["params"] / 1e6 - spec.published_params_m) <= 0.15, point
        assert abs(record["gflops"] - spec.published_gflops) / spec.published_gflops <= 0.02
        assert record["speed"] is None and record["size"] == 224
    assert "| 4s2x40d | 30.51M | 4.37 |  |  |" in table
    assert "| 0s1x64d | 25.63M | 4.33 |  |  |" in table
    # a second run reuses the cached records
    assert command.main(["summary", "--grid", GRID, "--workdir", str(tmp_path), "--no-speed",
                         "--points", "0s1x64d,4s4x24d"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("(cached)") == 2 and len(captured.out.splitlines()) == 2 + 2 + 2


def write_grid(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.mark.parametrize("tree, message", [
    ({"gird": {}}, "did you mean 'grid'"),
    ({"grid": {"radix": [1], "widths": ["2x40"]}}, "'2x40' is not CxWd"),
    ({"points": ["two-splits"]}, "not in the RsCxWd notation"),
    ({"points": ["2s1x64d"], "base": {"modle": {}}}, "did you mean 'model'"),
    ({"points": ["2s1x64d"], "train": {"launcher": "slurm"}}, "local or horovodrun"),
    ({"points": ["2s1x64d"], "train": {"np": "8"}}, "train.np must be a whole number"),
    ({"points": ["2s1x64d", {"name": "2s1x64d", "config": {"train": {"epochs": 1}}}]},
     "listed twice"),
    ({"points": []}, "lists no points"),
])
def test_grid_file_errors_name_the_key(tmp_path, tree, message):
    with pytest.raises(ablation.GridError, match=message):
        ablation.load_grid(write_grid(tmp_path / "grid.yaml", tree))


def test_points_are_config_deltas_over_the_base(tmp_path, capsys):
    grid = ablation.load_grid(write_grid(tmp_path / "grid.yaml", {
        "base": {"model": {"name": "resnest50_fast_2s1x64d", "overrides": {"stem_width": 16}},
                 "train": {"epochs": 7}},
        "grid": {"radix": [0, 4], "widths": ["2x40d"]},
        "points": ["0s2x40d", {"name": "1s1x64d-short", "config": {"train": {"epochs": 2}}}]}))
    assert [p.name for p in grid.points] == ["0s2x40d", "4s2x40d", "1s1x64d-short"]
    config = ablation.point_config(grid, grid.points[1], ["optim.lr=0.5"])
    assert config.model.overrides == {"stem_width": 16, "radix": 4, "cardinality": 2,
                                      "bottleneck_width": 40}
    assert (config.train.epochs, config.optim.lr) == (7, 0.5)
    short = ablation.point_config(grid, grid.points[2])
    assert short.train.epochs == 2 and short.model.overrides["radix"] == 1
    # a mistake in the base concerns every point: exit 2 before anything runs
    bad = write_grid(tmp_path / "bad.yaml", {"base": {"train": {"epoch": 3}},
                                             "points": ["2s1x64d"]})
    assert command.main(["report", "--grid", bad, "--workdir", str(tmp_path / "w")]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


def test_launch_command_lines(tmp_path, capsys):
    grid = ablation.load_grid(DEMO)
    local = ablation.train_command(grid, "P.yaml", "DIR/p", ["data.train=/x"])
    assert local == [sys.executable, "-m", "resnest_gluon.commands.train", "--config",
                     "P.yaml", "--workdir", "DIR/p", "data.train=/x"]
    grid.train.launcher, grid.train.np, grid.train.hosts = "horovodrun", 16, "n1:8,n2:8"
    grid.train.extra_args = ["--gloo-timeout-seconds", "120"]
    hvd = ablation.train_command(grid, "P.yaml", "DIR/p")
    assert os.path.basename(hvd[0]) == "horovodrun"
    assert hvd[1:7] == ["-np", "16", "-H", "n1:8,n2:8", "--gloo-timeout-seconds", "120"]
    assert hvd[7:] == local[:-1]
    grid.train.hostfile = "hosts.txt"
    assert ablation.train_command(grid, "P.yaml", "DIR/p")[3:5] == ["-hostfile", "hosts.txt"]
    # --dry-run prints each point's command, under horovodrun -np 2 -H localhost:2 here
    assert command.main(["train", "--grid", DEMO, "--workdir", str(tmp_path), "--dry-run",
                         "--launcher", "horovodrun", "--np", "2", "data.train=/d/train"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, point in zip(lines, ("0s1x64d", "1s1x64d", "2s1x64d")):
        assert " -np 2 -H localhost:2 " in line and line.endswith(
            f"--config {tmp_path}/{point}/point.yaml --workdir {tmp_path}/{point} "
            f"data.train=/d/train")
        assert yaml.safe_load((tmp_path / point / "point.yaml").read_text())["model"][
            "overrides"]["radix"] == int(point[0])


def cli(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ablation.py"),
                             *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    return result.returncode, result.stdout, result.stderr


def test_demo_grid_end_to_end(digits, tmp_path):
    with open(DEMO) as handle:
        tree = yaml.safe_load(handle)
    tree["points"].append({"name": "2s1x64d-broken",
                           "config": {"model": {"overrides": {"no_such_option": 1}}}})
    grid = write_grid(tmp_path / "grid.yaml", tree)
    work = tmp_path / "work"
    common = ["--grid", grid, "--workdir", str(work)]
    data = [f"data.train={digits[0]}", f"data.val={digits[1]}", "train.epochs=1",
            "train.batch_size=16", "data.chunk=8", "data.window=32"]       # 6 steps
    good = ["0s1x64d", "1s1x64d", "2s1x64d"]

    code, out, err = cli("summary", *common, "--batch", "4", "--size", "32", "--repeats", "1",
                         *data)
    assert code == 1, err[-3000:]                                # the broken point
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4 and rows[-1] == "| 2s1x64d-broken | failed | | | |"
    records = json.loads((work / "summary.json").read_text())["points"]
    for point in good:
        speed = records[point]["speed"]
        assert speed["batch"] == 4 and speed["infer_img_per_s"] > 0 < speed["train_img_per_s"]
    assert "no_such_option" in records["2s1x64d-broken"]["error"]

    # one point stops early (as if interrupted), then the grid runs: it resumes, the other
    # two start, the broken one is reported and the others still finish
    code, _, err = cli("train", *common, "--points", "0s1x64d", *data, "train.max_steps=3")
    assert code == 0 and "stopped at epoch 0/1" in err, err[-3000:]
    code, _, err = cli("train", *common, *data)
    assert code == 1, err[-3000:]
    assert "2s1x64d-broken: failed" in err and "1 failed, 3 finished" in err
    assert "resuming at epoch 0/1" in err
    assert "resumed from" in (work / "0s1x64d" / "train.log").read_text()
    status = json.loads((work / "status.json").read_text())
    assert [status[p]["status"] for p in good] == ["finished"] * 3
    assert "no_such_option" in status["2s1x64d-broken"]["error"]
    steps = {p: len(read_metrics(str(work / p / "metrics.jsonl"))) for p in good}

    # again: the finished points are skipped, nothing trains
    code, _, err = cli("train", *common, *data)
    assert code == 1 and err.count("skipped, finished") == 3, err[-3000:]
    assert steps == {p: len(read_metrics(str(work / p / "metrics.jsonl"))) for p in good}

    code, out, err = cli("report", *common, *data)
    assert code == 0, err[-3000:]
    table = (work / "report.md").read_text()
    assert out == table
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0]] == ["variant", "#P", "GFLOPs", "img/s",
                                            "img/s (train)", "top-1", "top-5", "epochs"]
    assert [r[0].strip() for r in rows[1:]] == good + ["2s1x64d-broken"]
    for row in rows[1:4]:
        assert len(row) == 8 and all(cell.strip() for cell in row), row
        assert 0 <= float(row[5]) <= float(row[6]) <= 100 and row[7].strip() == "1"
    assert rows[4][7].strip() == "invalid" and "no_such_option" in table
    with open(work / "report.csv") as handle:
        lines = list(csv.DictReader(handle))
    assert list(lines[0]) == ablation.REPORT_COLUMNS
    assert [r["variant"] for r in lines] == good + ["2s1x64d-broken"]
    assert [r["status"] for r in lines] == ["finished"] * 3 + ["invalid"]
    assert [int(r["radix"]) for r in lines[:3]] == [0, 1, 2]
    assert float(lines[2]["params_m"]) > float(lines[1]["params_m"]) > float(
        lines[0]["params_m"])
    final = [r for r in read_metrics(str(work / "1s1x64d" / "metrics.jsonl"))
             if r["kind"] == "epoch"][-1]
    assert float(lines[1]["top1"]) == pytest.approx(100 * final["val_top1"], abs=0.006)
    assert (work / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                                    "horovodrun")), reason="no horovodrun")
def test_a_point_under_horovodrun(digits, tmp_path):
    code, _, err = cli("train", "--grid", DEMO, "--workdir", str(tmp_path), "--points",
                       "1s1x64d", "--launcher", "horovodrun", "--np", "2",
                       f"data.train={digits[0]}", f"data.val={digits[1]}", "train.epochs=1",
                       "train.batch_size=16", "data.chunk=8", "data.window=32")
    assert code == 0 and "1s1x64d: finished" in err, err[-3000:]
    epochs = [r for r in read_metrics(str(tmp_path / "1s1x64d" / "metrics.jsonl"))
              if r["kind"] == "epoch"]
    # global batch 32 over 2 workers: 96 // 32 = 3 steps; every validation image counted once
    assert [(r["step"], r["val_images"]) for r in epochs] == [(3, 37)]


def test_script_help_explains_each_command():
    out = subprocess.run([sys.executable, "scripts/ablation.py", "--help"], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    for word in ("summary", "train", "report", "horovodrun", "--dry-run", "resume"):
        assert word in out, word
