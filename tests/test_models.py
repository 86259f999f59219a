"""The zoo: every model builds and runs, counts and costs match the published numbers and the
reference implementation, bad requests get clear errors."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from resnest_gluon import get_model, list_models
from resnest_gluon.models import count_flops, count_params, get_spec, stage_shapes
from resnest_gluon.peers import gluoncv_twin

ALL = list_models()
FAST = [n for n in ALL if n.startswith("resnest50_fast")]


def test_zoo_names():
    expected = {"resnest14", "resnest26", "resnest50", "resnest101", "resnest200",
                "resnest269", "resnet50d"} | {
        f"resnest50_fast_{t}" for t in ("1s1x64d", "2s1x64d", "4s1x64d", "1s2x40d",
                                        "2s2x40d", "4s2x40d", "1s4x24d")}
    assert set(ALL) == expected


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_model(name):
    net = get_model(name, classes=7, dropblock_prob=0.1)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(2, 3, 48, 40))         # any input size, not only 224
    with autograd.record():
        out = net(x)
        loss = out.sum()
    loss.backward()
    assert out.shape == (2, 7)
    assert np.isfinite(out.asnumpy()).all()
    grad = net.fc.weight.grad().asnumpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_param_counts_equal_reference_and_published(name):
    ours = get_model(name)
    ref = gluoncv_twin(name)
    ref_count = int(sum(np.prod(p.shape) for p in ref.collect_params().values()))
    assert count_params(ours) == ref_count
    ref_trainable = int(sum(np.prod(p.shape) for p in ref.collect_params().values()
                            if p.grad_req != "null"))
    assert count_params(ours, trainable_only=True) == ref_trainable
    published = get_spec(name).published_params_m
    assert abs(count_params(ours) / 1e6 - published) <= 0.15, (name, count_params(ours))


def test_fast_variant_counts_equal_authors_code():
    # docs/reference.md: the authors' architecture code gives these (BN statistics included).
    authors = [26.27, 27.55, 32.00, 26.01, 27.01, 30.51, 25.74]
    ours = [round(count_params(get_model(n)) / 1e6, 2) for n in FAST]
    assert ours == authors


@pytest.mark.parametrize("name", ["resnest50", "resnet50d"] + FAST)
def test_gflops_match_published(name):
    gflops = count_flops(get_model(name), 224) / 1e9
    published = get_spec(name).published_gflops
    assert abs(gflops - published) / published <= 0.02, (name, gflops, published)


def test_flops_grow_with_input_and_classes():
    net = get_model("resnest14")
    assert count_flops(net, 448) > 3.9 * count_flops(net, 224)


def test_spec_table_eval_settings():
    assert get_spec("resnest50").eval_crop_ratio == 0.875
    assert get_spec("resnest200").eval_size == 320
    assert get_spec("resnest200").eval_crop_ratio == pytest.approx(320 / 352)
    assert get_spec("resnest269").eval_crop_ratio == pytest.approx(416 / 448)
    assert get_spec("resnest269").train_size == 320
    assert get_spec("resnest200").final_drop == 0.2 and get_spec("resnest50").final_drop == 0
    assert get_spec("resnest14").dropblock_prob == 0 and get_spec("resnest50").dropblock_prob == 0.1


@pytest.mark.parametrize("output_stride,expected", [(32, (2048, 2, 2)), (16, (2048, 4, 4)),
                                                    (8, (2048, 8, 8))])
def test_output_stride(output_stride, expected):
    net = get_model("resnest14", output_stride=output_stride)
    assert stage_shapes(net, 64)[-1] == ("layer4", expected)
    net.initialize()
    assert net(mx.nd.zeros((1, 3, 64, 64))).shape == (1, 1000)


def test_stage_shapes_resnest50():
    shapes = dict(stage_shapes(get_model("resnest50"), 224))
    assert shapes == {"stem": (64, 56, 56), "layer1": (256, 56, 56), "layer2": (512, 28, 28),
                      "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)}


def test_overrides_build_other_points():
    net = get_model("resnest50", radix=3, cardinality=2, bottleneck_width=48)
    assert net.spec.tag == "3s2x48d"
    net.initialize()
    assert net(mx.nd.zeros((1, 3, 32, 32))).shape == (1, 1000)
    assert get_model("resnest50", layers=[1, 1, 1, 1]).spec.layers == (1, 1, 1, 1)


def test_last_gamma_zero_init():
    net = get_model("resnest14", last_gamma=True)
    net.initialize()
    assert (net.layer2[0].bn3.gamma.data().asnumpy() == 0).all()
    assert (net.layer2[0].bn1.gamma.data().asnumpy() == 1).all()


def test_final_dropout_only_in_training():
    net = get_model("resnest14", classes=3, final_drop=0.5)
    net.initialize()
    x = mx.nd.random.normal(shape=(2, 3, 32, 32))
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("resnest51")
    assert "resnest50" in str(err.value) and "resnest269" in str(err.value)


@pytest.mark.parametrize("overrides,word", [
    (dict(radix=3), "radix"), (dict(cardinality=3, bottleneck_width=10), "cardinality"),
    (dict(output_stride=4), "output_stride"), (dict(layers=[1, 1, 1]), "layers"),
    (dict(radix=-1), "radix"), (dict(final_drop=1.0), "final_drop")])
def test_impossible_spec_names_the_parameter(overrides, word):
    with pytest.raises(ValueError, match=word):
        get_model("resnest50", **overrides)


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="radx"):
        get_model("resnest50", radx=2)


@pytest.mark.parametrize("shape,word", [((1, 1, 64, 64), "channels"), ((3, 64, 64), "4-D"),
                                        ((1, 3, 16, 16), "at least 32")])
def test_bad_input_is_a_clear_error(shape, word):
    net = get_model("resnest14")
    net.initialize()
    with pytest.raises(ValueError, match=word):
        net(mx.nd.zeros(shape))


def test_other_input_channels():
    net = get_model("resnest14", in_channels=1, classes=10)
    net.initialize()
    assert net(mx.nd.zeros((2, 1, 32, 32))).shape == (2, 10)


def test_eval_settings_one_rule():
    from resnest_gluon.models import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, resolve_eval_settings
    resolve = resolve_eval_settings
    # the published evaluation of each depth
    assert (resolve("resnest50").size, resolve("resnest50").crop_ratio) == (224, 0.875)
    assert (resolve("resnest101").size, resolve("resnest101").crop_ratio) == (256, 0.875)
    assert resolve("resnest200").size == 320
    assert resolve("resnest200").crop_ratio == pytest.approx(320 / 352)
    assert resolve("resnest269", train_size=320).size == 416
    assert resolve("resnest269").crop_ratio == pytest.approx(416 / 448)
    # trained at another size: evaluated at that size
    assert resolve("resnest269", train_size=224).size == 224
    assert (resolve("resnest14", train_size=32).size, resolve("resnest14", train_size=32)
            .crop_ratio) == (32, 0.875)
    # explicit choices win; the crop ratio follows an explicit size
    explicit = resolve("resnest101", size=300, crop_ratio=0.9, interpolation="bilinear")
    assert (explicit.size, explicit.crop_ratio, explicit.interpolation) == (300, 0.9, "bilinear")
    assert resolve("resnest101", size=320).crop_ratio == pytest.approx(320 / 352)
    settings = resolve("resnest50")
    assert settings.interpolation == "bicubic"
    assert (settings.mean, settings.std) == (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    assert settings.to_dict()["mean"] == list(IMAGENET_MEAN_RGB)
    with pytest.raises(ValueError, match="unknown model"):
        resolve("resnest15")
