"""Typed configuration: defaults as dataclasses, YAML files and ``key=value`` overrides as deltas.

This module owns :class:`Config` and its sections, :func:`load_config` and validation. A YAML
file lists only what differs from the defaults here; a command line adds ``section.key=value``
overrides. Unknown or misspelt keys are errors that name the closest valid key; wrong types and
out-of-range values are errors that name the key. Imports nothing else of the package but
:mod:`.errors` and :mod:`.paths`.
"""
import dataclasses
import difflib
import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError
from .paths import read_text

__all__ = ["Config", "ModelConfig", "DataConfig", "TrainConfig", "OptimConfig", "DistConfig",
           "ConfigError", "load_config", "parse_overrides", "config_hash", "to_dict", "config_yaml",
           "validate", "read_yaml"]


class ConfigError(UserError, ValueError):
    """A configuration mistake, with the offending key in the message."""


@dataclasses.dataclass
class ModelConfig:
    """The network. ``name`` picks a zoo spec; ``overrides`` changes any architecture field."""

    name: str = "resnest50"
    dropblock_prob: Optional[float] = None   # final DropBlock prob (stages 3-4); None: spec's
    final_drop: Optional[float] = None       # dropout before the classifier; None: spec's
    last_gamma: bool = True                  # zero-init the last BN gamma of each block
    # start a fresh run from these weights: Gluon .params, PyTorch .pth/.pt/.bin (authors' or
    # timm's) or .safetensors; a classifier for other classes is replaced by a new one
    pretrained: str = ""
    freeze: int = -1        # frozen for fine-tuning: -1 nothing, 0 the stem, k stem + stages 1..k
    # split attention: radix_sum (compiled, CPU float32), batch_dot, broadcast_mul, or auto
    attention_product: str = "auto"
    grouped_conv: str = "auto"        # 3x3 convolutions: single, split-narrow, winograd or auto
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """Where the shards are and how images become batches."""

    train: str = ""                 # .rec file, shard prefix, glob or folder
    val: str = ""
    num_classes: int = 1000
    input_size: int = 224           # training crop
    eval_size: Optional[int] = None     # None: the model's eval size
    crop_ratio: Optional[float] = None  # None: 0.875, or size/(size+32) at 320 and above
    workers: int = 4                # decoding processes per training process
    prefetch: int = 2               # batches in flight per worker
    autoaugment: bool = True
    randaugment_n: int = 0          # RandAugment ops per image (0: off; instead of AutoAugment)
    randaugment_m: float = 9.0      # its magnitude, 0-10 (timm's rand-m9-n2-mstd0.5: 9, 2, 0.5)
    randaugment_mstd: float = 0.5   # std of the per-op magnitude
    min_crop_area: float = 0.08     # RandomResizedCrop area range [min, 1]
    jitter: float = 0.4
    lighting: float = 0.1
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.0       # CutMix Beta(a, a); 0: off
    mix_switch_prob: float = 0.5    # with mixup and CutMix both on: P(CutMix) per batch
    mixup_off_epochs: int = 0       # no mixup (nor CutMix) in the last N epochs
    random_erasing: float = 0.0     # probability per image of erasing a rectangle
    erasing_mode: str = "pixel"     # pixel (random values) | const (the mean colour)
    chunk: int = 128                # sequential-read chunk (records); see data/partition.py
    window: int = 2048              # shuffle window (records)
    max_bad_fraction: float = 0.001     # unreadable records allowed per epoch / evaluation
    normalize_on: str = "auto"      # device (uint8 upload, 4x less), workers, or auto (GPU: device)


