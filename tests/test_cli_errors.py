"""Every command-line tool ends a user's mistake with one line and exit 2, and a defect with a
traceback and exit 1 (issue case 9); predict reports bad files by name and still classifies
the good ones."""
import os
import struct
import subprocess
import sys
import zlib

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from runs import ROOT, TRAIN, tiny

from resnest_gluon import get_model

SCRIPTS = os.path.join(ROOT, "scripts")


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _one_line_error(done, *words):
    """Exit 2, no traceback, and the last line of stderr holds ``words``."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, (word, last)


def _pack(*args):
    return _run(["-m", "recordio_tools", "pack", *args, "--quiet", "--workers", "1"])


def test_pack_on_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(_pack(str(tmp_path / "empty"), str(tmp_path / "out" / "train")),
                    "has no class folders")


def test_pack_on_class_folders_without_images(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "tree" / name).mkdir(parents=True)
    _one_line_error(_pack(str(tmp_path / "tree"), str(tmp_path / "out" / "train")),
                    "the 2 class folder(s) hold no files")
    assert not (tmp_path / "out").exists()


def test_pack_of_files_none_of_which_is_an_image(tmp_path):
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "notes.jpg").write_text("not an image")
    _one_line_error(_pack(str(tmp_path / "tree"), str(tmp_path / "out" / "train")),
                    "none of the 1 input file(s) is a readable image", "notes.jpg")
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith("train-")]


def test_pack_with_a_label_file_missing_entries(photo_tree, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"img{i}.jpg").write_bytes(open(os.path.join(photo_tree, "c0", f"img{i}.jpg"),
                                                "rb").read())
    (tmp_path / "labels.txt").write_text("img0 c0\nimg1 c1\n")
    _one_line_error(_pack(str(flat), str(tmp_path / "val"), "--labels",
                          str(tmp_path / "labels.txt")),
                    "1 file(s)", "have no label in", "img2.jpg")


def test_pack_with_a_missing_classes_file(photo_tree, tmp_path):
    _one_line_error(_pack(photo_tree, str(tmp_path / "train"), "--classes",
                          str(tmp_path / "nope.tsv")),
                    "classes file not found", "nope.tsv")


def test_pack_with_classes_that_do_not_match_the_folders(photo_tree, tmp_path):
    (tmp_path / "classes.tsv").write_text("0\tc0\tc0\n1\tother\tother\n")
    _one_line_error(_pack(photo_tree, str(tmp_path / "train"), "--classes",
                          str(tmp_path / "classes.tsv")),
                    "are not classes of the --classes file", "c1")


def test_pack_with_a_classes_file_that_is_not_one(photo_tree, tmp_path):
    (tmp_path / "classes.tsv").write_text("just some words\n")
    _one_line_error(_pack(photo_tree, str(tmp_path / "train"), "--classes",
                          str(tmp_path / "classes.tsv")),
                    "classes.tsv:1: expected 'index<TAB>class id<TAB>name'")


def test_pack_with_a_binary_file_as_classes_or_labels(photo_tree, tmp_path):
    binary = os.path.join(photo_tree, "c0", "img0.jpg")
    _one_line_error(_pack(photo_tree, str(tmp_path / "train"), "--classes", binary),
                    "is not a text file", "img0.jpg")
    _one_line_error(_pack(os.path.join(photo_tree, "c0"), str(tmp_path / "val"), "--labels",
                          binary), "--labels", "is not a text file")


@pytest.mark.parametrize("lines, words", [
    ("img0 c0\nthis line is bad\nimg1 c1\nimg2 c1\n", ["labels.txt:2: expected 'filename class'",
                                                      "'this line is bad'"]),
    ("img0 c0\nimg1 c1\nimg2 c1\nimg0 c1\n", ["labels.txt:4: img0 is labelled 'c1' here and "
                                               "'c0' on line 1"]),
])
def test_pack_refuses_a_label_file_it_would_misread(photo_tree, tmp_path, lines, words):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"img{i}.jpg").write_bytes(open(os.path.join(photo_tree, "c0", f"img{i}.jpg"),
                                                "rb").read())
    (tmp_path / "labels.txt").write_text(lines)
    _one_line_error(_pack(str(flat), str(tmp_path / "val"), "--labels",
                          str(tmp_path / "labels.txt")), *words)
    assert not (tmp_path / "val.manifest.json").exists()


def test_pack_of_the_current_folder_names_files_after_it(photo_tree, tmp_path):
    done = subprocess.run([sys.executable, "-m", "recordio_tools", "pack", ".",
                           str(tmp_path / "out") + "/", "--shards", "1", "--quiet", "--workers",
                           "1"], capture_output=True, text=True, cwd=photo_tree, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tree.manifest.json" in os.listdir(tmp_path / "out")


def test_binary_config_and_bad_numbers_are_one_line(digits, tmp_path):
    weights = os.path.join(os.path.dirname(digits[0]), "0000.png")
    _one_line_error(_run([TRAIN, "--config", weights, "--workdir", str(tmp_path / "run")]),
                    "config", "is not a text file")
    for args, words in ((["--batch-size", "0"], ["--batch-size: 0 is not >= 1"]),
                        (["--num-classes", "-1"], ["--num-classes: -1 is not >= 1"])):
        done = _run([os.path.join(SCRIPTS, "verify.py"), "--model", "resnest14", "--params",
                     weights, "--rec-val", digits[1], *args])
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert all(w in done.stderr for w in words), done.stderr[-2000:]


def test_pack_to_a_path_under_a_file(photo_tree, tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(_pack(photo_tree, str(tmp_path / "file" / "train")), "a file is in the way")


def test_a_prefix_ending_in_a_slash_is_a_folder(photo_tree, tmp_path):
    done = _pack(photo_tree, str(tmp_path / "out") + "/", "--shards", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "tree-00000-of-00001.idx", "tree-00000-of-00001.json", "tree-00000-of-00001.rec",
        "tree.classes.tsv", "tree.lst", "tree.manifest.json"]


def test_train_with_an_unknown_model_name(digits, tmp_path):
    done = _run([TRAIN, "--workdir", str(tmp_path / "run"),
                 *tiny(digits, "model.name=resnest15")])
    _one_line_error(done, "model.name=resnest15", "unknown model 'resnest15'",
                    "Did you mean")
    assert not os.path.exists(tmp_path / "run" / "config.yaml")


def test_inspect_sheet_to_a_path_under_a_file(digits, tmp_path):
    (tmp_path / "file").write_text("x")
    done = _run(["-m", "recordio_tools", "inspect", digits[1], "--sheet",
                 str(tmp_path / "file" / "sheet.png")])
    _one_line_error(done, "--sheet", "a file is in the way")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ResNeSt-14 (10 classes, random weights) exported at 32 px."""
    folder = tmp_path_factory.mktemp("export")
    net = get_model("resnest14", classes=10)
    net.initialize(mx.init.Xavier())
    net.save_parameters(str(folder / "w.params"))
    done = _run([os.path.join(SCRIPTS, "export.py"), "--model", "resnest14", "--num-classes",
                 "10", "--params", str(folder / "w.params"), "--size", "32", "--output",
                 str(folder) + "/"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isfile(folder / "resnest14-symbol.json")   # the "/" rule: named inside
    return folder


def test_a_new_export_replaces_every_file_of_the_old_one(exported, tmp_path):
    args = [os.path.join(SCRIPTS, "export.py"), "--model", "resnest14", "--num-classes", "10",
            "--params", str(exported / "w.params"), "--output", str(tmp_path / "m")]
    first = _run(args + ["--size", "32", "--onnx"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "m.onnx").exists()
    again = _run(args + ["--size", "64"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["m-0000.params", "m-meta.json", "m-symbol.json"]
    assert f"symbol {tmp_path / 'm-symbol.json'}" in again.stdout


def test_predict_on_a_damaged_export_is_one_line(exported, tmp_path):
    for name in ("resnest14-symbol.json", "resnest14-0000.params", "resnest14-meta.json"):
        data = (exported / name).read_bytes()
        (tmp_path / name).write_bytes(data[:len(data) // 2] if name.endswith(".params")
                                      else data)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    _one_line_error(_run([os.path.join(SCRIPTS, "predict.py"), "--model",
                          str(tmp_path) + "/", str(image)]),
                    "cannot load the export", "export it again")
    (tmp_path / "resnest14-meta.json").write_text('{"format": "resnest_gluon-export-1"}')
    _one_line_error(_run([os.path.join(SCRIPTS, "predict.py"), "--model",
                          str(tmp_path / "resnest14"), str(image)]),
                    "resnest14-meta.json: field(s)", "missing or malformed")


def test_export_to_a_path_under_a_file(exported, tmp_path):
    (tmp_path / "file").write_text("x")
    done = _run([os.path.join(SCRIPTS, "export.py"), "--model", "resnest14", "--num-classes",
                 "10", "--params", str(exported / "w.params"), "--size", "32", "--output",
                 str(tmp_path / "file" / "m")])
    _one_line_error(done, "--output", "a file is in the way")


def _bomb_png(path, side=20000):
    """A valid PNG header for a ``side`` x ``side`` greyscale image (a few hundred bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side + 1) * 4)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))


def test_predict_reports_each_bad_file_and_classifies_the_good_ones(exported, tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for i in range(2):
        good.append(str(tmp_path / f"good{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good[-1])
    (tmp_path / "notes.jpg").write_text("not an image")
    _bomb_png(tmp_path / "huge.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "huge.png")
    images = [good[0], str(tmp_path / "notes.jpg"), str(tmp_path / "huge.png"),
              str(tmp_path / "missing.png"), good[1]]
    done = _run([os.path.join(SCRIPTS, "predict.py"), "--model",
                 str(exported / "resnest14"), *images])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in printed] == good
    errors = [line for line in done.stderr.splitlines() if "cannot classify" in line]
    assert [e.split("predict: ")[1].split(": cannot")[0] for e in errors] == images[1:4]
    assert "decompression bomb" in errors[1] and "No such file" in errors[2]
    assert "3 of 5 image(s) could not be classified" in done.stderr.strip().splitlines()[-1]


def test_an_unexpected_error_keeps_its_traceback_and_exits_1():
    code = ("import sys\n"
            "from resnest_gluon.commands.cli import command\n"
            "@command('tool')\n"
            "def main(argv=None):\n"
            "    return {}['defect']\n"
            "sys.exit(main())\n")
    done = _run(["-c", code])
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError" in done.stderr
