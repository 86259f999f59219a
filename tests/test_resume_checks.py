"""Resume compatibility (issue case 3): a checkpoint of another model is refused before
anything is written, with the differences listed; a changed config that can resume keeps the
earlier one; ``model.pretrained`` starts a new run from a checkpoint's weights."""
import os

import mxnet as mx
import numpy as np
from runs import read_text, tiny, train_cli

from resnest_gluon.config import load_config
from resnest_gluon.training import fit
from resnest_gluon.training.dist import init_distributed
from resnest_gluon.training.evaluate import structural_params
from resnest_gluon.training.setup import restore_state, setup_run


def _snapshot(workdir):
    """Name -> (size, mtime) of every file under ``workdir`` except the lock."""
    found = {}
    for folder, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(folder, name)
            if name != ".lock":
                found[os.path.relpath(path, workdir)] = (os.path.getsize(path),
                                                         os.path.getmtime(path))
    return found


def test_resuming_another_model_lists_the_differences_and_writes_nothing(digits, tmp_path):
    fit(load_config(None, tiny(digits, "train.max_steps=2")), str(tmp_path))
    before = _snapshot(tmp_path)
    for extra, expected in (
            (["model.name=resnest26"], ["model.name 'resnest14' in the checkpoint, "
                                        "'resnest26' now", "parameters: "]),
            (["data.num_classes=12"], ["data.num_classes 10 in the checkpoint, 12 now",
                                       "have the wrong shape, e.g. fc.weight: file (10, "])):
        run = train_cli(tmp_path, tiny(digits, *extra))
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 2 and "Traceback" not in output, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert "cannot resume from" in last and "step-00000002, it holds another model" in last
        for words in expected:
            assert words in last, (words, last)
        assert "another --workdir" in last and "model.pretrained=" in last
        assert _snapshot(tmp_path) == before          # config.yaml, metrics, checkpoints
    assert load_config(str(tmp_path / "config.yaml")).model.name == "resnest14"


def test_a_changed_config_that_resumes_keeps_the_earlier_one(digits, tmp_path):
    fit(load_config(None, tiny(digits, "train.max_steps=2")), str(tmp_path))
    first = read_text(tmp_path / "config.yaml")
    fit(load_config(None, tiny(digits, "train.max_steps=4", "optim.base_lr=0.1")),
        str(tmp_path))
    assert read_text(tmp_path / "config-00000002.yaml") == first
    now = load_config(str(tmp_path / "config.yaml"))
    assert (now.optim.base_lr, now.train.max_steps) == (0.1, 4)
    # a relaunch with the same config changes nothing
    fit(load_config(None, tiny(digits, "train.max_steps=4", "optim.base_lr=0.1")),
        str(tmp_path))
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("config")) == [
        "config-00000002.yaml", "config.yaml"]


def test_pretrained_starts_a_new_run_from_a_checkpoints_weights(digits, tmp_path):
    fit(load_config(None, tiny(digits, "train.max_steps=2")), str(tmp_path / "old"))
    weights = str(tmp_path / "old" / "checkpoints" / "step-00000002" / "model.params")
    config = load_config(None, tiny(digits, f"model.pretrained={weights}"))
    run = setup_run(config, str(tmp_path / "new"), init_distributed())
    state = restore_state(run)
    assert state.global_step == 0
    saved = mx.nd.load(weights)
    params = structural_params(run.net)
    assert set(saved) == set(params)
    for name, param in params.items():
        np.testing.assert_array_equal(param.data().asnumpy(), saved[name].asnumpy())
