"""The compiled BatchNorm + ReLU (``resnest_batchnorm_relu``, models/csrc/batchnorm_relu.cc).

The operator itself must compute BatchNorm followed by ReLU (float64 NumPy as the reference),
update the moving statistics as MXNet's BatchNorm does, and take its mode from the graph. In a
network it runs after the Winograd convolution (CPUs with AVX-512, where CI runs); there the
network must train and evaluate like the one with MXNet's BatchNorm, honour frozen stages and
accumulated gradients, and export MXNet's own operators. Elsewhere the network keeps MXNet's
BatchNorm; each test checks the side this machine is on.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from resnest_gluon.models import get_model
from resnest_gluon.models.extension import (
    BATCHNORM_RELU_OP,
    from_group_blocked,
    load_batchnorm_relu,
    to_group_blocked,
    winograd_conv_available,
)
from resnest_gluon.models.splat import (
    BatchNormReLU,
    grouped_conv_for,
    implementations_for,
    portable_products,
)
from resnest_gluon.peers import randomize_batchnorm

HAS_WINOGRAD = winograd_conv_available()
EPS, MOMENTUM = 1e-5, 0.9


def _reference(x, dy, dpooled, gamma, beta, mean, var, batch_stats, passed):
    """y, its spatial means, dx, dgamma, dbeta in float64, for the gradients ``dy`` of y and
    ``dpooled`` of the means; ``passed`` is where the ReLU let its input through (taken from
    the operator's own output: at y == 0 either side is right)."""
    plane = x.shape[2] * x.shape[3]
    x = x.astype(np.float64)
    dy = dy.astype(np.float64) + dpooled.astype(np.float64)[:, :, None, None] / plane
    axes, count = (0, 2, 3), x.size / x.shape[1]
    if batch_stats:
        mean, var = x.mean(axes), x.var(axes)
    inv = 1 / np.sqrt(var.astype(np.float64) + EPS)

    def per_channel(v):
        return np.asarray(v, np.float64).reshape(1, -1, 1, 1)
    xhat = (x - per_channel(mean)) * per_channel(inv)
    y = np.maximum(0, xhat * per_channel(gamma) + per_channel(beta))
    g = dy * passed
    dbeta, dgamma = g.sum(axes), (g * xhat).sum(axes)
    scale = per_channel(gamma * inv)
    dx = (scale * (g - per_channel(dbeta) / count - xhat * per_channel(dgamma) / count)
          if batch_stats else g * scale)
    return y, y.mean(axis=(2, 3)), dx, dgamma, dbeta


def _close(got, expected, tol=1e-5):
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("shape", [(4, 32, 7, 9), (3, 16, 14, 14), (2, 48, 5, 3),
                                   (2, 32, 20, 20)])
@pytest.mark.parametrize("mode", ["train", "predict", "frozen"])
@pytest.mark.parametrize("layout", ["plain", "one group blocked", "groups of 16 blocked"])
def test_it_computes_batchnorm_then_relu(shape, mode, layout):
    """Also with x (and so its gradient) in the group-blocked layout of the Winograd
    operator's output (AVX-512 code, used only where that operator runs)."""
    load_batchnorm_relu()
    groups = {"plain": 0, "one group blocked": 1, "groups of 16 blocked": shape[1] // 16}[layout]
    if groups and not HAS_WINOGRAD:
        return
    rng = np.random.RandomState(sum(shape))
    channels = shape[1]
    # a mean far from zero: the variance must not lose its precision to it
    x = rng.randn(*shape).astype(np.float32) * 3 + 40
    dy = rng.randn(*shape).astype(np.float32)
    dpooled = rng.randn(*shape[:2]).astype(np.float32) * 10
    gamma, beta = rng.rand(channels) + 0.5, rng.randn(channels)
    moving_mean, moving_var = rng.randn(channels) + 40, rng.rand(channels) * 9 + 4
    x_in = to_group_blocked(x, groups) if groups else x
    arrays = [mx.nd.array(v) for v in (x_in, gamma, beta, moving_mean, moving_var)]
    for array in arrays[:3]:
        array.attach_grad()
    training = mode != "predict"
    with autograd.record(train_mode=training):
        flag = mx.nd.array([1.0 if training else 0.0])
        outputs = getattr(mx.nd, BATCHNORM_RELU_OP)(*arrays, flag, eps=EPS, momentum=MOMENTUM,
                                                    use_global_stats=int(mode == "frozen"),
                                                    blocked_groups=groups)
        y, pooled = outputs[0], outputs[3]
        loss = (y * mx.nd.array(dy)).sum() + (pooled * mx.nd.array(dpooled)).sum()
    loss.backward()
    batch_stats = mode == "train"
    passed = y.asnumpy() > 0
    want = _reference(x, dy, dpooled, gamma, beta, moving_mean, moving_var, batch_stats,
                      passed)
    dx = arrays[0].grad.asnumpy()
    got = (y.asnumpy(), pooled.asnumpy(), from_group_blocked(dx, groups) if groups else dx,
           arrays[1].grad.asnumpy(), arrays[2].grad.asnumpy())
    for g, w in zip(got, want):
        _close(g, w, tol=1e-4)
    assert 0.2 < passed.mean() < 0.8
    if batch_stats:
        axes = (0, 2, 3)
        expected_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * x.astype(np.float64).mean(axes)
        expected_var = MOMENTUM * moving_var + (1 - MOMENTUM) * x.astype(np.float64).var(axes)
    else:
        expected_mean, expected_var = moving_mean, moving_var
    _close(arrays[3].asnumpy(), expected_mean, 1e-6)
    _close(arrays[4].asnumpy(), expected_var, 1e-5)


def test_the_moving_statistics_follow_mxnets_batchnorm():
    """After training steps they equal MXNet's BatchNorm's; a forward pass in inference mode
    leaves them alone. (Ours updates them in the forward pass, where MXNet's engine knows of
    the write; MXNet's CPU BatchNorm in the backward pass.)"""
    load_batchnorm_relu()
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(8, 32, 6, 6) * 2 + 1)
    def forward(kind, gamma, beta, mean, var):
        if kind == "mxnet":
            return mx.nd.relu(mx.nd.BatchNorm(x, gamma, beta, mean, var, eps=EPS,
                                              momentum=MOMENTUM, fix_gamma=False))
        flag = mx.nd.array([float(autograd.is_training())])
        return getattr(mx.nd, BATCHNORM_RELU_OP)(x, gamma, beta, mean, var, flag, eps=EPS,
                                                 momentum=MOMENTUM)[0]

    stats = {}
    for kind in ("mxnet", "ours"):
        arrays = (mx.nd.ones(32), mx.nd.zeros(32), mx.nd.zeros(32), mx.nd.ones(32))
        arrays[0].attach_grad()
        for _ in range(3):
            with autograd.record():
                y = forward(kind, *arrays)
            y.backward()
        stats[kind] = (arrays[2].asnumpy(), arrays[3].asnumpy())
        with autograd.predict_mode():
            forward(kind, *arrays).wait_to_read()
        assert np.array_equal(arrays[2].asnumpy(), stats[kind][0])
        assert np.array_equal(arrays[3].asnumpy(), stats[kind][1])
    with autograd.train_mode():     # ours: the forward pass of training updates them
        forward("ours", *arrays).wait_to_read()
    assert not np.array_equal(arrays[2].asnumpy(), stats["ours"][0])
    assert np.abs(stats["mxnet"][0]).min() > 0.01
    for ours, theirs in zip(stats["ours"], stats["mxnet"]):
        _close(ours, theirs, 1e-5)


def _nets(kinds, freeze=-1, seed=3):
    """resnest14s with the same weights: "compiled" as built for this CPU, "mxnet" with
    MXNet's direct convolutions and BatchNorm."""
    nets = []
    for kind in kinds:
        mx.random.seed(seed)
        grouped_conv = grouped_conv_for("cpu") if kind == "compiled" else "split-narrow"
        net = get_model("resnest14", classes=10, grouped_conv=grouped_conv)
        net.initialize(mx.init.Xavier(magnitude=2.0))
        randomize_batchnorm(net, seed=0)
        net.freeze(freeze)
        net.hybridize(static_alloc=True, static_shape=True)
        nets.append(net)
    return nets


def _plain_kernels(net):
    found = []
    net.apply(lambda b: found.append(b.plain_kernel) if isinstance(b, BatchNormReLU) else None)
    return found


def _train_step(net, photos):
    with autograd.record():
        logits = net(photos)
        loss = (logits * mx.nd.arange(10).reshape((1, 10))).sum()
    loss.backward()
    params = net.collect_params()
    grads = {name.split("_", 1)[1]: p.grad().asnumpy() for name, p in params.items()
             if p.grad_req != "null"}
    running = {name.split("_", 1)[1]: p.data().asnumpy() for name, p in params.items()
               if "running" in name}
    return logits.asnumpy(), grads, running


@pytest.mark.parametrize("freeze", [-1, 1])
def test_a_network_trains_and_evaluates_as_with_mxnets_batchnorm(photos, freeze):
    """One training step (batch statistics, moving statistics updated, every gradient) and an
    evaluation afterwards: the network as built for this CPU against MXNet's kernels. With
    stage 1 frozen, its BatchNorms keep their statistics."""
    compiled, reference = _nets(("compiled", "mxnet"), freeze=freeze)
    assert set(_plain_kernels(compiled)) == {HAS_WINOGRAD}
    assert set(_plain_kernels(reference)) == {False}
    before = {name.split("_", 1)[1]: p.data().asnumpy().copy()
              for name, p in compiled.collect_params().items() if "running" in name}
    running = _assert_trains_and_evaluates_alike(compiled, reference, photos)
    layer1 = [name for name in running if name.startswith("layers1_")]
    assert layer1
    for name in layer1:
        moved = not np.array_equal(running[name], before[name])
        assert moved == (freeze < 1), name


def _assert_trains_and_evaluates_alike(compiled, reference, photos):
    """One training step of both networks (logits, every gradient, the moving statistics)
    and an evaluation afterwards agree; returns the compiled network's moving statistics."""
    (logits, grads, running), (ref_logits, ref_grads, ref_running) = (
        _train_step(net, photos) for net in (compiled, reference))
    _close(logits, ref_logits, 1e-4)
    assert grads.keys() == ref_grads.keys()
    # gradients that are zero but for rounding (biases before a BatchNorm) compare against
    # the largest gradient of the network
    floor = 1e-5 * max(np.abs(g).max() for g in ref_grads.values())
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=2e-3,
                                   atol=2e-3 * np.abs(ref_grads[name]).max() + floor,
                                   err_msg=name)
    for name in running:
        _close(running[name], ref_running[name], 1e-4)
    evaluated, ref_evaluated = (net(photos).asnumpy() for net in (compiled, reference))
    _close(evaluated, ref_evaluated, 1e-4)
    return running


