"""Inference graphs fused by oneDNN for CPUs.

This module owns :func:`fuse_for_cpu_inference`, the one place that applies MXNet's oneDNN
("MKLDNN") subgraph pass to a network: BatchNorm folded into the convolutions, ReLU and the
residual additions fused into them. ``export.py --fuse`` writes such a graph and
``verify.py`` evaluates with one on CPUs. The logits agree with the plain graph's to about
1e-6 of their range (float32 rounding of the folded weights), not bit for bit.

The pass folds BatchNorm into the convolution weights when it runs: a fused network that
then receives other weights goes on computing with the folded old ones (MXNet 1.9.1). Fuse
again after every change of weights, or use the plain graph (the training loop's evaluation
network receives new weights every evaluation and stays plain).
"""

__all__ = ["fuse_for_cpu_inference", "unfuse"]


def fuse_for_cpu_inference(net, sample):
    """Hybridize ``net`` (static memory) and fuse its graph for inputs shaped like
    ``sample`` (an NDArray on the CPU); returns ``net``. Inference only: the fused graph has
    no backward pass, and the weights it folds are those ``net`` holds now."""
    net.hybridize(static_alloc=True, static_shape=True)
    net.optimize_for(sample, backend="MKLDNN", static_alloc=True, static_shape=True)
    return net


def unfuse(net):
    """Back to the plain hybridized graph (after :func:`fuse_for_cpu_inference`)."""
    net.hybridize(static_alloc=True, static_shape=True)
    return net
