"""``scripts/convert.py``: write a published weights file (PyTorch, safetensors, Gluon) as a
Gluon ``.params`` file of our structural names.

Every command that takes weights reads all these formats directly; converting once is for
those who want a plain Gluon file (smaller, faster to load, no pickle). The class count is the
file's own (its classifier's rows) unless ``--num-classes`` says otherwise. After writing, the
file is loaded back and its logits on a random batch compared with those of the source's.
"""
import argparse
import logging
import os

import mxnet as mx
import numpy as np

from ..errors import UserError
from ..models import get_model
from ..models.convert import HEAD_PREFIX, load_arrays, read_parameters
from ..models.weight_files import file_format
from ..paths import make_parent, raise_if_full
from . import setup_logging
from .cli import command, positive_int

log = logging.getLogger("convert")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="convert.py", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Example: convert.py resnest50-528c19ca.pth resnest50.params --model resnest50")
    parser.add_argument("source", help="weights file: .pth/.pt/.bin (PyTorch, the authors' or "
                                       "timm's), .safetensors, or Gluon .params")
    parser.add_argument("output", help="the Gluon .params file to write")
    parser.add_argument("--model", required=True,
                        help="our zoo name of the network (timm's resnest50d is resnest50, "
                             "resnest101e is resnest101; the table in docs/reference.md)")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="classes (default: the file's classifier's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def classifier_classes(arrays: dict) -> int:
    """The class count of the classifier among ``arrays`` (1000 without one)."""
    weight = arrays.get(HEAD_PREFIX + "weight")
    if weight is None:   # prefixed Gluon names: the classifier is the one dense layer
        dense = [v for k, v in arrays.items() if "dense" in k and k.endswith("weight")]
        weight = dense[-1] if dense else None
    return int(weight.shape[0]) if weight is not None else 1000


def convert(source: str, output: str, model: str, classes: int = None) -> dict:
    """Load ``source`` into zoo model ``model`` and save it to ``output`` (Gluon .params).

    Returns
    -------
    dict
        ``format`` of the source, ``classes``, ``arrays`` (loaded), and ``max_diff``: the
        largest |logit difference| between the network loaded from ``source`` and the one
        loaded from ``output`` on a random batch (0 when the copy is exact).
    """
    arrays = read_parameters(source, get_model(model))
    classes = classes or classifier_classes(arrays)
    net = get_model(model, classes=classes)
    load_arrays(net, arrays, source=source)
    tmp = f"{output}.tmp{os.getpid()}.params"
    try:
        net.save_parameters(tmp)   # whole or not at all: a failed write leaves no output
        os.replace(tmp, output)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise_if_full(err, os.path.dirname(os.path.abspath(output)), 0, output)
        raise
    again = get_model(model, classes=classes, pretrained=output)
    batch = mx.nd.array(np.random.default_rng(0).standard_normal((2, 3, 64, 64)))
    diff = float(np.abs(net(batch).asnumpy() - again(batch).asnumpy()).max())
    return {"format": file_format(source), "classes": classes, "arrays": len(arrays),
            "max_diff": diff}


@command("convert")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"{args.output} exists; give another name or --overwrite")
    make_parent(args.output, "output")
    result = convert(args.source, args.output, args.model, args.num_classes)
    log.info("%s (%s): %s with %d classes", args.source, result["format"], args.model,
             result["classes"])
    log.info("wrote %s (%.1f MB); reloaded: max |logit difference| = %.3g", args.output,
             os.path.getsize(args.output) / 1e6, result["max_diff"])
    return 0
