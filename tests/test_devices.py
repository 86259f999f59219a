"""Device placement that a CPU can check: which GPU each rank takes, and checkpoints whose
arrays carry no device, restored onto each rank's own (CPU contexts with device ids stand in
for GPUs: MXNet keeps the id on every array and on everything it saves)."""
import os
import pickle
import struct

import mxnet as mx
import numpy as np
import pytest

from resnest_gluon.config import ConfigError
from resnest_gluon.training.checkpoint import CheckpointManager
from resnest_gluon.training.devices import gpu_index, unsupported_gpus
from resnest_gluon.training.ema import ParameterEMA


@pytest.mark.parametrize("local_rank, visible, expected", [
    (0, 0, None), (3, 0, None),              # no GPU: CPU
    (0, 1, 0), (5, 1, 0),                    # one GPU per process (CUDA_VISIBLE_DEVICES)
    (0, 8, 0), (7, 8, 7),                    # the node's GPUs all visible
    (1, 2, 1),                               # two per process, e.g. two jobs on one node
])
def test_each_rank_takes_its_own_gpu(local_rank, visible, expected):
    assert gpu_index(local_rank, visible) == expected


def test_more_ranks_than_gpus_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"local rank 4 has no GPU of its own: this process "
                                          r"sees 4 GPUs .*\(horovodrun -H host:4\)"):
        gpu_index(4, 4)


def test_a_gpu_the_wheel_has_no_kernels_for_is_named():
    listed = [("0", "8.0", "NVIDIA A100-SXM4-80GB"), ("1", "9.0", "NVIDIA H200"),
              ("2", "7.5", "Tesla T4"), ("3", "3.7", "Tesla K80"), ("4", "[N/A]", "old driver")]
    assert unsupported_gpus(listed) == [
        "GPU 1 (NVIDIA H200, compute capability 9.0)",
        "GPU 3 (Tesla K80, compute capability 3.7)"]


def _train_one_step(ctx, optimizer="nag"):
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(4, in_units=3), mx.gluon.nn.BatchNorm(in_channels=4))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    trainer = mx.gluon.Trainer(net.collect_params(), optimizer,
                               {"learning_rate": 0.1, "momentum": 0.9})
    ema = ParameterEMA(net._collect_params_with_prefix(), 0.5)
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 3), ctx=ctx)).sum()
    loss.backward()
    trainer.step(2)
    ema.update()
    return net, trainer, ema


_ITEMSIZE = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 12: 2}


def _recorded_devices(raw: bytes, offset: int = 0, count: int = 1):
    """The ``(device type, device id)`` MXNet wrote for ``count`` dense NDArrays stored from
    ``offset`` in its V2 format (magic, storage type, shape, context, dtype, data). The loaded
    arrays cannot tell: MXNet loads every CPU array as cpu(0), whatever id it recorded."""
    devices = []
    for _ in range(count):
        magic, stype, ndim = struct.unpack_from("<IiI", raw, offset)
        assert (magic, stype) == (0xF993FAC9, 0)
        shape = struct.unpack_from(f"<{ndim}q", raw, offset + 12)
        dev_type, dev_id, dtype = struct.unpack_from("<iii", raw, offset + 12 + 8 * ndim)
        devices.append((dev_type, dev_id))
        offset += 24 + 8 * ndim + int(np.prod(shape)) * _ITEMSIZE[dtype]
    return devices


def _devices_in_params_file(path):
    """The devices recorded for every array of an ``mx.nd.save`` file."""
    with open(path, "rb") as handle:
        raw = handle.read()
    count, = struct.unpack_from("<Q", raw, 16)     # after the file's magic and reserved word
    return set(_recorded_devices(raw, 24, count))


class _RawArray:
    """What an unpickled NDArray becomes here: its saved bytes, not an array (unpickling a
    real NDArray would put it on cpu(0) and hide the recorded device)."""

    def __init__(self, *args):
        self.raw = None

    def __setstate__(self, state):
        self.raw = state["handle"]


class _RawUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _RawArray if name == "NDArray" else super().find_class(module, name)


def _devices_in_states_file(path):
    """The devices recorded for the optimizer states of a ``trainer.states`` file."""
    with open(path, "rb") as handle:
        states = _RawUnpickler(handle).load()[0]
    found = set()
    for state in states.values():
        for array in (state if isinstance(state, (tuple, list)) else [state]):
            if isinstance(array, _RawArray):
                found.update(_recorded_devices(array.raw))
    return found


