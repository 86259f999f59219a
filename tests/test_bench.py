"""The model benchmark runs end to end at a tiny size and reports every implementation and path
it promises (no timing is asserted: these machines are shared and noisy)."""
import os
import re
import subprocess
import sys

from resnest_gluon.commands.bench_model import measurement_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_model.py")


def _cells(row):
    return [cell.strip() for cell in row.split("|")[1:-1]]


def test_bench_model_reports_every_peer_path_and_flop_rate():
    done = subprocess.run([sys.executable, SCRIPT, "resnest14", "--batch-size", "2", "--size",
                           "32", "--repeats", "1", "--rounds", "1", "--serving",
                           "--against", "authors,gluoncv"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [_cells(line) for line in done.stdout.splitlines() if line.startswith("| resnest14 |")]
    impls = [row[1] for row in rows]
    assert impls[:5] == ["ours", "authors' Gluon (resnest 0.0.6b20230402)",
                         "gluoncv 0.10.5.post0", "ours / authors", "ours / gluoncv"]
    for ratio_row in rows[3:5]:
        ratios = [float(c.strip("*x")) for c in ratio_row[2:6]]
        assert len(ratios) == 4 and all(r > 0 for r in ratios)
    assert re.search(r"resnest14's FLOP rate / resnet50d's \(ours\): inference \d+%, "
                     r"training \d+%", done.stdout)
    assert "| resnet50d | ours |" in done.stdout
    assert "median of 1 fresh process(es)" in done.stdout
    serving = {row[1]: row for row in rows[5:]}
    assert len(serving) == 6
    diffs = {path: row[-1] for path, row in serving.items()}
    fused = next(d for p, d in diffs.items() if "export.py --fuse" in p)
    verify_fused = next(d for p, d in diffs.items() if "verify.py" in p)
    onnx = next(d for p, d in diffs.items() if "onnxruntime" in p)
    bf16 = next(d for p, d in diffs.items() if "bfloat16 AMP inference" in p)
    largest = float(re.search(r"max abs logit ([0-9.]+)", serving[next(
        p for p in serving if "reference" in p)][-1]).group(1))
    assert float(fused) < 1e-4 and float(verify_fused) < 1e-4 and float(onnx) < 1e-4
    # bfloat16 keeps 8 mantissa bits: close to, but not equal to, float32
    assert 0 < float(bf16) < 0.05 * max(largest, 1.0)


def test_timm_is_left_out_with_a_warning_without_torch(tmp_path):
    """An interpreter without torch (this one: make never installs it) drops timm, says why,
    and the rest is measured."""
    done = subprocess.run([sys.executable, SCRIPT, "resnest14", "--batch-size", "1", "--size",
                           "32", "--repeats", "1", "--rounds", "1", "--against", "timm",
                           "--flop-reference", "", "--torch-python", sys.executable],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "timm left out" in done.stderr and "No module named 'torch'" in done.stderr
    rows = [_cells(line) for line in done.stdout.splitlines() if line.startswith("| resnest14 |")]
    assert [row[1] for row in rows] == ["ours"]


def test_unknown_peer_or_model_is_one_line():
    for args, expected in ((["--against", "authors,pytorch"], "unknown implementation(s) "
                            "pytorch"), (["resnest51"], "unknown model 'resnest51'"),
                           (["--rounds", "0"], "--rounds: must be a whole number >= 1")):
        done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert done.returncode != 0
        assert expected in done.stderr and "Traceback" not in done.stderr


def test_plan_interleaves_every_implementation_and_adds_the_flop_reference_once():
    plan = measurement_plan(["resnest50", "resnest50_fast_2s2x40d"],
                            ["authors", "gluoncv", "timm"])
    assert plan[:8] == [("resnest50", impl, mode) for impl in
                        ("ours", "authors", "gluoncv", "timm") for mode in ("infer", "train")]
    # timm has no 2s2x40d network: its cell is not planned
    assert [p for p in plan if p[0] == "resnest50_fast_2s2x40d" and p[1] == "timm"] == []
    assert plan[-2:] == [("resnet50d", "ours", "infer"), ("resnet50d", "ours", "train")]
    assert measurement_plan(["resnet50d"], [], flop_reference="resnet50d") == [
        ("resnet50d", "ours", "infer"), ("resnet50d", "ours", "train")]


def test_operator_profile_names_the_convolutions_and_the_ceiling():
    done = subprocess.run([sys.executable, SCRIPT, "resnest14", "--batch-size", "2", "--size",
                           "32", "--profile", "--profile-top", "100", "--against", "authors"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(line for line in done.stdout.splitlines() if line.startswith("| resnest14 "))
    assert _cells(header)[1:] == ["ours infer ms", "authors infer ms", "ours train ms",
                                  "authors train ms"]
    rows = {_cells(line)[0]: _cells(line)[1:] for line in done.stdout.splitlines()
            if line.startswith("| ")}
    assert float(rows["Convolution"][0]) > 0 and float(rows["_backward_Convolution"][2]) > 0
    # ours only: the compiled split-attention operator, instead of MXNet's batch_dot
    assert rows["resnest_radix_sum"][0] and not rows["resnest_radix_sum"][1]
    assert rows["_backward_resnest_radix_sum"][2] and not rows["_backward_resnest_radix_sum"][3]
    assert "batch_dot" not in rows
    for mode in ("infer", "train"):
        assert re.search(rf"- {mode}: our convolutions take \d+ ms \(\d+% of the step\) at "
                         rf"\d+ GFLOP/s; with every other operator free, ours would run at "
                         rf"[0-9.]+ img/s = [0-9.]+x authors' profiled step", done.stdout)
