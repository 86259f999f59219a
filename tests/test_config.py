"""Configs: typed defaults, YAML deltas, overrides, clear errors; schedules."""
import math

import pytest
import yaml

from resnest_gluon.config import ConfigError, config_hash, load_config
from resnest_gluon.training.schedule import Schedule, dropblock_prob_at, peak_lr

CONFIGS = ["resnest14", "resnest26", "resnest50", "resnest101", "resnest200", "resnest269"]


@pytest.mark.parametrize("name", CONFIGS)
def test_published_recipe_configs(name):
    config = load_config(f"configs/{name}.yaml")
    assert config.model.name == name
    assert config.train.epochs == 270 and config.optim.warmup_epochs == 5
    assert config.optim.schedule == "cosine" and config.optim.nesterov
    assert config.optim.momentum == 0.9 and config.optim.weight_decay == 1e-4
    assert config.optim.no_wd_on_bn_bias and config.model.last_gamma
    assert config.data.label_smoothing == 0.1 and config.data.mixup_alpha == 0.2
    assert config.data.autoaugment
    assert config.optim.lr is None and config.optim.base_lr == 0.1     # 0.1 x global/256
    batch = {"resnest101": 64, "resnest200": 32, "resnest269": 32}.get(name, 128)
    assert config.train.batch_size == batch
    assert config.model.dropblock_prob == (0.0 if name == "resnest14" else 0.1)
    assert (config.model.final_drop or 0.0) == (0.2 if name in ("resnest200", "resnest269")
                                                else 0.0)
    crops = {"resnest101": (224, 256), "resnest200": (256, 320), "resnest269": (320, 416)}
    assert (config.data.input_size, config.data.eval_size or 224) == crops.get(name, (224, 224))


def test_resnest50_peak_lr_at_64_gpus():
    config = load_config("configs/resnest50.yaml")
    assert peak_lr(config.optim.base_lr, 64 * config.train.batch_size) == pytest.approx(3.2)


def test_overrides_and_types():
    config = load_config("configs/resnest50.yaml", ["train.epochs=3", "optim.lr=0.4",
                                                    "data.train=/x/train", "data.num_classes=10",
                                                    "model.overrides.radix=4"])
    assert config.train.epochs == 3 and config.optim.lr == 0.4
    assert config.data.train == "/x/train" and config.model.overrides == {"radix": 4}
    assert load_config(None, ["optim.weight_decay=5e-5"]).optim.weight_decay == 5e-5


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("trian.epochs=3", "did you mean 'train.epochs'"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("data.input_size=16", "data.input_size must be >= 32"),
    ("train.batch_size=abc", "train.batch_size must be an integer"),
    ("data.autoaugment=3", "data.autoaugment must be true or false"),
    ("train.dtype=float64", "train.dtype"),
    ("epochs", "not key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"optim": {"momentun": 0.9}}))
    with pytest.raises(ConfigError, match="did you mean 'optim.momentum'"):
        load_config(str(path))
    path.write_text(yaml.safe_dump({"optimizer": {"lr": 1}}))
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_config_hash_changes_with_content():
    assert config_hash(load_config()) == config_hash(load_config())
    assert config_hash(load_config()) != config_hash(load_config(None, ["train.epochs=3"]))


def test_schedule_warmup_then_cosine():
    s = Schedule(peak=3.2, steps_per_epoch=100, epochs=10, warmup_epochs=2)
    assert s(0) == 0.0
    assert s(100) == pytest.approx(1.6)               # half-way through warm-up
    assert s(200) == pytest.approx(3.2)               # peak
    assert s(600) == pytest.approx(1.6)               # half-way through the cosine
    assert s(1000) == pytest.approx(0.0, abs=1e-12)
    assert all(s(i) >= s(i + 1) for i in range(200, 999))
    step = Schedule(peak=1.0, steps_per_epoch=10, epochs=100, warmup_epochs=0, kind="step",
                    step_epochs=(30, 60))
    assert (step(299), step(300), step(600)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))


def test_dropblock_ramp():
    assert dropblock_prob_at(0, 270, 0.1) == pytest.approx(0.1 / 270)
    assert dropblock_prob_at(269, 270, 0.1) == pytest.approx(0.1)
    assert dropblock_prob_at(100, 270, 0.0) == 0.0
    assert math.isclose(dropblock_prob_at(134, 270, 0.1), 0.05)