def _contexts(value):
    if isinstance(value, mx.nd.NDArray):
        return {value.context}
    if isinstance(value, (tuple, list)):
        return set().union(*map(_contexts, value)) if value else set()
    if isinstance(value, dict):
        return set().union(*map(_contexts, value.values())) if value else set()
    return set()


def test_checkpoints_hold_no_device_and_restore_onto_the_ranks_own(tmp_path):
    saved_on, resumed_on = mx.cpu(3), mx.cpu(5)       # "GPU 3" saves, "GPU 5" resumes
    net, trainer, ema = _train_one_step(saved_on)
    assert _contexts(trainer._updaters[0].states) == {saved_on}
    folder = CheckpointManager(str(tmp_path)).save(
        net, trainer, {"global_step": 1, "epoch": 0, "batch": 1}, ema)
    cpu0 = (1, 0)
    assert _devices_in_states_file(os.path.join(folder, "trainer.states")) == {cpu0}
    for name in ("ema.params", "model.params"):
        assert _devices_in_params_file(os.path.join(folder, name)) == {cpu0}
    # the stock writers record the device (this is what the checkpoint avoids)
    trainer.save_states(str(tmp_path / "stock.states"))
    assert _devices_in_states_file(str(tmp_path / "stock.states")) == {(1, 3)}
    mx.nd.save(str(tmp_path / "stock.params"), ema.values())
    assert _devices_in_params_file(str(tmp_path / "stock.params")) == {(1, 3)}

    again, again_trainer, again_ema = _train_one_step(resumed_on)
    again.load_parameters(os.path.join(folder, "model.params"), ctx=resumed_on)
    again_trainer.load_states(os.path.join(folder, "trainer.states"))
    again_ema.load(os.path.join(folder, "ema.params"))
    with mx.autograd.record():
        loss = again(mx.nd.ones((2, 3), ctx=resumed_on)).sum()
    loss.backward()
    again_trainer.step(2)
    assert _contexts(again_trainer._updaters[0].states) == {resumed_on}
    assert _contexts(again_ema.values()) == {resumed_on}
    # and the values are the saved ones: the same update from the same state
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 3), ctx=saved_on)).sum()
    loss.backward()
    trainer.step(2)
    for (_, a), (_, b) in zip(sorted(net._collect_params_with_prefix().items()),
                              sorted(again._collect_params_with_prefix().items())):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy())


def test_uint8_batches_staged_through_pinned_memory_normalise_on_the_device_alike(digits):
    """The GPU input path (uint8 upload through page-locked memory, normalised on the device)
    gives the batches the CPU path (normalised by the workers) gives."""
    from resnest_gluon.data import (
        BatchLoader,
        EvalTransform,
        Normalization,
        ShardSet,
        eval_batches,
    )
    from resnest_gluon.models import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    shards = ShardSet(digits[1])
    norm = Normalization(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)

    def batches(**kwargs):
        return list(BatchLoader(shards, eval_batches(len(shards), 8, 0, 1), EvalTransform(32),
                                32, classes=10, workers=1, **kwargs))

    on_workers = batches(normalization=norm)
    as_uint8 = batches(pinned=True)
    assert as_uint8[0][0].dtype == np.uint8 and as_uint8[0][0].context == mx.cpu()
    for (images, labels), (raw, raw_labels) in zip(on_workers, as_uint8):
        np.testing.assert_array_equal(labels.asnumpy(), raw_labels.asnumpy())
        np.testing.assert_allclose(norm.batch(raw).asnumpy(), images.asnumpy(), rtol=0,
                                   atol=1e-6)


def test_training_with_normalisation_on_the_device(digits, tmp_path):
    from runs import tiny, train_cli

    from resnest_gluon.training.metrics import read_metrics
    losses = {}
    for where in ("workers", "device"):   # fresh processes: the same initial weights
        run = train_cli(tmp_path / where,
                        tiny(digits, "train.epochs=1", f"data.normalize_on={where}"))
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-3000:]
        losses[where] = [r["loss"] for r in read_metrics(str(tmp_path / where /
                                                             "metrics.jsonl"))
                         if r["kind"] == "step"]
    assert len(losses["device"]) == 6
    np.testing.assert_allclose(losses["device"], losses["workers"], rtol=1e-4)