@pytest.mark.parametrize("name,blocked", [
    # groups of 10 -> 40 channels (split apart), 20 -> 80 and 40 -> 160 (Winograd, padded to
    # whole 16-channel blocks inside the kernels; outputs handed over group-blocked), 80 -> 320
    ("resnest50_fast_4s2x40d", [0, 8, 8, 8]),
    # 40 -> 40 (Winograd, padded; its output is no whole number of blocks: plain), 80 -> 80, ...
    ("resnest50_fast_1s2x40d", [0, 2, 2, 2]),
])
def test_narrow_groups_take_the_compiled_batchnorm_too(photos, name, blocked):
    """In the 2x40d variants, groups off the 16-channel block run with the Winograd kernels
    where padding them costs little and apart where it costs much; the compiled BatchNorm
    reads either output (group-blocked only where the groups are whole blocks), and the
    network trains and evaluates as with MXNet's grouped convolution and BatchNorm."""
    nets = []
    for choice in (implementations_for("cpu"),
                   {"grouped_conv": "single", "attention_product": "batch_dot"}):
        # (a seed without a ReLU input within rounding of zero: with some, MXNet's own split
        # and single grouped convolutions already disagree by 1e-3 in a gradient)
        mx.random.seed(6)
        net = get_model(name, classes=10, layers=[1, 1, 1, 1], **choice)
        net.initialize(mx.init.Xavier(magnitude=2.0))
        randomize_batchnorm(net, seed=0)
        net.hybridize(static_alloc=True, static_shape=True)
        nets.append(net)
    compiled, reference = nets
    blocks = [stage[0].conv2 for stage in (compiled.layer1, compiled.layer2, compiled.layer3,
                                           compiled.layer4)]
    compiled(photos).wait_to_read()         # traced: the hand-over is set
    assert [b.bn.plain_kernel for b in blocks] == [HAS_WINOGRAD] * 4
    assert [b.bn.blocked_groups for b in blocks] == [g * HAS_WINOGRAD for g in blocked]
    assert set(_plain_kernels(reference)) == {False}
    _assert_trains_and_evaluates_alike(compiled, reference, photos)