@dataclasses.dataclass
class OptimConfig:
    """The optimizer (NAG by default) with warm-up and cosine decay, per update."""

    name: str = "nag"               # nag | sgd | lars | lamb (MXNet's own)
    lr: Optional[float] = None      # peak LR; None: base_lr * global_batch / 256
    base_lr: float = 0.1
    warmup_epochs: float = 5.0
    warmup_lr: float = 0.0
    final_lr: float = 0.0
    schedule: str = "cosine"        # cosine | step | constant
    step_epochs: List[int] = dataclasses.field(default_factory=lambda: [30, 60, 90])
    step_factor: float = 0.1
    momentum: float = 0.9           # nag, sgd, lars
    nesterov: bool = True           # false with name nag: plain momentum SGD (older spelling)
    weight_decay: float = 1e-4
    no_wd_on_bn_bias: bool = True
    clip_grad_norm: float = 0.0     # > 0: clip the global gradient norm (after the allreduce)
    lars_eta: float = 0.001         # LARS trust coefficient
    lars_epsilon: float = 0.0
    lamb_beta1: float = 0.9
    lamb_beta2: float = 0.999
    lamb_epsilon: float = 1e-6
    lamb_bias_correction: bool = True
    head_lr_mult: float = 1.0       # the classifier's LR / the rest's (fine-tuning: e.g. 10)


@dataclasses.dataclass
class TrainConfig:
    """The loop: length, batches, evaluation, checkpoints, logging."""

    epochs: int = 270
    batch_size: int = 128           # per worker and micro-batch
    accumulate: int = 1             # micro-batches per update (global batch x this)
    seed: int = 0
    dtype: str = "float32"          # float32 | float16 (GPU, AMP) | bfloat16 (CPU, AMP)
    ema_decay: float = 0.0          # 0: off; else evaluate/export an EMA of the weights
    eval_every: int = 1             # epochs; the last epoch is always evaluated
    checkpoint_every: int = 1       # epochs; also at the end and on SIGTERM
    keep_checkpoints: int = 3       # newest K (the best is kept as best.params too)
    log_every: int = 50             # steps between metrics-log lines
    max_steps: int = 0              # stop after this many updates (0: no limit)
    hybridize: bool = True
    stall_timeout: float = 1800.0   # seconds without a finished step before the job aborts


@dataclasses.dataclass
class DistConfig:
    """Horovod knobs (used when launched by horovodrun)."""

    fusion_threshold_mb: float = 64.0
    cycle_time_ms: float = 5.0
    fp16_allreduce: bool = False


