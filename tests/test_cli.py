"""Command-line tools of the model package."""
import subprocess
import sys

from resnest_gluon.commands import summary


def test_summary_prints_params_gflops_and_shapes(capsys):
    assert summary.main(["resnest50", "--size", "224"]) == 0
    out = capsys.readouterr().out
    assert "27.55 M" in out and "5.37" in out
    assert "layer4     (2048, 7, 7)" in out


def test_summary_table_has_every_model(capsys):
    assert summary.main(["--table", "resnest14", "resnest50_fast_4s2x40d"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[3].startswith("| resnest50_fast_4s2x40d | 4s2x40d | 30.51 | 30.4 | 4.37 | 4.41")


def test_summary_unknown_model_is_a_clear_error(capsys):
    assert summary.main(["resnest51"]) == 2
    assert "resnest50" in capsys.readouterr().err


def test_summary_script_help():
    out = subprocess.run([sys.executable, "scripts/summary.py", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert "GFLOPs" in out and "--table" in out
