"""Published Gluon weights load into our models; our own files round-trip exactly."""
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import get_model
from resnest_gluon.models.convert import WeightsMismatchError
from resnest_gluon.peers import gluoncv_twin, randomize_batchnorm


def _randomise(net, seed):
    """Random weights and BN statistics that keep activations O(1) through deep nets."""
    return randomize_batchnorm(net, seed, gamma=(0.2, 0.6))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Weights files saved from gluoncv's published-structure models, random weights."""
    from gluoncv.model_zoo import get_model as gluoncv_model
    out = {}
    for seed, name in enumerate(("resnest14", "resnest50", "resnest101")):
        ref = gluoncv_model(name, pretrained=False)
        _randomise(ref, seed)
        path = str(tmp_path_factory.mktemp("w") / f"{name}.params")
        ref.save_parameters(path)
        out[name] = (ref, path)
    return out


@pytest.mark.parametrize("name", ["resnest14", "resnest50", "resnest101"])
def test_published_gluon_weights_give_same_logits(published, photos, name):
    ref, path = published[name]
    ours = get_model(name, pretrained=path)
    expected = ref(photos).asnumpy()
    got = ours(photos).asnumpy()
    assert np.abs(expected).max() > 0.1           # a meaningful comparison, not all zeros
    assert np.abs(got - expected).max() < 1e-4
    # also hybridized
    ours.hybridize(static_alloc=True, static_shape=True)
    assert np.abs(ours(photos).asnumpy() - expected).max() < 1e-4


def test_prefixed_and_exported_layouts_load(published, photos, tmp_path):
    ref, _ = published["resnest14"]
    expected = ref(photos).asnumpy()
    prefixed = str(tmp_path / "prefixed.params")
    ref.collect_params().save(prefixed)                  # full names, "resnest_" prefix
    ref.hybridize()
    ref(photos)
    ref.export(str(tmp_path / "exported"))               # "arg:" / "aux:" names
    for path in (prefixed, str(tmp_path / "exported-0000.params")):
        ours = get_model("resnest14", pretrained=path)
        assert np.abs(ours(photos).asnumpy() - expected).max() < 1e-4, path


def test_own_round_trip_is_exact(photos, tmp_path):
    net = get_model("resnest50_fast_2s2x40d", classes=10)
    _randomise(net, 3)
    path = str(tmp_path / "ours.params")
    net.save_parameters(path)
    again = get_model("resnest50_fast_2s2x40d", classes=10, pretrained=path)
    for (name, a), b in zip(net.collect_params().items(), again.collect_params().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy(), err_msg=name)
    np.testing.assert_array_equal(net(photos).asnumpy(), again(photos).asnumpy())


def test_mismatched_files_are_clear_errors(published, tmp_path):
    _, path14 = published["resnest14"]
    with pytest.raises(WeightsMismatchError, match="not in the file"):
        get_model("resnest26", pretrained=path14)
    with pytest.raises(WeightsMismatchError, match="classes=1000"):
        get_model("resnest14", classes=10, pretrained=path14)
    with pytest.raises(FileNotFoundError):
        get_model("resnest14", pretrained=str(tmp_path / "missing.params"))
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not a params file")
    with pytest.raises(ValueError, match="not a weights file this reader knows"):
        get_model("resnest14", pretrained=str(junk))


def _gradients(net, photos, dtype="float32", hybridize=False):
    from mxnet import autograd
    if dtype != "float32":
        net.cast(dtype)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():
        loss = loss_fn(net(photos.astype(dtype)), mx.nd.array([0, 3, 5, 9], dtype=dtype))
    loss.backward()
    # fc1.bias feeds a BatchNorm in training mode: its true gradient is 0, what is left is noise
    return {k: p.grad().asnumpy().astype("float64")
            for k, p in net._collect_params_with_prefix().items()
            if p.grad_req != "null" and not k.endswith("fc1.bias")}


def _relative(a, b):
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in b)) /
                 np.sqrt(sum(np.sum(b[k] ** 2) for k in b)))


@pytest.mark.parametrize("name", ["resnest14", "resnest50_fast_2s2x40d", "resnest50_fast_4s1x64d"])
def test_gradients_equal_reference_implementation(photos, name):
    """Same weights and batch, training mode (hybridized, static): our gradients agree with
    gluoncv's within a relative 1e-3, or, where float32 itself is not that exact for this
    deep net on 4 images, are at least as close to a float64 run of gluoncv as gluoncv's own
    float32 gradients are."""
    ref = gluoncv_twin(name, classes=10)
    _randomise(ref, 7)
    weights = {k: p.data().copy() for k, p in ref._collect_params_with_prefix().items()}

    def load(net):
        net.initialize()
        for key, param in net._collect_params_with_prefix().items():
            param.set_data(weights[key])
        return net

    ours32 = _gradients(load(get_model(name, classes=10)), photos, hybridize=True)
    ref32 = _gradients(load(gluoncv_twin(name, classes=10)), photos, hybridize=True)
    ref64 = _gradients(load(gluoncv_twin(name, classes=10)), photos, dtype="float64")
    noise = _relative(ref32, ref64)
    assert _relative(ours32, ref32) < max(1e-3, 2 * noise)
    assert _relative(ours32, ref64) <= max(1e-3, 1.1 * noise)