def test_accumulated_gradients_add_up(photos):
    """gamma's and beta's gradients pass through an identity where they accumulate: a network
    traced with grad_req='write' and switched to 'add' is traced again."""
    (net,) = _nets(("compiled",))
    bn = net.layer1[0].conv2.bn

    def gradients():
        with autograd.record():
            loss = (net(photos) * mx.nd.arange(10).reshape((1, 10))).sum()
        loss.backward()
        return bn.gamma.grad().asnumpy().copy(), bn.beta.grad().asnumpy().copy()

    once = gradients()
    for param in net.collect_params().values():
        if param.grad_req == "write":
            param.grad_req = "add"
        param.zero_grad()
    gradients()
    twice = gradients()
    for single, double in zip(once, twice):
        _close(double, 2 * single, 1e-4)


def test_exported_graphs_hold_mxnets_batchnorm():
    (net,) = _nets(("compiled",))
    with portable_products(net):
        assert set(_plain_kernels(net)) == {False}
        symbol = net(mx.sym.var("data")).tojson()
    assert BATCHNORM_RELU_OP not in symbol and "BatchNorm" in symbol
    assert set(_plain_kernels(net)) == {HAS_WINOGRAD}
    traced = net(mx.sym.var("data")).tojson()
    assert (BATCHNORM_RELU_OP in traced) == HAS_WINOGRAD
