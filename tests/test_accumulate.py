"""Large batches on fewer workers: gradient accumulation, the optimizers for large batches,
and global gradient-norm clipping.

* With BatchNorm on its running statistics (so a sample's gradient does not depend on the
  others in its batch), an update from two micro-batches of 8 equals one from a batch of 16
  within float32 rounding, and 12 of them stay far closer than with batch statistics; the
  schedule, the steps per epoch and the logs are those of the batch of 16.
* NAG, SGD, LARS and LAMB take one step as the formulas say, from hand computations.
* Clipping scales the gradient to the norm asked for, as the optimizer sees it.
"""
import mxnet as mx
import numpy as np
import pytest
from runs import newest_meta, tiny

from resnest_gluon.config import ConfigError, load_config
from resnest_gluon.training.loop import fit
from resnest_gluon.training.metrics import read_metrics
from resnest_gluon.training.optim import clip_global_norm, optimizer_arguments

GLOBAL_STATS = "model.overrides.norm_kwargs={use_global_stats: true}"


def _run(digits, workdir, *extra):
    config = load_config(None, tiny(digits, "train.epochs=2", "data.mixup_alpha=0",
                                    "train.log_every=3", *extra))
    summary = fit(config, str(workdir))
    return summary, mx.nd.load(str(workdir / "final.params"))


def _steps(workdir):
    return [(r["step"], r["epoch_float"], r["lr"]) for r in
            read_metrics(str(workdir / "metrics.jsonl")) if r["kind"] == "step"]


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    """Two epochs of batches of 16, and of two accumulated micro-batches of 8, with global
    BatchNorm statistics; and the accumulated run with batch statistics."""
    out = {}
    for name, extra in (("batch16", ("train.batch_size=16", GLOBAL_STATS)),
                        ("micro8x2", ("train.batch_size=8", "train.accumulate=2",
                                      GLOBAL_STATS)),
                        ("micro8x2_batch_bn", ("train.batch_size=8", "train.accumulate=2"))):
        workdir = tmp_path_factory.mktemp(name)
        out[name] = (*_run(digits, workdir, *extra), workdir)
    return out


def test_one_update_from_micro_batches_equals_one_from_the_large_batch(digits, tmp_path):
    """The first update at the peak LR (no warm-up), from 2 x 8 accumulated and from 16."""
    params = {}
    for name, extra in (("batch16", ("train.batch_size=16",)),
                        ("micro8x2", ("train.batch_size=8", "train.accumulate=2"))):
        workdir = tmp_path / name
        fit(load_config(None, tiny(digits, "train.epochs=2", "data.mixup_alpha=0",
                                   "train.max_steps=1", "optim.warmup_epochs=0", GLOBAL_STATS,
                                   *extra)), str(workdir))
        params[name] = mx.nd.load(str(workdir / "checkpoints" / "step-00000001" /
                                      "model.params"))
    assert sorted(params["batch16"]) == sorted(params["micro8x2"])
    for name, large in params["batch16"].items():
        np.testing.assert_allclose(params["micro8x2"][name].asnumpy(), large.asnumpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def _largest_relative_difference(a, b):
    """The largest difference of two sets of trained parameters (running statistics left
    out), each tensor's relative to its scale."""
    return max(float(np.abs(a[n].asnumpy() - b[n].asnumpy()).max()
                     / (np.abs(b[n].asnumpy()).max() + 1e-12)) for n in b if "running" not in n)


def test_accumulated_micro_batches_train_as_one_large_batch(runs):
    """After 12 updates rounding has grown through the training, but stays far below what
    normalising each micro-batch on its own does (the control, with batch statistics)."""
    _, large, _ = runs["batch16"]
    _, accumulated, _ = runs["micro8x2"]
    _, batch_bn, _ = runs["micro8x2_batch_bn"]
    assert sorted(large) == sorted(accumulated)
    same = _largest_relative_difference(accumulated, large)
    control = _largest_relative_difference(batch_bn, large)
    print(f"largest relative difference {same:.2e}, control {control:.2e}")
    assert same < 0.05 and control > 20 * same


def test_an_accumulated_run_has_the_schedule_of_its_global_batch(runs):
    large_summary, _, large_dir = runs["batch16"]
    summary, _, workdir = runs["micro8x2"]
    assert summary["global_step"] == large_summary["global_step"] == 12   # 96 // 16 x 2
    assert _steps(workdir) == _steps(large_dir)
    meta = newest_meta(workdir)
    assert (meta["steps_per_epoch"], meta["accumulate"], meta["global_step"]) == (6, 2, 12)


def test_accumulation_is_checked(digits):
    with pytest.raises(ConfigError, match="train.accumulate must be >= 1"):
        load_config(None, ["train.accumulate=0"])
    with pytest.raises(ConfigError, match="optim.name must be one of nag, sgd, lars, lamb"):
        load_config(None, ["optim.name=adam"])


# --- the optimizers, one step against hand computations ------------------------------------

def _one_step(name, weights, grads, lr=0.1, wd=1e-3, batch=4, **settings):
    """The parameters after one Gluon trainer step of ``optim.name=name``."""
    oc = load_config(None, [f"optim.name={name}", f"optim.weight_decay={wd}",
                            *[f"optim.{k}={v}" for k, v in settings.items()]]).optim
    params = {}
    for key, value in weights.items():
        param = mx.gluon.Parameter(key, shape=value.shape)
        param.initialize(ctx=mx.cpu())
        param.set_data(mx.nd.array(value))
        params[key] = param
    optimizer, arguments = optimizer_arguments(oc, params, lr)
    trainer = mx.gluon.Trainer(params, optimizer, arguments, kvstore=None)
    for key, param in params.items():
        with mx.autograd.record():
            loss = (param.data() * mx.nd.array(grads[key])).sum()   # gradient = grads[key]
        loss.backward()
    trainer.step(batch)
    return {key: p.data().asnumpy() for key, p in params.items()}


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    weights = {"w_weight": rng.normal(size=(3, 5)).astype(np.float32),
               "b_bias": rng.normal(size=(3,)).astype(np.float32)}
    grads = {key: rng.normal(size=value.shape).astype(np.float32) * 4
             for key, value in weights.items()}
    return weights, grads


def test_nag_and_sgd_take_their_first_step(problem):
    weights, grads = problem
    lr, wd, batch, momentum = 0.1, 1e-3, 4, 0.9
    for name, factor in (("nag", 1 + momentum), ("sgd", 1.0)):
        got = _one_step(name, weights, grads, lr, wd, batch)
        for key in weights:
            step = grads[key] / batch + wd * weights[key]
            np.testing.assert_allclose(got[key], weights[key] - lr * factor * step,
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")


def test_lars_scales_each_weight_by_its_trust_ratio_but_not_biases(problem):
    weights, grads = problem
    lr, wd, batch, eta = 2.0, 1e-3, 4, 0.01
    got = _one_step("lars", weights, grads, lr, wd, batch, lars_eta=eta)
    w, g = weights["w_weight"], grads["w_weight"] / batch
    trust = eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w))
    np.testing.assert_allclose(got["w_weight"], w - lr * trust * (g + wd * w), rtol=1e-5)
    # a bias: plain momentum SGD at the full rate (its weight decay is
    # optim.no_wd_on_bn_bias's business, through the parameter's wd_mult)
    b, gb = weights["b_bias"], grads["b_bias"] / batch
    np.testing.assert_allclose(got["b_bias"], b - lr * (gb + wd * b), rtol=1e-5)


