"""Our networks compute what the authors' own Gluon code computes (``resnest.gluon``, the
pinned ``resnest`` package): the same parameters by name, and with the same random weights
the same logits within 1e-4 of the logit range, for every depth and variant of the zoo. The
speed work on split attention may change how the numbers are computed, never which."""
import os
import tempfile

import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import get_model, list_models
from resnest_gluon.models import count_params
from resnest_gluon.peers import authors_twin, randomize_batchnorm


def _shared_weights(name, seed):
    """The authors' network with seeded weights, and ours loaded from its parameter file."""
    authors = authors_twin(name, classes=10)
    mx.random.seed(seed)
    randomize_batchnorm(authors, seed, gamma=(0.2, 0.6))
    ours = get_model(name, classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "authors.params")
        authors.save_parameters(path)
        ours.load_parameters(path)      # raises on any missing, extra or misshapen name
    return ours, authors


@pytest.mark.parametrize("name", ["resnest14", "resnest50", "resnest101", "resnet50d"] +
                         [n for n in list_models() if n.startswith("resnest50_fast")])
def test_logits_equal_authors_gluon(name):
    ours, authors = _shared_weights(name, seed=11)
    x = mx.nd.random.uniform(-2, 2, shape=(2, 3, 64, 72), ctx=mx.cpu())
    expected = authors(x).asnumpy()
    assert count_params(ours) == sum(int(np.prod(p.shape)) for p in
                                     authors.collect_params().values())
    for hybridize in (False, True):
        if hybridize:
            ours.hybridize(static_alloc=True, static_shape=True)
        got = ours(x).asnumpy()
        spread = float(expected.max() - expected.min())
        assert spread > 0.1, "degenerate logits: the comparison would prove nothing"
        assert np.abs(got - expected).max() <= 1e-4 * spread, (name, hybridize)


def test_comparison_fails_when_one_weight_differs():
    """The check above can fail: one negated split-attention convolution moves the logits."""
    ours, authors = _shared_weights("resnest14", seed=3)
    x = mx.nd.random.uniform(-2, 2, shape=(2, 3, 64, 64))
    expected = authors(x).asnumpy()
    weight = next(p for n, p in ours._collect_params_with_prefix().items()
                  if n.endswith("conv.weight"))
    weight.set_data(-weight.data())
    spread = float(expected.max() - expected.min())
    assert np.abs(ours(x).asnumpy() - expected).max() > 1e-4 * spread
