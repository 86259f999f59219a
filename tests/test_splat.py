"""Split attention (radix-major, vectorised) equals the paper's cardinality-major form."""
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon.models.splat import (
    ATTENTION_PRODUCTS,
    GROUPED_CONVS,
    GroupedConv2D,
    SplitAttentionConv,
    attention_channels,
    portable_products,
)


def _randomise_bn(block, rng):
    for name, p in block.collect_params().items():
        shape = p.shape
        if name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, shape)))
        elif name.endswith(("gamma", "beta", "running_mean", "bias")):
            p.set_data(mx.nd.array(rng.normal(0, 0.5, shape)))


def _conv2d(x, w, pad):
    """Naive dense 3x3 (or 1x1) convolution, stride 1: x (Cin,H,W), w (Cout,Cin,k,k)."""
    cin, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i:i + h, j:j + wd])
    return out


def _bn(x, p, prefix, eps=1e-5):
    g, b, m, v = (p[prefix + s] for s in ("gamma", "beta", "running_mean", "running_var"))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps) * g.reshape(shape) \
        + b.reshape(shape)


def naive_cardinality_major(x, params, radix, cardinality, channels):
    """The paper's description, one image at a time, loops over cardinal groups and splits.

    Cardinal group k has R splits U[k][r], each from its own slice of the input through its
    own 3x3 filters; the group's context is GAP(sum_r U[k][r]); the group's attention net
    (fc1 -> BN -> ReLU -> fc2) scores each split; softmax over r (sigmoid if R == 1) weighs
    them; the block output concatenates the K groups.
    """
    R, K, C = radix, cardinality, channels
    Ck = C // K
    cin = x.shape[0]
    in_per_group = cin // (K * R)
    w = params["conv.weight"]
    inter = params["fc1.weight"].shape[0]
    ik = inter // K
    outputs = []
    for k in range(K):
        splits = []
        for r in range(R):
            # The (k, r) split is convolution group g = r*K + k (radix-major weights).
            g = r * K + k
            xin = x[g * in_per_group:(g + 1) * in_per_group]
            wg = w[g * Ck:(g + 1) * Ck]
            u = _conv2d(xin, wg, 1)
            bn_sl = slice(g * Ck, (g + 1) * Ck)
            sub = {key: params["bn." + key][bn_sl]
                   for key in ("gamma", "beta", "running_mean", "running_var")}
            splits.append(np.maximum(_bn(u, sub, ""), 0))
        context = sum(splits).mean(axis=(1, 2))                       # (Ck,)
        w1 = params["fc1.weight"][k * ik:(k + 1) * ik, :, 0, 0]        # (ik, Ck)
        z = w1 @ context + params["fc1.bias"][k * ik:(k + 1) * ik]
        sub1 = {key: params["bn1." + key][k * ik:(k + 1) * ik]
                for key in ("gamma", "beta", "running_mean", "running_var")}
        z = np.maximum(_bn(z, sub1, ""), 0)
        rows = slice(k * R * Ck, (k + 1) * R * Ck)
        logits = params["fc2.weight"][rows, :, 0, 0] @ z + params["fc2.bias"][rows]
        logits = logits.reshape(R, Ck)
        if R > 1:
            e = np.exp(logits - logits.max(axis=0))
            att = e / e.sum(axis=0)
        else:
            att = 1 / (1 + np.exp(-logits))
        outputs.append(sum(att[r][:, None, None] * splits[r] for r in range(R)))
    return np.concatenate(outputs, axis=0)


@pytest.mark.parametrize("radix,cardinality", [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2),
                                               (2, 4)])
