"""One speed measurement of timm's PyTorch ResNeSt, for ``scripts/bench_model.py``.

Run as a script by an interpreter that has torch and timm (the project never installs
either, and nothing in the package imports this module): it prints one JSON line with the
same fields as :func:`resnest_gluon.commands.bench_model.measure`. The network is timm's
default (DropBlock and dropout off), float32 NCHW, eager; inference under
``torch.inference_mode`` in eval mode, a training step is forward, cross-entropy, backward and
a Nesterov SGD update (the recipe's optimizer, as in our measurement).

Usage: ``python timm_measure.py TIMM_NAME MODE BATCH SIZE REPEATS THREADS``.
"""
import json
import resource
import sys

from timing import median_step_seconds  # this folder is on the path of a script


def measure(name, mode, batch, size, repeats, threads, warmup=2):
    """images/s (median of ``repeats`` timed steps after ``warmup``) and peak RSS in MB."""
    import timm
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False)
    x = torch.rand(batch, 3, size, size)
    y = torch.arange(batch) % 1000
    if mode == "infer":
        net.eval()

        def step():
            with torch.inference_mode():
                net(x)
    else:
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                    weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()
    seconds = median_step_seconds(step, repeats, warmup)
    return {"img_per_s": batch / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


if __name__ == "__main__":
    name, mode, batch, size, repeats, threads = sys.argv[1:7]
    print(json.dumps(measure(name, mode, int(batch), int(size), int(repeats), int(threads))))
