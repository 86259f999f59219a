"""Hybridize, export for serving, and reduced precision."""
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

from resnest_gluon import get_model
from resnest_gluon.export import export_symbol
from resnest_gluon.models.precision import to_precision
from resnest_gluon.peers import randomize_batchnorm


def _net(name="resnest14", **kw):
    net = get_model(name, classes=10, **kw)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


@pytest.mark.parametrize("name", ["resnest14", "resnet50d", "resnest50_fast_1s4x24d"])
def test_hybridized_static_equals_imperative(name, photos):
    net = _net(name, dropblock_prob=0.1)
    imperative = net(photos).asnumpy()
    net.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(net(photos).asnumpy(), imperative, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net(photos).asnumpy(), imperative, rtol=1e-4, atol=1e-5)


def test_export_loads_in_plain_mxnet(tmp_path, photos):
    net = _net(dropblock_prob=0.1)
    expected = net(photos).asnumpy()
    result = export_symbol(net, str(tmp_path / "model"), input_size=64, batch_size=4,
                           sample=photos)
    assert result.max_abs_diff < 1e-5
    np.save(tmp_path / "x.npy", photos.asnumpy())
    # a fresh interpreter that never imports resnest_gluon
    code = textwrap.dedent(f"""
        import sys, numpy as np, mxnet as mx
        net = mx.gluon.SymbolBlock.imports({result.symbol_file!r}, ["data"],
                                           {result.params_file!r})
        out = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r})))
        np.save({str(tmp_path / 'y.npy')!r}, out.asnumpy())
        assert not any(m.startswith("resnest_gluon") for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)
    # the serving graph carries no DropBlock random ops, and the net keeps its probability
    assert "uniform" not in open(result.symbol_file).read()
    assert net.layer3[0].dropblock1.drop_prob == 0.1


def test_fused_export_folds_batchnorm_and_matches(tmp_path, photos):
    # Non-trivial BatchNorm statistics, so that folding them into the convolutions matters.
    net = randomize_batchnorm(_net("resnest50_fast_2s2x40d", dropblock_prob=0.1), seed=0)
    expected = net(photos).asnumpy()
    result = export_symbol(net, str(tmp_path / "fused"), input_size=64, batch_size=4,
                           sample=photos, fuse=True)
    ops = [node["op"] for node in json.load(open(result.symbol_file))["nodes"]]
    assert "BatchNorm" not in [op for op in ops if op != "null"][:3]   # stem: folded
    assert ops.count("_sg_mkldnn_conv") >= 50 and "Convolution" not in ops
    assert result.max_abs_diff < 1e-4 * np.abs(expected).max()
    np.save(tmp_path / "x.npy", photos.asnumpy())
    code = textwrap.dedent(f"""
        import numpy as np, mxnet as mx
        net = mx.gluon.SymbolBlock.imports({result.symbol_file!r}, ["data"],
                                           {result.params_file!r})
        x = mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'y.npy')!r}, net(x).asnumpy())
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)
    # the network itself is back on its plain graph: it still trains
    with mx.autograd.record():
        loss = net(photos).sum()
    loss.backward()
    assert np.abs(net.fc.weight.grad().asnumpy()).sum() > 0


def test_float16_cast_gives_a_consistent_graph():
    # MXNet has no float16 GEMM on CPU, so check what a GPU would run: every parameter and
    # every intermediate of the training graph (DropBlock active) types as float16.
    net = to_precision(_net(dropblock_prob=0.1), "float16")
    for name, p in net.collect_params().items():
        # BatchNorm keeps float32 scale/shift and statistics with float16 data, by design.
        want = "float32" if "batchnorm" in name else "float16"
        assert np.dtype(p.dtype) == np.dtype(want), name
    sym = net(mx.sym.var("data", dtype="float16"))
    _, out_types, _ = sym.infer_type(data="float16")
    assert out_types == [np.float16]
    arg_types, _, _ = sym.get_internals().infer_type(data="float16")
    assert None not in arg_types


def test_bfloat16_amp_on_cpu_close_to_float32(photos):
    net = _net()
    expected = net(photos).asnumpy()
    bf16 = to_precision(net, "bfloat16", input_shape=photos.shape)
    got = bf16(photos).asnumpy()
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    # and it really computes in bfloat16 inside
    _, types, _ = bf16(mx.sym.var("data")).get_internals().infer_type(data="float32")
    assert sum("bfloat16" in str(t) for t in types) > 50


def test_unknown_precision():
    with pytest.raises(ValueError, match="dtype"):
        to_precision(_net(), "int8")


@pytest.mark.parametrize("config_file,size,ratio", [("resnest101.yaml", 256, 0.875),
                                                    ("resnest200.yaml", 320, 320 / 352),
                                                    ("resnest269.yaml", 416, 416 / 448)])
