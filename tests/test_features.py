"""Backbone features: ``get_model(..., features_only=True)`` gives the stage feature maps at
output stride 32/16/8, equal to the classifier's own stages with the same weights, loads
classification weights, and exports (several outputs) to MXNet symbols and ONNX."""
import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import get_model
from resnest_gluon.export import export_onnx, export_symbol
from resnest_gluon.peers import randomize_batchnorm


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    """A ResNeSt-14 classifier with random weights and BatchNorm statistics, saved."""
    net = get_model("resnest14", classes=7)
    randomize_batchnorm(net, 5, gamma=(0.2, 0.6))
    path = str(tmp_path_factory.mktemp("w") / "resnest14.params")
    net.save_parameters(path)
    return net, path


@pytest.mark.parametrize("output_stride,strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)),
                                                   (8, (4, 8, 8, 8))])
def test_feature_maps_have_the_stage_strides_and_channels(classifier_file, output_stride,
                                                          strides):
    _, path = classifier_file
    net = get_model("resnest14", features_only=True, output_stride=output_stride,
                    pretrained=path)
    assert net.feature_strides == strides
    assert net.feature_channels == (256, 512, 1024, 2048)
    outputs = net(mx.nd.random.normal(shape=(2, 3, 64, 96)))
    assert len(outputs) == 4
    for out, stride, channels in zip(outputs, strides, net.feature_channels):
        assert out.shape == (2, channels, 64 // stride, 96 // stride)


def test_features_equal_the_classifiers_own_stages_at_any_size(classifier_file):
    classifier, path = classifier_file
    backbone = get_model("resnest14", features_only=True, out_indices=(2, 4), pretrained=path)
    assert "fc.weight" not in backbone._collect_params_with_prefix()
    batch = mx.nd.random.normal(shape=(2, 3, 97, 131))   # not a multiple of 32, not square
    expected = classifier.stages(mx.nd, batch)
    for hybrid in (False, True):
        if hybrid:
            backbone.hybridize(static_alloc=True, static_shape=True)
        got = backbone(batch)
        assert len(got) == 2
        for out, stage in zip(got, (2, 4)):
            np.testing.assert_allclose(out.asnumpy(), expected[stage - 1].asnumpy(),
                                       rtol=1e-5, atol=1e-5)
    assert np.abs(expected[3].asnumpy()).max() > 0.1   # a meaningful comparison


def test_out_indices_are_checked():
    with pytest.raises(ValueError, match="out_indices must be distinct stages from 1 to 4"):
        get_model("resnest14", features_only=True, out_indices=(0, 5))


def test_a_dilated_backbone_exports_to_mxnet_and_onnx(classifier_file, tmp_path):
    _, path = classifier_file
    net = get_model("resnest14", features_only=True, output_stride=16, pretrained=path)
    result = export_symbol(net, str(tmp_path / "backbone"), input_size=64, batch_size=1)
    assert result.max_abs_diff < 1e-4
    reloaded = mx.gluon.SymbolBlock.imports(result.symbol_file, ["data"], result.params_file)
    outputs = reloaded(mx.nd.random.normal(shape=(1, 3, 64, 64)))
    assert [out.shape for out in outputs] == [(1, 256, 16, 16), (1, 512, 8, 8),
                                              (1, 1024, 4, 4), (1, 2048, 4, 4)]
    diff = export_onnx(result.symbol_file, result.params_file, result.input_shape,
                       str(tmp_path / "backbone.onnx"))
    assert diff < 1e-3
