"""Pieces the command-line tools share: building a network from a name or config + weights."""
from ..config import load_config
from ..models import get_model
from ..training.loop import build_network


def add_model_arguments(parser, params_required=True):
    """``--model`` / ``--config`` / ``--params`` / ``--num-classes``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="zoo model name (see resnest-summary)")
    group.add_argument("--config", help="training config (YAML) of the model")
    parser.add_argument("--params", required=params_required,
                        help=".params: ours (best.params/final.params) or published Gluon weights")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the config's, else 1000)")


def load_network(args, ctx):
    """Build the network named by ``args`` and load ``args.params`` (any supported layout).

    Returns
    -------
    tuple
        ``(net, config or None)``.
    """
    config = load_config(args.config) if args.config else None
    classes = args.num_classes or (config.data.num_classes if config else 1000)
    net = build_network(config, classes) if config else get_model(args.model, classes=classes)
    if args.params:
        from ..models.convert import load_weights
        load_weights(net, args.params, ctx=ctx)
    else:
        net.initialize(ctx=ctx)
    return net, config
