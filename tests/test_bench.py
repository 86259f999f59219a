"""The model benchmark runs end to end at a tiny size and reports every path it promises
(no timing is asserted: these machines are shared and noisy)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_model_reports_every_path_with_logit_differences():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_model.py"),
                           "resnest14", "--batch-size", "2", "--size", "32", "--repeats", "1",
                           "--serving"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| resnest14 |")]
    impls = [row.split("|")[2].strip() for row in rows]
    assert impls[:3] == ["ours", "gluoncv", "ours / gluoncv"]
    ratios = re.findall(r"([0-9.]+)x", rows[2])
    assert len(ratios) == 3 and all(float(r) > 0 for r in ratios)
    serving = {row.split("|")[2].strip(): row for row in rows[3:]}
    assert len(serving) == 5
    diffs = {path: row.split("|")[-2].strip() for path, row in serving.items()}
    fused = next(d for p, d in diffs.items() if "fused" in p)
    onnx = next(d for p, d in diffs.items() if "onnxruntime" in p)
    bf16 = next(d for p, d in diffs.items() if "bfloat16 AMP inference" in p)
    largest = float(re.search(r"max abs logit ([0-9.]+)", serving[next(
        p for p in serving if "reference" in p)]).group(1))
    assert float(fused) < 1e-4 and float(onnx) < 1e-4
    # bfloat16 keeps 8 mantissa bits: close to, but not equal to, float32
    assert 0 < float(bf16) < 0.05 * max(largest, 1.0)
