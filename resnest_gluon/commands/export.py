"""``scripts/export.py``: hybridized symbol JSON + params (and ONNX) for serving.

The input size is the model's evaluation size (the config's ``data.eval_size``, else the
model's: 256 for resnest101, 320 for resnest200, 416 for resnest269), as in ``verify``.
Each export is reloaded and compared with the Gluon model on a sample batch; the max abs
difference is printed. ``PREFIX-meta.json`` records what the export was made for (model,
classes, size, crop ratio, interpolation, mean/std); ``predict`` reads it.
"""
import argparse
import logging
import os
import sys

import mxnet as mx
import numpy as np

from ..data.recordio import read_classes_file
from ..export import export_onnx, export_symbol, metadata_path, write_export_metadata
from ..paths import make_parent, output_prefix
from . import setup_logging
from .cli import command
from .common import add_eval_arguments, add_model_arguments, load_network, settings_from_args

log = logging.getLogger("export")


def build_parser():
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    add_model_arguments(parser)
    parser.add_argument("--output", required=True,
                        help="output prefix: PREFIX-symbol.json, PREFIX-0000.params, "
                             "PREFIX-meta.json, PREFIX.onnx; ending in / it names a folder and "
                             "the files take the model's name (out/ -> out/resnest50-...)")
    add_eval_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="fixed batch size (1)")
    parser.add_argument("--classes", default=None,
                        help="classes file (the packer's PREFIX.classes.tsv) whose names go into "
                             "PREFIX-meta.json (default: the one beside the config's "
                             "data.train shards, when there is one)")
    parser.add_argument("--onnx", action="store_true", help="also write PREFIX.onnx")
    parser.add_argument("--fuse", action="store_true",
                        help="also write PREFIX-fused-symbol.json/-0000.params: BatchNorm folded "
                             "into the convolutions and ReLU/sum fused by oneDNN, for CPU "
                             "serving (loads only in MXNet builds with oneDNN, e.g. the CPU "
                             "pip wheels)")
    return parser


def _class_names(args, config):
    path = args.classes
    if path is None and config is not None and config.data.train:
        beside = config.data.train + ".classes.tsv"
        path = beside if os.path.isfile(beside) else None
    if path is None:
        return None
    return [name for _, name in read_classes_file(path)]


@command("export")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    net, config = load_network(args, mx.cpu())
    settings = settings_from_args(args, config)
    names = _class_names(args, config)
    if names is not None and len(names) != net.classes:
        log.error("the classes file lists %d classes, the model has %d", len(names), net.classes)
        return 2
    name = config.model.name if config else args.model
    args.output = output_prefix(args.output, name)
    make_parent(args.output, "--output")
    for stale in (metadata_path(args.output), metadata_path(args.output + "-fused")):
        if os.path.exists(stale):   # never leave metadata beside files it does not describe
            os.remove(stale)
    shape = (args.batch_size, 3, settings.size, settings.size)
    sample = mx.nd.array(np.random.RandomState(0).normal(size=shape).astype("float32"))

    def record(prefix, files):
        path = write_export_metadata(prefix, name, net.classes, settings, args.batch_size, files,
                                     names)
        print(f"meta   {path} (input {settings.size}x{settings.size}, crop ratio "
              f"{settings.crop_ratio:.3f}, {settings.interpolation})")

    result = export_symbol(net, args.output, settings.size, args.batch_size, sample=sample)
    files = [result.symbol_file, result.params_file]
    print(f"symbol {result.symbol_file}\nparams {result.params_file}\n"
          f"max |exported - gluon| = {result.max_abs_diff:.3g} on a {shape} batch")
    if args.fuse:
        fused = export_symbol(net, args.output + "-fused", settings.size, args.batch_size,
                              sample=sample, fuse=True)
        print(f"fused  {fused.symbol_file}\nmax |fused - gluon| = {fused.max_abs_diff:.3g}")
        record(args.output + "-fused", [fused.symbol_file, fused.params_file])
    if args.onnx:
        try:
            diff = export_onnx(result.symbol_file, result.params_file, shape,
                               args.output + ".onnx", sample)
        except RuntimeError as err:
            record(args.output, files)
            log.error("ONNX export failed: %s", err)
            return 2
        files.append(args.output + ".onnx")
        print(f"onnx   {args.output}.onnx\nmax |onnxruntime - mxnet| = {diff:.3g}")
    record(args.output, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