def test_radix_major_equals_cardinality_major(radix, cardinality):
    rng = np.random.RandomState(radix * 10 + cardinality)
    channels = 16 * cardinality
    in_channels = channels
    block = SplitAttentionConv(channels, 3, 1, 1, cardinality=cardinality, radix=radix,
                               in_channels=in_channels)
    block.initialize(mx.init.Normal(0.3))
    _randomise_bn(block, rng)
    x = rng.normal(size=(2, in_channels, 6, 7)).astype("float32")
    ours = block(mx.nd.array(x)).asnumpy()
    params = {k: v.data().asnumpy().astype("float64")
              for k, v in block._collect_params_with_prefix().items()}
    for n in range(2):
        ref = naive_cardinality_major(x[n].astype("float64"), params, radix, cardinality,
                                      channels)
        np.testing.assert_allclose(ours[n], ref, rtol=1e-4, atol=1e-4)
    # the hybridized graph computes the same
    block.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(block(mx.nd.array(x)).asnumpy(), ours, rtol=1e-5, atol=1e-5)


def test_attention_width_rule():
    # the authors' rule: max(in * R / 4, 32)
    assert attention_channels(64, 2) == 32
    assert attention_channels(256, 2) == 128
    assert attention_channels(512, 4) == 512
    assert attention_channels(64, 1) == 32


def test_radix_zero_is_rejected():
    with pytest.raises(ValueError, match="radix"):
        SplitAttentionConv(16, radix=0, in_channels=16)


def _outputs_and_gradients(x, **block_kwargs):
    """Output, input gradient and parameter gradients of one seeded, hybridized block."""
    block = SplitAttentionConv(**block_kwargs)
    block.initialize()
    for n, param in enumerate(block.collect_params().values()):   # the same in every block
        values = np.random.RandomState(n).normal(0, 0.3, param.shape)
        if param.name.endswith("running_var"):
            values = np.abs(values) + 0.5
        param.set_data(mx.nd.array(values))
    block.hybridize(static_alloc=True, static_shape=True)
    data = x.copy()
    data.attach_grad()
    with mx.autograd.record():
        out = block(data)
        loss = (out * out).sum()
    loss.backward()
    grads = {n: p.grad().asnumpy() for n, p in enumerate(block.collect_params().values())
             if p.grad_req != "null"}
    return block, (out.asnumpy(), data.grad.asnumpy(), grads)


def _assert_same(a, b):
    """Equal outputs; gradients equal within float32's rounding of differently ordered sums,
    as a relative norm (through a radix-4 softmax single elements of a float32 gradient
    differ from float64's by up to 8e-4 of its scale, whichever graph computes them)."""
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = a, b
    np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-5)
    assert g_a.keys() == g_b.keys() and len(g_a) >= 6
    for got, expected in [(dx_a, dx_b)] + [(g_a[name], g_b[name]) for name in g_a]:
        assert np.linalg.norm(got - expected) <= 1e-3 * max(1.0, np.linalg.norm(expected))


@pytest.mark.parametrize("radix,cardinality", [(1, 1), (2, 1), (4, 1), (2, 2)])
def test_every_attention_product_computes_the_same_values_and_gradients(radix, cardinality):
    rng = np.random.RandomState(7 + radix)
    channels = 16 * cardinality
    # 8 images: the attention's BatchNorm over 2 would amplify float32 rounding (radix_sum's
    # network runs the compiled BatchNorm after its narrow groups, the others MXNet's)
    x = mx.nd.array(rng.normal(size=(8, channels, 5, 6)).astype("float32"))
    results = [_outputs_and_gradients(x, channels=channels, cardinality=cardinality,
                                      radix=radix, in_channels=channels,
                                      attention_product=product)[1]
               for product in ATTENTION_PRODUCTS]
    for other in results[1:]:
        _assert_same(results[0], other)


@pytest.mark.parametrize("radix,cardinality,channels", [(2, 2, 40), (4, 1, 24), (1, 4, 24)])
def test_split_narrow_groups_compute_what_one_grouped_convolution_computes(radix, cardinality,
                                                                           channels):
    """Groups of 10, 6 and 6 input channels run as separate convolutions under split-narrow,
    with the same values and gradients as the single grouped convolution."""
    # 8 images: with 2, the attention's BatchNorm normalises 2 values and its gradient is
    # float32 rounding amplified
    x = mx.nd.array(np.random.RandomState(radix).normal(size=(8, channels, 7, 5)))
    blocks, results = zip(*[_outputs_and_gradients(x, channels=channels, radix=radix,
                                                   cardinality=cardinality,
                                                   in_channels=channels, grouped_conv=kind)
                            for kind in GROUPED_CONVS])
    # (groups this narrow are no Winograd operator's: "winograd" splits them too)
    assert [b.conv.split_groups for b in blocks] == [False, True, True]
    assert not any(b.conv.winograd for b in blocks)
    _assert_same(*results[:2])
    _assert_same(results[0], results[2])


