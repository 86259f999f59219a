"""The compiled Winograd convolution (``resnest_conv3x3``, models/csrc/winograd_conv.cc).

Where oneDNN has Winograd kernels (CPUs with AVX-512, the machines CI runs on), the operator
must compute MXNet's own convolution: values and both gradients within float32 rounding, for
one group or several, batches that run in one chunk or several, and through a whole network.
Elsewhere the network must fall back to MXNet's kernels; each test checks the side this
machine is on.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from resnest_gluon.models import get_model
from resnest_gluon.models.extension import (
    CONV3X3_OP,
    from_group_blocked,
    to_group_blocked,
    winograd_conv_available,
)
from resnest_gluon.models.splat import (
    GroupedConv2D,
    grouped_conv_for,
    implementations_for,
    portable_products,
)
from resnest_gluon.peers import randomize_batchnorm

HAS_WINOGRAD = winograd_conv_available()


def _conv(grouped_conv, in_channels, channels, groups, **kwargs):
    conv = GroupedConv2D(channels, 3, kwargs.pop("strides", 1), kwargs.pop("padding", 1),
                         kwargs.pop("dilation", 1), groups=groups, use_bias=False,
                         in_channels=in_channels, grouped_conv=grouped_conv, **kwargs)
    conv.initialize(mx.init.Normal(0.1))
    conv.hybridize(static_alloc=True, static_shape=True)
    return conv


def _values_and_gradients(conv, x, dy, weight):
    conv.weight.set_data(weight)
    data = x.copy()
    data.attach_grad()
    with autograd.record():
        y = conv(data)
    y.backward(dy)
    return y.asnumpy(), data.grad.asnumpy(), conv.weight.grad().asnumpy()


@pytest.mark.parametrize("batch,in_channels,channels,size,groups", [
    (2, 32, 64, 9, 2),          # ResNeSt's radix-2 split: two groups
    (3, 64, 64, 7, 1),          # one dense group, an odd size
    (2, 64, 128, 13, 4),
    (5, 64, 128, 52, 2),        # images in chunks of 2, 2 and 1 per group
    (3, 64, 128, 88, 1),        # one image per chunk
    (2, 1024, 1024, 6, 2),      # weight gradient by the direct kernel (Winograd's scratch
                                # for 512x512 weights passes 32 MB on any thread count)
    (3, 160, 640, 10, 8),       # 4s2x40d's second stage: 20 -> 80 channels per group, the
                                # input padded to two 16-channel blocks inside the kernels
    (2, 40, 40, 11, 1),         # 1s2x40d's first stage: 40 -> 40, both padded to 48
])
def test_it_computes_mxnets_convolution(batch, in_channels, channels, size, groups):
    if not HAS_WINOGRAD:
        assert grouped_conv_for("cpu") == "split-narrow"
        return
    rng = np.random.RandomState(size)
    x = mx.nd.array(rng.normal(size=(batch, in_channels, size, size)))
    dy = mx.nd.array(rng.normal(size=(batch, channels, size, size)))
    weight = mx.nd.array(rng.normal(0, 0.1, (channels, in_channels // groups, 3, 3)))
    convs = [_conv(kind, in_channels, channels, groups) for kind in ("single", "winograd")]
    assert convs[1].winograd
    reference, winograd = (_values_and_gradients(conv, x, dy, weight) for conv in convs)
    for expected, got in zip(reference, winograd):
        # Winograd's transforms round differently: about 1e-6 of the scale, 1e-5 at most
        assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()


@pytest.mark.parametrize("batch,in_channels,channels,size,groups", [
    (2, 32, 64, 9, 2),
    (5, 64, 128, 52, 2),        # chunks of 2, 2 and 1 image per group
    (3, 64, 192, 7, 4),         # 48 output channels per group: three blocks
    (2, 1024, 1024, 6, 2),      # the direct weight-gradient kernel
])
def test_its_blocked_output_is_the_plain_one_in_the_group_blocked_layout(
        batch, in_channels, channels, size, groups):
    """With blocked_output=1 (before the compiled BatchNorm) y is written, and dy read, in the
    group-blocked layout: the same values, x's and the weight's gradients the same."""
    if not HAS_WINOGRAD:
        assert grouped_conv_for("cpu") == "split-narrow"
        return
    rng = np.random.RandomState(size)
    x = mx.nd.array(rng.normal(size=(batch, in_channels, size, size)))
    dy = rng.normal(size=(batch, channels, size, size)).astype(np.float32)
    weight = mx.nd.array(rng.normal(0, 0.1, (channels, in_channels // groups, 3, 3)))
    results = []
    for blocked in (0, 1):
        data, w = x.copy(), weight.copy()
        data.attach_grad()
        w.attach_grad()
        with autograd.record():
            y = getattr(mx.nd, CONV3X3_OP)(data, w, groups=groups, blocked_output=blocked)
        y.backward(mx.nd.array(to_group_blocked(dy, groups) if blocked else dy))
        values = from_group_blocked(y.asnumpy(), groups) if blocked else y.asnumpy()
        results.append((values, data.grad.asnumpy(), w.grad.asnumpy()))
    for plain, blocked in zip(*results):
        np.testing.assert_array_equal(blocked, plain)


def test_its_blocked_output_needs_whole_channel_blocks():
    if not HAS_WINOGRAD:
        return
    x, weight = mx.nd.ones((1, 48, 8, 8)), mx.nd.ones((72, 16, 3, 3))  # 24 outputs per group
    with pytest.raises(mx.MXNetError, match="multiple of 16 output channels"):
        getattr(mx.nd, CONV3X3_OP)(x, weight, groups=3, blocked_output=1).wait_to_read()


def test_only_stride_one_3x3_convolutions_with_groups_near_whole_blocks_use_it():
    def uses(**kwargs):
        in_channels, channels, groups = (kwargs.pop(k) for k in ("cin", "cout", "groups"))
        return GroupedConv2D(channels, kwargs.pop("kernel", 3), kwargs.pop("strides", 1),
                             kwargs.pop("padding", 1), kwargs.pop("dilation", 1),
                             groups=groups, in_channels=in_channels,
                             use_bias=kwargs.pop("use_bias", False),
                             grouped_conv="winograd" if HAS_WINOGRAD else "split-narrow"
                             ).winograd

    assert uses(cin=128, cout=256, groups=2) == HAS_WINOGRAD
    assert uses(cin=64, cout=64, groups=1) == HAS_WINOGRAD
    assert not uses(cin=128, cout=256, groups=2, strides=2)
    assert not uses(cin=128, cout=256, groups=2, dilation=2, padding=2)
    assert not uses(cin=128, cout=256, groups=2, kernel=1, padding=0)
    assert not uses(cin=128, cout=256, groups=2, use_bias=True)
    # groups padded to whole 16-channel blocks: up to 1.6x the multiplications (the zoo's)
    assert uses(cin=160, cout=640, groups=8) == HAS_WINOGRAD    # 20 -> 80: 1.6x
    assert uses(cin=320, cout=1280, groups=8) == HAS_WINOGRAD   # 40 -> 160: 1.2x
    assert uses(cin=40, cout=40, groups=1) == HAS_WINOGRAD      # 40 -> 40: 1.44x
    assert not uses(cin=80, cout=320, groups=8)            # 10 -> 40: 1.92x, split
    assert not uses(cin=96, cout=96, groups=4)             # 24 -> 24: 1.78x
    assert not uses(cin=80, cout=160, groups=4)            # 20 -> 40: 1.92x


@pytest.mark.parametrize("grad_req", ["write", "add", "null"])
def test_weight_gradients_honour_grad_req(grad_req):
    """The extension API drops MXNet's add requests: accumulated gradients (grad_req='add',
    ``train.accumulate``) must still add up, and frozen weights must get none."""
    x = mx.nd.array(np.random.RandomState(0).normal(size=(2, 32, 8, 8)))
    grads = {}
    for kind in ("single", "winograd" if HAS_WINOGRAD else "split-narrow"):
        conv = _conv(kind, 32, 64, 2)
        conv.weight.set_data(mx.nd.ones(conv.weight.shape) * 0.01)
        conv.weight.grad_req = grad_req
        data = x.copy()
        data.attach_grad()
        for _ in range(2):
            with autograd.record():
                y = conv(data)
            y.backward()
        grads[kind] = (None if grad_req == "null" else conv.weight.grad().asnumpy(),
                       data.grad.asnumpy())
    (ref_w, ref_x), (got_w, got_x) = grads.values()
    if grad_req != "null":
        np.testing.assert_allclose(got_w, ref_w, rtol=1e-4, atol=1e-4 * np.abs(ref_w).max())
    np.testing.assert_allclose(got_x, ref_x, rtol=1e-4, atol=1e-4 * np.abs(ref_x).max())


def test_resnest50_logits_equal_the_direct_convolutions(photos):
    """The network as built for this CPU (Winograd where available) gives the logits of
    MXNet's direct convolutions on the same weights, and its exported graph holds MXNet's
    own operators only."""
    choice = implementations_for("cpu")
    assert choice["grouped_conv"] == ("winograd" if HAS_WINOGRAD else "split-narrow")
    nets = []
    for grouped_conv in (choice["grouped_conv"], "split-narrow"):
        mx.random.seed(3)
        net = get_model("resnest50", classes=10, attention_product="batch_dot",
                        grouped_conv=grouped_conv)
        net.initialize(mx.init.Xavier(magnitude=2.0))
        nets.append(randomize_batchnorm(net, seed=0))
    for net in nets:
        net.hybridize(static_alloc=True, static_shape=True)
    ours, direct = (net(photos).asnumpy() for net in nets)
    assert np.abs(ours - direct).max() <= 1e-5 * np.ptp(direct)
    found = set()
    nets[0].apply(lambda b: found.add(b.winograd) if isinstance(b, GroupedConv2D) else None)
    assert found == {HAS_WINOGRAD}
    with portable_products(nets[0]):
        inside = set()
        nets[0].apply(lambda b: inside.add(b.winograd)
                      if isinstance(b, GroupedConv2D) else None)
        symbol = nets[0](mx.sym.var("data")).tojson()
    assert inside == {False} and "resnest_conv3x3" not in symbol


def test_training_and_evaluation_take_it_in_float32_only():
    expected = "winograd" if HAS_WINOGRAD else "split-narrow"
    assert implementations_for("cpu")["grouped_conv"] == expected
    assert implementations_for("cpu", dtype="bfloat16")["grouped_conv"] == "split-narrow"
    assert implementations_for("gpu")["grouped_conv"] == "single"


def test_a_grad_req_changed_after_tracing_is_honoured(photos):
    """The graph passes the weight through an identity only where gradients accumulate: a
    network traced with grad_req='write' and switched to 'add' is traced again."""
    mx.random.seed(5)
    net = get_model("resnest14", classes=10, grouped_conv=grouped_conv_for("cpu"))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True, static_shape=True)
    conv = net.layer1[0].conv2.conv

    def weight_gradient():
        with autograd.record():
            loss = net(photos).sum()
        loss.backward()
        return conv.weight.grad().asnumpy().copy()

    once = weight_gradient()
    for param in net.collect_params().values():
        if param.grad_req == "write":
            param.grad_req = "add"
    for param in net.collect_params().values():
        param.zero_grad()
    weight_gradient()
    twice = weight_gradient()
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-4, atol=1e-4 * np.abs(once).max())


def test_it_is_not_picked_where_it_cannot_run():
    assert implementations_for("gpu")["grouped_conv"] == "single"
    assert implementations_for("cpu", dtype="bfloat16")["grouped_conv"] == "split-narrow"
    for device, dtype in (("gpu", "float32"), ("cpu", "bfloat16")):
        with pytest.raises(ValueError, match="winograd runs on CPUs in float32 only"):
            implementations_for(device, grouped_conv="winograd", dtype=dtype)
    with pytest.MonkeyPatch.context() as patch:     # gradients added into, not written
        patch.setenv("MXNET_EXEC_ENABLE_ADDTO", "1")
        assert grouped_conv_for("cpu") == "split-narrow"


def test_the_flop_count_is_that_of_the_convolutions_it_computes():
    from resnest_gluon.models.flops import count_flops
    kind = "winograd" if HAS_WINOGRAD else "split-narrow"
    ours = get_model("resnest50", grouped_conv=kind)
    assert any(b.winograd for b in ours.layer1[0].conv2._children.values()
               if isinstance(b, GroupedConv2D)) == HAS_WINOGRAD
    assert count_flops(ours) == count_flops(get_model("resnest50", grouped_conv="single"))