def test_lamb_takes_its_first_step(problem):
    weights, grads = problem
    lr, wd, batch, beta1, beta2, eps = 0.01, 1e-2, 4, 0.9, 0.999, 1e-6
    got = _one_step("lamb", weights, grads, lr, wd, batch)
    for key, w in weights.items():
        g = grads[key] / batch
        mean = (1 - beta1) * g / (1 - beta1)           # bias-corrected first step
        var = (1 - beta2) * g * g / (1 - beta2)
        update = mean / (np.sqrt(var) + eps) + wd * w
        ratio = np.linalg.norm(w) / np.linalg.norm(update)
        np.testing.assert_allclose(got[key], w - lr * ratio * update, rtol=1e-4,
                                   err_msg=key)


def test_clipping_scales_the_gradient_to_the_norm_asked_for():
    rng = np.random.default_rng(1)
    params = []
    for shape in ((4, 3), (7,), (2, 2, 3)):
        param = mx.gluon.Parameter(f"p{len(params)}", shape=shape)
        param.initialize(ctx=mx.cpu())
        param.grad()[:] = rng.normal(size=shape) * 10
        params.append(param)
    raw = np.sqrt(sum(float((p.grad().asnumpy() ** 2).sum()) for p in params))
    rescale = 0.25   # what the optimizer multiplies by (1 / batch)
    before = [p.grad().asnumpy().copy() for p in params]
    norm = clip_global_norm(params, 1.0, rescale)
    assert float(norm.asscalar()) == pytest.approx(raw * rescale, rel=1e-5)
    clipped = np.sqrt(sum(float((p.grad().asnumpy() ** 2).sum()) for p in params)) * rescale
    assert clipped == pytest.approx(1.0, rel=1e-4)
    for param, old in zip(params, before):   # one factor for every array: the direction stays
        np.testing.assert_allclose(param.grad().asnumpy(), old / (raw * rescale), rtol=1e-4)
    clip_global_norm(params, 100.0, rescale)   # under the limit: unchanged
    for param, old in zip(params, before):
        np.testing.assert_allclose(param.grad().asnumpy(), old / (raw * rescale), rtol=1e-4)


def test_the_8_gpu_config_keeps_the_published_global_batch():
    from resnest_gluon.data import batches_per_epoch
    from resnest_gluon.training.schedule import peak_lr
    config = load_config("configs/resnest50_8gpu.yaml")
    published = load_config("configs/resnest50.yaml")
    tc = config.train
    assert tc.batch_size * tc.accumulate * 8 == published.train.batch_size * 64 == 8192
    assert peak_lr(config.optim.base_lr, 8192) == pytest.approx(3.2)
    assert batches_per_epoch(1281167, tc.batch_size * tc.accumulate, 8) == \
        batches_per_epoch(1281167, published.train.batch_size, 64) == 156
    assert config.model == published.model and config.optim == published.optim
