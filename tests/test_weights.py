"""Published Gluon weights load into our models; our own files round-trip exactly."""
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import get_model
from resnest_gluon.models.convert import WeightsMismatchError


def _randomise(net, seed):
    """Random weights and BN statistics that keep activations O(1) through deep nets."""
    rng = np.random.RandomState(seed)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    for name, p in net.collect_params().items():
        if name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith("running_mean"):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape)))
        elif name.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.2, 0.6, p.shape)))
        elif name.endswith("beta"):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape)))


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
    with pytest.raises(ValueError, match="not an MXNet"):
        get_model("resnest14", pretrained=str(junk))
