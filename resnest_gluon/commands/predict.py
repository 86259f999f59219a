"""``scripts/predict.py``: classify image files with an exported model; top-5 with names.

The export's ``PREFIX-meta.json`` says what input the model was made for (size, crop ratio,
interpolation, mean/std) and the class names; a ``--size`` that disagrees with it is refused.
"""
import argparse
import glob
import json
import logging
import os
import sys

import mxnet as mx
import numpy as np

from ..data import EvalTransform, Normalization
from ..data.recordio import read_classes_file
from ..data.transforms import DECODE_ERRORS, decode_error
from ..errors import UserError
from ..export import load_exported, metadata_path, read_export_metadata
from ..models import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, EvalSettings, eval_crop_ratio
from . import setup_logging
from .cli import command, positive_int
from .common import crop_ratio_type, input_size_type

log = logging.getLogger("predict")


class UsageError(UserError, ValueError):
    """A request that contradicts the export."""


def predict(net, paths, settings: EvalSettings, names=None, top=5):
    """Classify each image file.

    Yields
    ------
    tuple
        ``(path, [(label, name, probability)] best first, None)``, or ``(path, None, reason)``
        for a file that cannot be read as an image (missing, damaged, not an image, a
        decompression bomb); the other files are still classified.
    """
    transform = EvalTransform(settings.size, settings.crop_ratio, settings.interpolation)
    normalization = Normalization(settings.mean, settings.std)
    for path in paths:
        try:
            with open(path, "rb") as handle:
                x = normalization.image(transform(handle.read()))[None]
        except DECODE_ERRORS as err:
            yield path, None, decode_error(err)
            continue
        probs = mx.nd.softmax(net(mx.nd.array(x))).asnumpy()[0]
        best = np.argsort(-probs)[:top]
        yield path, [(int(i), (names or {}).get(int(i), str(i)), float(probs[i]))
                     for i in best], None


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


def _export_prefix(model: str) -> str:
    """``--model`` as an export prefix; a folder holding one export stands for it."""
    if not (model.endswith(("/", os.sep)) or os.path.isdir(model)):
        return model
    found = sorted(path[:-len("-symbol.json")]
                   for path in glob.glob(os.path.join(glob.escape(model), "*-symbol.json")))
    plain = [p for p in found if not p.endswith("-fused")]
    if len(plain) != 1:
        raise UsageError(f"--model {model} is a folder holding {len(plain)} exports"
                         f"{': ' + ', '.join(map(os.path.basename, plain)) if plain else ''}; "
                         f"give the prefix of one, e.g. {plain[0] if plain else 'DIR/resnest50'}")
    return plain[0]


def build_parser():
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    parser.add_argument("--model", required=True,
                        help="export prefix (PREFIX-symbol.json + PREFIX-0000.params + "
                             "PREFIX-meta.json), or a folder holding one export")
    parser.add_argument("--classes", help="classes file written by the packer (default: the "
                                          "names recorded in the export)")
    parser.add_argument("--size", type=input_size_type, default=None,
                        help="input size; only needed for exports without PREFIX-meta.json, "
                             "and must match it otherwise")
    parser.add_argument("--crop-ratio", type=crop_ratio_type, default=None,
                        help="centre crop / resized shorter side (default: the export's)")
    parser.add_argument("--top", type=positive_int, default=5, help="classes shown per image (5)")
    parser.add_argument("--json", action="store_true", help="JSON lines output")
    parser.add_argument("images", nargs="+", help="image files")
    return parser


@command("predict")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    prefix = _export_prefix(args.model)
    symbol, params = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    for path in (symbol, params):
        if not os.path.isfile(path):
            raise UsageError(f"export file not found: {path} (--model is the prefix given to "
                             f"export.py --output)")
    meta = read_export_metadata(prefix)
    settings = resolve_settings(prefix, meta, args.size, args.crop_ratio)
    names = ([name for _, name in read_classes_file(args.classes)] if args.classes
             else (meta or {}).get("class_names"))
    net = load_exported(symbol, params)
    failed = 0
    for path, top, reason in predict(net, args.images, settings, dict(enumerate(names or [])),
                                     args.top):
        if top is None:
            failed += 1
            log.error("%s: cannot classify: %s", path, reason)
        elif args.json:
            print(json.dumps({"image": path, "top": [{"label": k, "name": n, "prob": p}
                                                      for k, n, p in top]}), flush=True)
        else:
            print(path + ": " + ", ".join(f"{n} ({p:.1%})" for _, n, p in top), flush=True)
    if failed:
        log.error("%d of %d image(s) could not be classified", failed, len(args.images))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
