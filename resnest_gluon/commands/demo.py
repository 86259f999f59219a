"""``make demo``: the zoo table, then a few real training steps of ResNeSt-14 on real photos.

Until the distributed trainer lands, the demo shows what the model package does end to end:
the table of every model (parameters and GFLOPs against the published numbers), then
forward/backward/NAG steps on crops of scikit-learn's sample photos, an export for serving,
and the exported model's agreement with the Gluon one.
"""
import argparse
import logging
import os
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..export import export_symbol
from ..models import get_model
from ..models.summary import model_summary, zoo_table
from . import setup_logging

log = logging.getLogger("demo")


def photo_batch(size=224):
    """Eight real photo crops (two sample photos, four corners each) with labels 0/1."""
    from sklearn.datasets import load_sample_images
    images = load_sample_images().images
    crops, labels = [], []
    for label, img in enumerate(images):
        h, w, _ = img.shape
        for y, x in ((0, 0), (0, w - h // 2), (h // 2, 0), (h // 2, w - h // 2)):
            crops.append(img[y:y + h // 2, x:x + h // 2])
            labels.append(label)
    batch = mx.nd.array(np.stack(crops)).transpose((0, 3, 1, 2))
    batch = mx.nd.contrib.BilinearResize2D(batch, height=size, width=size)
    mean = mx.nd.array([123.7, 116.3, 103.5]).reshape((1, 3, 1, 1))
    std = mx.nd.array([58.4, 57.1, 57.4]).reshape((1, 3, 1, 1))
    return (batch - mean) / std, mx.nd.array(labels)


def run(workdir, steps=8, size=224):
    """Run the demo; returns the losses of the training steps."""
    print("ResNeSt model zoo (parameters include BN statistics, as published):\n")
    print(zoo_table(size=224) + "\n")
    print(model_summary("resnest14", 224) + "\n")
    data, labels = photo_batch(size)
    net = get_model("resnest14", classes=2, last_gamma=True)
    net.initialize(mx.init.MSRAPrelu())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "nag",
                            {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    losses = []
    for step in range(1, steps + 1):
        tic = time.time()
        with autograd.record():
            loss = loss_fn(net(data), labels)
        loss.backward()
        trainer.step(data.shape[0])
        losses.append(float(loss.mean().asscalar()))
        log.info("step %d/%d  loss %.4f  %.1f img/s", step, steps, losses[-1],
                 data.shape[0] / (time.time() - tic))
    result = export_symbol(net, os.path.join(workdir, "resnest14-demo"), input_size=size,
                           batch_size=data.shape[0], sample=data)
    print(f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f} over {steps} NAG steps on "
          f"{data.shape[0]} real photo crops")
    print(f"exported {result.symbol_file} and {result.params_file}; max |exported - gluon| = "
          f"{result.max_abs_diff:.2e}")
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo_output", help="where outputs go")
    parser.add_argument("--steps", type=int, default=8, help="training steps (8)")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.workdir, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
