"""``scripts/export.py``: hybridized symbol JSON + params (and ONNX) for serving.

Each export is reloaded and compared with the Gluon model on a sample batch; the max abs
difference is printed.
"""
import argparse
import logging
import sys

import mxnet as mx
import numpy as np

from ..export import export_onnx, export_symbol
from ..models import get_spec
from ..models.convert import WeightsMismatchError
from . import setup_logging
from .common import add_model_arguments, load_network

log = logging.getLogger("export")


def build_parser():
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    add_model_arguments(parser)
    parser.add_argument("--output", required=True,
                        help="output prefix: PREFIX-symbol.json, PREFIX-0000.params, PREFIX.onnx")
    parser.add_argument("--size", type=int, default=None, help="input size (model eval size)")
    parser.add_argument("--batch-size", type=int, default=1, help="fixed batch size (1)")
    parser.add_argument("--onnx", action="store_true", help="also write PREFIX.onnx")
    parser.add_argument("--fuse", action="store_true",
                        help="also write PREFIX-fused-symbol.json/-0000.params: BatchNorm folded "
                             "into the convolutions and ReLU/sum fused by oneDNN, for CPU "
                             "serving (loads only in MXNet builds with oneDNN, e.g. the CPU "
                             "pip wheels)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        net, config = load_network(args, mx.cpu())
    except (FileNotFoundError, WeightsMismatchError, ValueError) as err:
        log.error("%s", err)
        return 2
    name = config.model.name if config else args.model
    size = args.size or (config.data.eval_size or config.data.input_size if config
                         else get_spec(name).eval_size)
    shape = (args.batch_size, 3, size, size)
    sample = mx.nd.array(np.random.RandomState(0).normal(size=shape).astype("float32"))
    result = export_symbol(net, args.output, size, args.batch_size, sample=sample)
    print(f"symbol {result.symbol_file}\nparams {result.params_file}\n"
          f"max |exported - gluon| = {result.max_abs_diff:.3g} on a {shape} batch")
    if args.fuse:
        fused = export_symbol(net, args.output + "-fused", size, args.batch_size, sample=sample,
                              fuse=True)
        print(f"fused  {fused.symbol_file}\nmax |fused - gluon| = {fused.max_abs_diff:.3g}")
    if args.onnx:
        diff = export_onnx(result.symbol_file, result.params_file, shape,
                           args.output + ".onnx", sample)
        print(f"onnx   {args.output}.onnx\nmax |onnxruntime - mxnet| = {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
