"""DropBlock: active in training, exactly absent in inference (also hybridized), tunable."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from resnest_gluon.models import DropBlock, get_dropblock_prob, get_model, set_dropblock_prob


def _train_forward(block, x):
    with autograd.record(train_mode=True):
        return block(x)


@pytest.mark.parametrize("hybridize", [False, True])
def test_training_drops_blocks_per_sample_and_keeps_expectation(hybridize):
    block = DropBlock(0.2, 3)
    if hybridize:
        block.hybridize(static_alloc=True)
    x = mx.nd.ones((64, 4, 16, 16))
    y = _train_forward(block, x).asnumpy()
    zero = y == 0
    dropped = zero.mean()
    assert 0.1 < dropped < 0.3                       # about drop_prob of the map
    # per-sample masks: samples differ
    assert not np.array_equal(zero[0], zero[1])
    # each kept value is rescaled so the sample mean is unchanged
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    # dropped regions are 3x3 blocks: an isolated dropped pixel cannot occur in the interior
    interior = zero[:, :, 1:-1, 1:-1]
    neighbours = sum(np.roll(np.roll(zero, di, 2), dj, 3)[:, :, 1:-1, 1:-1]
                     for di in (-1, 0, 1) for dj in (-1, 0, 1))
    assert (neighbours[interior] >= 4).all()


def test_inference_is_identity_after_hybridized_training_step():
    net = get_model("resnest14", classes=5, dropblock_prob=0.3)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(2, 3, 64, 64))
    # a training step traces the graph first ...
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01})
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    trainer.step(2)
    train_a = _train_forward(net, x).asnumpy()
    train_b = _train_forward(net, x).asnumpy()
    assert not np.allclose(train_a, train_b)          # dropping in training
    # ... and inference afterwards is deterministic and equals a DropBlock-free net
    infer_a = net(x).asnumpy()
    infer_b = net(x).asnumpy()
    np.testing.assert_array_equal(infer_a, infer_b)
    set_dropblock_prob(net, 0.0)
    np.testing.assert_allclose(net(x).asnumpy(), infer_a, rtol=1e-6, atol=1e-6)


def test_probability_change_takes_effect_on_hybridized_net():
    net = get_model("resnest14", classes=5)           # DropBlock layers present, p = 0
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    x = mx.nd.random.normal(shape=(2, 3, 64, 64))
    a = _train_forward(net, x).asnumpy()
    b = _train_forward(net, x).asnumpy()
    np.testing.assert_allclose(a, b, rtol=1e-5)       # p = 0: training is deterministic
    assert set_dropblock_prob(net, 0.5) == 6           # 3 per block, stages 3 and 4
    assert get_dropblock_prob(net) == 0.5
    c = _train_forward(net, x).asnumpy()
    d = _train_forward(net, x).asnumpy()
    assert not np.allclose(c, d)
    # stages 1-2 carry no DropBlock
    assert all(b.dropblock1 is None for b in net.layer1) and all(
        b.dropblock1 is not None for b in net.layer4)


def test_float16_mask():
    block = DropBlock(0.2)
    block.cast("float16")
    block.hybridize()
    y = _train_forward(block, mx.nd.ones((4, 2, 8, 8), dtype="float16"))
    assert y.dtype == np.float16
    assert (y.asnumpy() == 0).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        DropBlock(0.1, 4)
    with pytest.raises(ValueError, match="probability"):
        DropBlock(1.5)