@dataclasses.dataclass
class Config:
    """Everything a run needs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    dist: DistConfig = dataclasses.field(default_factory=DistConfig)


# The optimizers optim.name selects (all MXNet's own).
OPTIMIZERS = ("nag", "sgd", "lars", "lamb")

# (key, predicate, description) range checks; keys are "section.field".
_RANGES = [
    ("data.num_classes", lambda v: v >= 1, ">= 1"),
    ("data.input_size", lambda v: v >= 32, ">= 32 (the network downsamples 32x)"),
    ("data.eval_size", lambda v: v is None or v >= 32, ">= 32"),
    ("data.crop_ratio", lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    ("data.workers", lambda v: v >= 0, ">= 0"),
    ("data.prefetch", lambda v: v >= 1, ">= 1"),
    ("data.jitter", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.min_crop_area", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data.lighting", lambda v: v >= 0, ">= 0"),
    ("data.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.mixup_alpha", lambda v: v >= 0, ">= 0"),
    ("data.mixup_off_epochs", lambda v: v >= 0, ">= 0"),
    ("data.cutmix_alpha", lambda v: v >= 0, ">= 0"),
    ("data.mix_switch_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.random_erasing", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.erasing_mode", lambda v: v in ("pixel", "const"), "pixel or const"),
    ("data.randaugment_n", lambda v: v >= 0, ">= 0 (0: off)"),
    ("data.randaugment_m", lambda v: 0 <= v <= 10, "in [0, 10]"),
    ("data.randaugment_mstd", lambda v: v >= 0, ">= 0"),
    ("data.chunk", lambda v: v >= 1, ">= 1"),
    ("data.window", lambda v: v >= 1, ">= 1"),
    ("data.max_bad_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.normalize_on", lambda v: v in ("auto", "device", "workers"),
     "one of auto, device, workers"),
    ("model.dropblock_prob", lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    ("model.final_drop", lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    ("model.freeze", lambda v: -1 <= v <= 4, "from -1 (nothing) to 4 (the whole backbone)"),
    ("optim.lr", lambda v: v is None or v > 0, "> 0"),
    ("optim.head_lr_mult", lambda v: v >= 0, ">= 0"),
    ("optim.base_lr", lambda v: v > 0, "> 0"),
    ("optim.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("optim.warmup_lr", lambda v: v >= 0, ">= 0"),
    ("optim.final_lr", lambda v: v >= 0, ">= 0"),
    ("optim.schedule", lambda v: v in ("cosine", "step", "constant"), "cosine|step|constant"),
    ("optim.name", lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    ("optim.clip_grad_norm", lambda v: v >= 0, ">= 0 (0: off)"),
    ("optim.lars_eta", lambda v: v > 0, "> 0"),
    ("optim.lars_epsilon", lambda v: v >= 0, ">= 0"),
    ("optim.lamb_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.lamb_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.lamb_epsilon", lambda v: v > 0, "> 0"),
    ("optim.step_factor", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.epochs", lambda v: v >= 1, ">= 1"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.accumulate", lambda v: v >= 1, ">= 1"),
    ("train.dtype", lambda v: v in ("float32", "float16", "bfloat16"),
     "float32|float16|bfloat16"),
    ("train.ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.eval_every", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.max_steps", lambda v: v >= 0, ">= 0"),
    ("train.stall_timeout", lambda v: v > 0, "> 0"),
    ("dist.fusion_threshold_mb", lambda v: v >= 0, ">= 0"),
    ("dist.cycle_time_ms", lambda v: v > 0, "> 0"),
]


def _valid_keys():
    keys = []
    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(section.type):
            keys.append(f"{section.name}.{field.name}")
    return keys


def _unknown_key(key, candidates):
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key, value, hint):
    """Check/convert ``value`` against the type ``hint``; ConfigError naming ``key``."""
    origin = get_origin(hint)
    if origin is Union:
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = get_args(hint)
        return [_coerce(key, v, inner) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _apply(config: Config, updates: Dict[str, Any], origin: str):
    valid = _valid_keys()
    for key, value in updates.items():
        if key not in valid:
            if key.startswith("model.overrides."):
                config.model.overrides[key.split(".", 2)[2]] = value
                continue
            raise _unknown_key(key, valid)
        section_name, field_name = key.split(".")
        section = getattr(config, section_name)
        hint = get_type_hints(type(section))[field_name]
        try:
            setattr(section, field_name, _coerce(key, value, hint))
        except ConfigError as err:
            raise ConfigError(f"{err} (from {origin})") from None


def _flatten(tree: Dict[str, Any], origin: str) -> Dict[str, Any]:
    sections = [f.name for f in dataclasses.fields(Config)]
    flat = {}
    for section, body in (tree or {}).items():
        if section not in sections:
            raise _unknown_key(section, sections)
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["train.epochs=3", "data.train=/x"]`` -> ``{"train.epochs": 3, ...}`` (YAML values)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. train.epochs=90)")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def validate(config: Config) -> Config:
    """Range checks; raises :class:`ConfigError` naming the key."""
    for key, check, description in _RANGES:
        section, field = key.split(".")
        value = getattr(getattr(config, section), field)
        if not check(value):
            raise ConfigError(f"{key} must be {description}, got {value!r}")
    if config.data.autoaugment and config.data.randaugment_n > 0:
        raise ConfigError("data.autoaugment and data.randaugment_n are alternatives: set "
                          "data.autoaugment=false to use RandAugment")
    return config


def read_yaml(path: str, what: str = "config", error=ConfigError) -> Any:
    """The parsed YAML file at ``path`` (an empty file gives ``{}``).

    A missing file or a YAML syntax error raises ``error`` (default :class:`ConfigError`)
    with a one-line message that names ``what`` the file is meant to be.
    """
    try:
        text = read_text(path, what)
    except UserError as err:
        raise error(str(err)) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file's deltas, then ``key=value`` overrides; validated.

    Parameters
    ----------
    path : str, optional
        YAML file with ``section: {key: value}`` deltas.
    overrides : list of str
        ``section.key=value`` strings (values parsed as YAML).
    """
    config = Config()
    if path:
        tree = read_yaml(path)
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
        _apply(config, _flatten(tree, path), path)
    _apply(config, parse_overrides(overrides), "the command line")
    return validate(config)


def to_dict(config: Config) -> Dict[str, Any]:
    """Plain nested dict (for YAML/JSON)."""
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    """Short hash of the resolved config (recorded in checkpoints)."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_yaml(config: Config) -> str:
    """The resolved config as YAML text (what a run's config.yaml holds)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
