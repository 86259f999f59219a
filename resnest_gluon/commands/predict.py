"""``scripts/predict.py``: classify image files with an exported model; top-5 with names.

The export's ``PREFIX-meta.json`` says what input the model was made for (size, crop ratio,
interpolation, mean/std) and the class names; a ``--size`` that disagrees with it is refused.
"""
import argparse
import json
import logging
import os
import sys

import mxnet as mx
import numpy as np

from ..data import EvalTransform, Normalization
from ..data.recordio import RecordFormatError, read_classes_file
from ..export import load_exported, metadata_path, read_export_metadata
from ..models import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, EvalSettings, eval_crop_ratio
from . import setup_logging
from .common import crop_ratio_type, input_size_type

log = logging.getLogger("predict")


class UsageError(ValueError):
    """A request that contradicts the export."""


def predict(net, paths, settings: EvalSettings, names=None, top=5):
    """Top-``top`` ``[(label, name, probability)]`` for each image file."""
    transform = EvalTransform(settings.size, settings.crop_ratio, settings.interpolation)
    normalization = Normalization(settings.mean, settings.std)
    results = []
    for path in paths:
        with open(path, "rb") as handle:
            x = normalization.image(transform(handle.read()))[None]
        probs = mx.nd.softmax(net(mx.nd.array(x))).asnumpy()[0]
        best = np.argsort(-probs)[:top]
        results.append([(int(i), (names or {}).get(int(i), str(i)), float(probs[i]))
                        for i in best])
    return results


def resolve_settings(prefix, meta, size=None, crop_ratio=None) -> EvalSettings:
    """The settings to serve the export with: its metadata's; ``size`` must agree with it.

    Without metadata (an export of an older version) ``size`` is required and the ImageNet
    normalisation is assumed.
    """
    if meta is None:
        if size is None:
            raise UsageError(f"{metadata_path(prefix)} not found (an export made before "
                             f"exports recorded their settings): pass --size")
        return EvalSettings(size, crop_ratio or eval_crop_ratio(size), "bicubic",
                            IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    if size is not None and size != meta["size"]:
        raise UsageError(f"--size {size} conflicts with the export: {meta['model']} was "
                         f"exported for {meta['size']}x{meta['size']} input "
                         f"({metadata_path(prefix)}); drop --size or export again at {size}")
    return EvalSettings(meta["size"], crop_ratio or meta["crop_ratio"], meta["interpolation"],
                        tuple(meta["mean"]), tuple(meta["std"]))


def build_parser():
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    parser.add_argument("--model", required=True,
                        help="export prefix (PREFIX-symbol.json + PREFIX-0000.params + "
                             "PREFIX-meta.json)")
    parser.add_argument("--classes", help="classes file written by the packer (default: the "
                                          "names recorded in the export)")
    parser.add_argument("--size", type=input_size_type, default=None,
                        help="input size; only needed for exports without PREFIX-meta.json, "
                             "and must match it otherwise")
    parser.add_argument("--crop-ratio", type=crop_ratio_type, default=None,
                        help="centre crop / resized shorter side (default: the export's)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="JSON lines output")
    parser.add_argument("images", nargs="+", help="image files")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    symbol, params = f"{args.model}-symbol.json", f"{args.model}-0000.params"
    for path in [symbol, params] + args.images:
        if not os.path.isfile(path):
            log.error("file not found: %s", path)
            return 2
    try:
        meta = read_export_metadata(args.model)
        settings = resolve_settings(args.model, meta, args.size, args.crop_ratio)
        names = ([name for _, name in read_classes_file(args.classes)] if args.classes
                 else (meta or {}).get("class_names"))
        net = load_exported(symbol, params)
        results = predict(net, args.images, settings, dict(enumerate(names or [])), args.top)
    except (OSError, ValueError, RecordFormatError) as err:
        log.error("%s", err)
        return 2
    for path, top in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": path, "top": [{"label": k, "name": n, "prob": p}
                                                      for k, n, p in top]}))
        else:
            print(path + ": " + ", ".join(f"{n} ({p:.1%})" for _, n, p in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