def test_onnx_export_is_made_at_the_models_eval_size(tmp_path, config_file, size, ratio):
    # The shipped config's model and train size, without its explicit eval size, and with one
    # block per stage to keep the test small: the size comes from the model's spec.
    import onnx
    import yaml

    from resnest_gluon.config import load_config
    from resnest_gluon.training.setup import build_network
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shipped = load_config(os.path.join(root, "configs", config_file))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "model": {"name": shipped.model.name, "overrides": {"layers": [1, 1, 1, 1]}},
        "data": {"num_classes": 10, "input_size": shipped.data.input_size}}))
    config = load_config(str(tmp_path / "c.yaml"))
    net = build_network(config)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.save_parameters(str(tmp_path / "w.params"))
    done = subprocess.run([sys.executable, os.path.join(root, "scripts", "export.py"), "--config",
                           str(tmp_path / "c.yaml"), "--params", str(tmp_path / "w.params"),
                           "--output", str(tmp_path / "m"), "--onnx"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # exported graphs hold MXNet's own operators only (build_network picks the compiled one
    # for this CPU)
    symbols = list(tmp_path.glob("m*symbol.json"))
    assert symbols and all("resnest_radix_sum" not in f.read_text() for f in symbols)
    found = set()
    net.apply(lambda b: found.add(getattr(b, "attention_product", None)))
    assert "radix_sum" in found
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, size, size]
    meta = json.loads((tmp_path / "m-meta.json").read_text())
    assert (meta["model"], meta["size"], meta["num_classes"]) == (shipped.model.name, size, 10)
    assert meta["crop_ratio"] == pytest.approx(ratio)


def test_split_groups_export_to_onnx_and_match(tmp_path, photos):
    """The CPU graph of a 4s2x40d network (groups of 10 to 40 input channels run as separate
    convolutions) exports and runs on onnxruntime with the network's logits."""
    from resnest_gluon.export import export_onnx
    net = randomize_batchnorm(_net("resnest50_fast_4s2x40d", layers=[1, 1, 1, 1]), seed=1)
    assert sum(1 for b in _blocks(net) if getattr(b, "split_groups", False)) == 3
    result = export_symbol(net, str(tmp_path / "m"), input_size=64, batch_size=4,
                           sample=photos)
    assert result.max_abs_diff < 1e-5
    diff = export_onnx(result.symbol_file, result.params_file, result.input_shape,
                       str(tmp_path / "m.onnx"), photos)
    assert diff < 1e-4


def _blocks(net):
    found = []
    net.apply(found.append)
    return found


def test_fused_gluon_graph_with_the_compiled_operator_matches_the_plain_one(photos):
    """What verify.py evaluates on CPUs: the network as built for this CPU (the compiled
    split-attention operator in it), fused in place by oneDNN, then back to plain."""
    from resnest_gluon.models.fusion import fuse_for_cpu_inference, unfuse
    from resnest_gluon.models.splat import implementations_for
    net = randomize_batchnorm(_net(**implementations_for("cpu")), seed=0)
    net.hybridize(static_alloc=True, static_shape=True)
    plain = net(photos).asnumpy()
    fuse_for_cpu_inference(net, photos)
    fused = net(photos).asnumpy()
    scale = np.abs(plain).max()
    assert np.abs(fused - plain).max() <= 1e-5 * max(scale, 1.0)
    assert (fused.argmax(axis=1) == plain.argmax(axis=1)).all()
    unfuse(net)
    np.testing.assert_array_equal(net(photos).asnumpy(), plain)


def test_a_network_with_the_compiled_operator_exports_and_converts_portably(tmp_path, photos):
    """export_symbol and bfloat16 conversion trace MXNet's own operators in its place, and
    the network keeps the compiled one."""
    from resnest_gluon.models.splat import implementations_for
    net = _net(**implementations_for("cpu"))
    net.hybridize(static_alloc=True, static_shape=True)
    expected = net(photos).asnumpy()
    result = export_symbol(net, str(tmp_path / "model"), input_size=64, batch_size=4,
                           sample=photos)
    assert result.max_abs_diff < 1e-5
    assert "resnest_radix_sum" not in open(result.symbol_file).read()
    assert net.layer1[0].conv2.attention_product == "radix_sum"
    np.testing.assert_array_equal(net(photos).asnumpy(), expected)
    bf16 = to_precision(net, "bfloat16", input_shape=photos.shape)
    assert np.abs(bf16(photos).asnumpy() - expected).max() < 0.05 * max(np.abs(expected).max(),
                                                                         1.0)
    assert net.layer1[0].conv2.attention_product == "radix_sum"