def test_only_groups_off_the_onednn_block_are_split():
    def split(in_channels, groups):
        return GroupedConv2D(64, 3, groups=groups, in_channels=in_channels).split_groups

    assert not split(64, 2) and not split(256, 8) and not split(64, 1)      # 32, 32, dense
    assert split(80, 8) and split(96, 4) and split(160, 4)                 # 10, 24, 40
    assert not GroupedConv2D(64, 3, groups=8, in_channels=80,
                             grouped_conv="single").split_groups
    with pytest.raises(ValueError, match="grouped_conv must be one of"):
        GroupedConv2D(64, 3, groups=8, in_channels=80, grouped_conv="loop")


def _values_of(net, block_class, attribute):
    """The set of ``attribute`` over the blocks of ``net`` of ``block_class``."""
    found = set()
    net.apply(lambda b: found.add(getattr(b, attribute)) if isinstance(b, block_class) else None)
    return found


def test_auto_picks_the_product_for_the_device_dtype_and_export():
    from resnest_gluon.config import load_config
    from resnest_gluon.training.setup import build_network

    def products(config, **kwargs):
        return _values_of(build_network(config, **kwargs), SplitAttentionConv,
                          "attention_product")

    def exported_products(config):
        """Inside portable_products (what export_symbol and to_precision trace), and after."""
        net = build_network(config, device_type="cpu")
        with portable_products(net):
            inside = _values_of(net, SplitAttentionConv, "attention_product")
        return inside, _values_of(net, SplitAttentionConv, "attention_product")

    config = load_config(None, ["model.name=resnest14", "data.num_classes=10"])
    assert products(config, device_type="cpu") == {"radix_sum"}
    assert exported_products(config) == ({"batch_dot"}, {"radix_sum"})
    assert products(config, device_type="gpu") == {"broadcast_mul"}
    config.train.dtype = "bfloat16"      # AMP's bfloat16 reaches the operator: float32 only
    assert products(config, device_type="cpu") == {"batch_dot"}
    config.train.dtype = "float32"
    with pytest.MonkeyPatch.context() as patch:   # gradients added into, not written
        patch.setenv("MXNET_EXEC_ENABLE_ADDTO", "1")
        assert products(config, device_type="cpu") == {"batch_dot"}
    config.model.attention_product = "broadcast_mul"
    assert products(config, device_type="cpu") == {"broadcast_mul"}
    config.model.attention_product = "radix_sum"
    assert exported_products(config) == ({"batch_dot"}, {"radix_sum"})
    for device, dtype in (("gpu", "float32"), ("cpu", "bfloat16")):
        config.train.dtype = dtype
        with pytest.raises(ValueError, match="radix_sum runs on CPUs in float32 only"):
            build_network(config, device_type=device)
    config.train.dtype = "float32"
    config.model.attention_product = "einsum"
    with pytest.raises(ValueError, match="attention_product must be one of"):
        build_network(config)


def test_auto_picks_the_grouped_convolution_for_the_device():
    from resnest_gluon.config import load_config
    from resnest_gluon.training.setup import build_network

    def splits(net):
        return _values_of(net, GroupedConv2D, "split_groups")

    config = load_config(None, ["model.name=resnest50_fast_4s2x40d", "data.num_classes=10"])
    assert splits(build_network(config, device_type="cpu")) == {True, False}  # 10..80 wide
    assert splits(build_network(config, device_type="gpu")) == {False}
    config.model.grouped_conv = "single"
    assert splits(build_network(config, device_type="cpu")) == {False}
    config.model.grouped_conv = "loop"
    with pytest.raises(ValueError, match="grouped_conv must be one of"):
        build_network(config)
