"""PyTorch and safetensors weight files load without torch: the authors' and timm's files give
the logits torch computed, every dtype and layout reads exactly, and a pickle that names other
code is refused before it runs.

The fixtures were made by tests/fixtures/make_torch_weights.py (its docstring says how to
rerun it) with torch, the authors' ``resnest.torch`` and timm; torch is not needed here.
"""
import json
import lzma
import os
import pickle
import subprocess
import sys
import zipfile

import mxnet as mx
import numpy as np
import pytest
from runs import ROOT, TRAIN, tiny

from resnest_gluon import get_model
from resnest_gluon.models.convert import WeightsMismatchError
from resnest_gluon.models.weight_files import WeightsFileError, file_format, read_weight_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                        "torch_weights")
MANIFEST = json.load(open(os.path.join(FIXTURES, "manifest.json")))
CONVERT = os.path.join(ROOT, "scripts", "convert.py")
NETWORK_FILES = [(entry, name) for entry in MANIFEST["networks"] for name in entry["files"]]


def _unpack(name, folder):
    """The fixture ``name`` (xz-compressed) decompressed into ``folder``."""
    path = os.path.join(str(folder), name[: -len(".xz")])
    with lzma.open(os.path.join(FIXTURES, name)) as src, open(path, "wb") as dst:
        dst.write(src.read())
    return path


@pytest.mark.parametrize("entry,name", NETWORK_FILES,
                         ids=[name for _, name in NETWORK_FILES])
def test_published_torch_files_give_torchs_logits(entry, name, tmp_path):
    path = _unpack(name, tmp_path)
    arrays = np.load(os.path.join(FIXTURES, entry["arrays"]))
    net = get_model(entry["model"], classes=entry["classes"], pretrained=path,
                    **entry["overrides"])
    got = net(mx.nd.array(arrays["input"])).asnumpy()
    expected = arrays["logits"]
    spread = expected.max() - expected.min()
    assert spread > 0.3                      # a meaningful comparison
    assert np.abs(got - expected).max() <= 1e-4 * spread, name


@pytest.mark.parametrize("name", MANIFEST["dtypes"]["files"])
def test_every_dtype_and_layout_reads_exactly(name, tmp_path):
    path = _unpack(name, tmp_path)
    expected = np.load(os.path.join(FIXTURES, MANIFEST["dtypes"]["arrays"]))
    got = read_weight_file(path)
    assert set(got) == set(expected.files)
    for key in expected.files:
        assert got[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert file_format(path) == {".pth": "torch-legacy" if "legacy" in name else "torch-zip",
                                 ".safetensors": "safetensors"}[os.path.splitext(path)[1]]


class _Payload:
    """Unpickling this would run a shell command that creates ``sentinel``."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _zip_container(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def _legacy_container(path, payload, position):
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)]
    parts.insert(position, payload)
    with open(path, "wb") as handle:
        handle.write(b"".join(parts[:4]))


@pytest.mark.parametrize("container", ["zip", "legacy-state", "legacy-magic"])
def test_a_pickle_naming_other_code_is_refused_before_it_runs(container, tmp_path):
    sentinel = tmp_path / "executed"
    payload = pickle.dumps({"conv1.weight": _Payload(sentinel)}, protocol=2)
    path = str(tmp_path / "evil.pth")
    if container == "zip":
        _zip_container(path, payload)
    else:
        _legacy_container(path, payload, 3 if container == "legacy-state" else 0)
    pickle.loads(payload)                           # the standard unpickler runs it:
    assert sentinel.exists()                        # the payload is live
    sentinel.unlink()
    with pytest.raises(WeightsFileError, match=r"calls posix\.system.*refused"):
        read_weight_file(path)
    with pytest.raises(WeightsFileError, match="posix.system"):
        get_model("resnest14", classes=10, pretrained=path)
    assert not sentinel.exists()


def test_damaged_and_foreign_files_are_one_clear_error(tmp_path):
    good = _unpack("authors_r2-legacy.pth.xz", tmp_path)
    data = open(good, "rb").read()
    cases = {
        "truncated.pth": (data[: len(data) // 2], "truncated|damaged"),
        "wrong-magic.pth": (pickle.dumps(12345, protocol=2), "wrong magic number"),
        "other.zip": (None, "not a PyTorch checkpoint"),
        "text.pth": (b"hello world, not weights", "not a weights file this reader knows"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("readme.txt", "hi")
        else:
            path.write_bytes(content)
        with pytest.raises(WeightsFileError, match=message):
            read_weight_file(str(path))


def test_a_file_for_another_network_names_what_does_not_fit(tmp_path):
    path = _unpack("authors_r2.pth.xz", tmp_path)
    with pytest.raises(WeightsMismatchError, match=r"wrong shape, e\.g\. layer1\.0\.conv1"):
        get_model("resnest50_fast_4s2x40d", classes=10, layers=[1, 1, 1, 1], pretrained=path)
    with pytest.raises(WeightsMismatchError, match="not in the file, e.g. .*layer1.1"):
        get_model("resnest26", classes=10, pretrained=path)
    with pytest.raises(WeightsMismatchError, match="for 10 classes"):
        get_model("resnest14", classes=5, pretrained=path)


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_convert_writes_a_gluon_file_with_torchs_logits(tmp_path):
    entry = MANIFEST["networks"][0]                 # the authors' radix-2 network (resnest14)
    source = _unpack(entry["files"][1], tmp_path)   # the legacy format
    output = str(tmp_path / "out" / "converted.params")
    run = _run(CONVERT, source, output, "--model", entry["model"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(torch-legacy): resnest14 with 10 classes" in run.stderr
    assert "max |logit difference| = 0" in run.stderr
    arrays = np.load(os.path.join(FIXTURES, entry["arrays"]))
    net = get_model("resnest14", classes=10, pretrained=output)
    got = net(mx.nd.array(arrays["input"])).asnumpy()
    spread = arrays["logits"].max() - arrays["logits"].min()
    assert np.abs(got - arrays["logits"]).max() <= 1e-4 * spread
    again = _run(CONVERT, source, output, "--model", entry["model"])
    assert again.returncode == 2 and again.stderr.strip().endswith(
        "converted.params exists; give another name or --overwrite")


def test_verify_and_training_take_a_torch_file(digits, tmp_path):
    train, val = digits
    source = _unpack(MANIFEST["networks"][0]["files"][0], tmp_path)   # resnest14, 10 classes
    verify = _run(os.path.join(ROOT, "scripts", "verify.py"), "--model", "resnest14",
                  "--params", source, "--num-classes", "10", "--rec-val", val, "--size", "32",
                  "--crop-ratio", "1", "--json")
    assert verify.returncode == 0, verify.stderr[-2000:]
    assert json.loads(verify.stdout.strip().splitlines()[-1])["images"] == 37
    run = _run(TRAIN, "--workdir", str(tmp_path / "run"), *tiny(digits, "train.max_steps=2",
               f"model.pretrained={source}", "data.num_classes=12"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = run.stdout + run.stderr
    assert "the file's is for 10 classes, the network's for 12" in log
    assert f"loaded 127 parameters from {source}" in log   # all but the classifier's two
