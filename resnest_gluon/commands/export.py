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
import shutil
import sys
import tempfile

import mxnet as mx
import numpy as np

from ..data.recordio import read_classes_file
from ..errors import UserError
from ..export import export_files, export_onnx, export_symbol, write_export_metadata
from ..paths import ensure_free_space, make_parent, output_prefix, raise_if_full
from ..training.checkpoint import parameter_bytes
from . import setup_logging
from .cli import command, positive_int
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
    parser.add_argument("--batch-size", type=positive_int, default=1, help="fixed batch size (1)")
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
        raise UserError(f"the classes file lists {len(names)} classes, the model has "
                        f"{net.classes} (--classes, --num-classes)")
    name = config.model.name if config else args.model
    output = output_prefix(args.output, name)
    folder = make_parent(output, "--output")
    needed = int(1.1 * parameter_bytes(net.collect_params().values())
                 * (1 + args.fuse + args.onnx))
    ensure_free_space(folder, needed, f"the export {output}")
    stage = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        made = _export_into(net, os.path.join(stage, os.path.basename(output)), args, settings,
                            name, names)
        _install(stage, output)
    except (OSError, mx.base.MXNetError) as err:
        raise_if_full(err, folder, needed, f"the export {output}")
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for line in made.report:
        print(line.replace(os.path.join(stage, ""), os.path.join(folder, "")))
    if made.onnx_error is not None:
        log.error("ONNX export failed (the other files are written): %s", made.onnx_error)
        return 2
    return 0


class _Made:
    """What :func:`_export_into` wrote and printed."""

    def __init__(self):
        self.report, self.onnx_error = [], None


def _export_into(net, prefix, args, settings, name, names) -> _Made:
    """Write the export (symbol + params, fused, ONNX, metadata) under ``prefix``."""
    made = _Made()
    shape = (args.batch_size, 3, settings.size, settings.size)
    sample = mx.nd.array(np.random.RandomState(0).normal(size=shape).astype("float32"))

    def record(at, files):
        path = write_export_metadata(at, name, net.classes, settings, args.batch_size, files,
                                     names)
        made.report.append(f"meta   {path} (input {settings.size}x{settings.size}, crop ratio "
                           f"{settings.crop_ratio:.3f}, {settings.interpolation})")

    result = export_symbol(net, prefix, settings.size, args.batch_size, sample=sample)
    files = [result.symbol_file, result.params_file]
    made.report += [f"symbol {result.symbol_file}", f"params {result.params_file}",
                    f"max |exported - gluon| = {result.max_abs_diff:.3g} on a {shape} batch"]
    if args.fuse:
        fused = export_symbol(net, prefix + "-fused", settings.size, args.batch_size,
                              sample=sample, fuse=True)
        made.report += [f"fused  {fused.symbol_file}",
                        f"max |fused - gluon| = {fused.max_abs_diff:.3g}"]
        record(prefix + "-fused", [fused.symbol_file, fused.params_file])
    if args.onnx:
        try:
            diff = export_onnx(result.symbol_file, result.params_file, shape, prefix + ".onnx",
                               sample)
            files.append(prefix + ".onnx")
            made.report += [f"onnx   {prefix}.onnx", f"max |onnxruntime - mxnet| = {diff:.3g}"]
        except RuntimeError as err:
            made.onnx_error = err
    record(prefix, files)
    return made


def _install(stage, output):
    """Replace the export at ``output`` (all its files, so that nothing of an older export
    stays beside the new one) by the files made in ``stage``."""
    base = os.path.basename(output)
    folder = os.path.dirname(os.path.abspath(output))
    for old in export_files(output) + export_files(output + "-fused"):
        if os.path.exists(old):
            os.remove(old)
    for new in sorted(os.listdir(stage)):
        if new.startswith(base):
            os.replace(os.path.join(stage, new), os.path.join(folder, new))


if __name__ == "__main__":
    sys.exit(main())
