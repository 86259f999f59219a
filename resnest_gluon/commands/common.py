"""Pieces the command-line tools share: the network from a name or config + weights, and its
evaluation settings."""
import argparse

from ..config import load_config
from ..data.transforms import INTERPOLATIONS
from ..models import EvalSettings, get_model, resolve_eval_settings
from ..models.splat import implementations_for
from ..training.setup import build_network, eval_settings
from .cli import positive_int


def add_model_arguments(parser, params_required=True):
    """``--model`` / ``--config`` / ``--params`` / ``--num-classes``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="zoo model name (see resnest-summary)")
    group.add_argument("--config", help="training config (YAML) of the model, e.g. the "
                                        "config.yaml a training run wrote")
    parser.add_argument("--params", required=params_required,
                        help="weights: ours (best.params/final.params), published Gluon "
                             ".params, PyTorch .pth/.pt/.bin (the authors' or timm's) or "
                             ".safetensors")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="classes (default: the config's, else 1000)")


def input_size_type(text):
    """argparse type of an input size: an integer >= 32."""
    value = int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"{value} is below 32 (the network downsamples 32x)")
    return value


def crop_ratio_type(text):
    """argparse type of a crop ratio: a number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def add_eval_arguments(parser):
    """``--size`` / ``--crop-ratio`` / ``--interpolation``: overrides of the resolved settings."""
    parser.add_argument("--size", type=input_size_type, default=None,
                        help="input size (default: the config's eval size, else the model's; "
                             "e.g. 256 for resnest101, 320 for resnest200, 416 for resnest269)")
    parser.add_argument("--crop-ratio", type=crop_ratio_type, default=None,
                        help="centre crop / resized shorter side (default: the config's, else "
                             "0.875 below 320 px and size/(size+32) from 320)")
    parser.add_argument("--interpolation", default=None, choices=sorted(INTERPOLATIONS),
                        help="resize filter (default: the model's, bicubic)")


def load_network(args, ctx):
    """Build the network named by ``args`` and load ``args.params`` (any supported layout).

    Returns
    -------
    tuple
        ``(net, config or None)``.
    """
    config = load_config(args.config) if args.config else None
    classes = args.num_classes or (config.data.num_classes if config else 1000)
    net = (build_network(config, classes, ctx.device_type) if config else
           get_model(args.model, classes=classes,
                     **implementations_for(ctx.device_type)))
    if args.params:
        from ..models.convert import load_weights
        load_weights(net, args.params, ctx=ctx)
    else:
        net.initialize(ctx=ctx)
    return net, config


def settings_from_args(args, config) -> EvalSettings:
    """The evaluation settings for ``--config`` or ``--model``, with the flags' overrides."""
    if config is not None:
        return eval_settings(config, args.size, args.crop_ratio, args.interpolation)
    return resolve_eval_settings(args.model, size=args.size, crop_ratio=args.crop_ratio,
                                 interpolation=args.interpolation)
