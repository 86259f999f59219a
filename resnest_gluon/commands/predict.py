"""``scripts/predict.py``: classify image files with an exported model; top-5 with names."""
import argparse
import json
import logging
import os
import sys

import mxnet as mx
import numpy as np

from ..data import EvalTransform
from ..data.recordio import read_classes_file
from ..data.transforms import MEAN_RGB, STD_RGB
from ..export import load_exported
from ..models.zoo import eval_crop_ratio
from . import setup_logging

log = logging.getLogger("predict")


def predict(net, paths, size, crop_ratio, names=None, top=5):
    """Top-``top`` ``[(label, name, probability)]`` for each image file."""
    transform = EvalTransform(size, crop_ratio)
    mean, std = np.array(MEAN_RGB, np.float32), np.array(STD_RGB, np.float32)
    results = []
    for path in paths:
        with open(path, "rb") as handle:
            rgb = transform(handle.read())
        x = ((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]
        probs = mx.nd.softmax(net(mx.nd.array(x))).asnumpy()[0]
        best = np.argsort(-probs)[:top]
        results.append([(int(i), (names or {}).get(int(i), str(i)), float(probs[i]))
                        for i in best])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--model", required=True,
                        help="export prefix (PREFIX-symbol.json + PREFIX-0000.params)")
    parser.add_argument("--classes", help="classes file written by the packer (names)")
    parser.add_argument("--size", type=int, required=True, help="input size of the export")
    parser.add_argument("--crop-ratio", type=float, default=None)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="JSON lines output")
    parser.add_argument("images", nargs="+", help="image files")
    args = parser.parse_args(argv)
    setup_logging()
    symbol, params = f"{args.model}-symbol.json", f"{args.model}-0000.params"
    for path in [symbol, params] + args.images:
        if not os.path.isfile(path):
            log.error("file not found: %s", path)
            return 2
    net = load_exported(symbol, params)
    names = ({i: name for i, (_, name) in enumerate(read_classes_file(args.classes))}
             if args.classes else None)
    ratio = args.crop_ratio or eval_crop_ratio(args.size)
    try:
        results = predict(net, args.images, args.size, ratio, names, args.top)
    except (OSError, ValueError) as err:
        log.error("%s", err)
        return 2
    for path, top in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": path, "top": [{"label": l, "name": n, "prob": p}
                                                      for l, n, p in top]}))
        else:
            print(path + ": " + ", ".join(f"{n} ({p:.1%})" for _, n, p in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
