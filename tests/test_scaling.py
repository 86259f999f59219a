"""The scaling model (resnest_gluon.training.scaling) and the resnest-scaling command."""
import math
import subprocess
import sys

import pytest

from resnest_gluon.commands import scaling as command
from resnest_gluon.config import load_config
from resnest_gluon.models import count_flops, count_params, get_model
from resnest_gluon.training.scaling import (
    DEPTHS,
    PUBLISHED_RESNET50,
    RECIPE_BATCH,
    ModelInputs,
    Scenario,
    allreduce_seconds,
    exposed_seconds,
    fused_buffers,
    gradient_bytes,
    model_inputs,
    nccl_ring_latency_seconds,
    resnet50_v15,
    ring_allreduce_seconds,
    scaling_efficiency,
    timm_ratio,
)

# A made-up network for the pure-formula tests: 25M gradient values in 200 arrays.
TOY = ModelInputs("toy", batch=64, crop=224, trainable_params=25_000_000, tensors=200,
                  flops=4_000_000_000)


def test_ring_allreduce_matches_a_hand_computation():
    # 4 workers, 100 MB, 10 Gbit/s, 3 buffers of 1 ms latency:
    # 3 * 1 ms + 2 * 3/4 * 800 Mbit / 10 Gbit/s = 0.003 + 0.12 s
    assert ring_allreduce_seconds(100e6, 4, 10e9, 1e-3, 3) == pytest.approx(0.123)
    assert ring_allreduce_seconds(100e6, 1, 10e9, 1e-3, 3) == 0.0
    with pytest.raises(ValueError):
        ring_allreduce_seconds(100e6, 4, 0.0)


def test_horovod_time_adds_half_a_cycle_and_one_latency_per_fused_buffer():
    nbytes, fusion = 100 * 2**20, 64 * 2**20     # 100 MiB in 64 MiB buffers: 2 calls
    assert fused_buffers(nbytes, fusion, tensors=300) == 2
    assert fused_buffers(128 * 2**20, fusion, tensors=300) == 2
    assert fused_buffers(nbytes, 0, tensors=300) == 300    # fusion off: one call per array
    ring = ring_allreduce_seconds(nbytes, 64, 25e9)
    got = allreduce_seconds(nbytes, 64, 25e9, 1e-3, fusion, 300, cycle_s=5e-3)
    assert got == pytest.approx(2.5e-3 + 2 * 1e-3 + ring)
    assert allreduce_seconds(nbytes, 1, 25e9, 1e-3, fusion, 300, 5e-3) == 0.0


def test_fp16_compression_halves_the_bandwidth_term():
    fp32, fp16 = gradient_bytes(TOY.trainable_params), gradient_bytes(TOY.trainable_params, True)
    assert fp32 == 4 * TOY.trainable_params and fp16 * 2 == fp32
    t32 = allreduce_seconds(fp32, 64, 100e9, 0.0, 64 * 2**20, TOY.tensors)
    t16 = allreduce_seconds(fp16, 64, 100e9, 0.0, 64 * 2**20, TOY.tensors)
    assert t16 == pytest.approx(t32 / 2)


def test_nccl_latency_model():
    # 64 ranks on 8 nodes: 126 steps, 14 over the network, x1.9 past the ring plateau
    expected = 1.9 * (8.4 + 112 * 3.4 + 14 * 9.6) * 1e-6
    assert nccl_ring_latency_seconds(64, 8) == pytest.approx(expected)
    assert nccl_ring_latency_seconds(8, 8) == pytest.approx((8.4 + 14 * 3.4) * 1e-6)
    assert nccl_ring_latency_seconds(1) == 0.0


def test_overlap_hides_communication_down_to_the_tail():
    compute = 0.3       # backward = 0.2 s
    assert exposed_seconds(0.05, compute, overlap=0.0) == 0.05
    assert exposed_seconds(0.5, compute, overlap=1.0) == pytest.approx(0.3)
    # fully hidden except the last gradients: half a cycle plus one latency
    assert exposed_seconds(0.05, compute, 1.0, latency_s=1e-3, cycle_s=5e-3) == \
        pytest.approx(3.5e-3)
    assert exposed_seconds(0.0, compute, 1.0, latency_s=1e-3, cycle_s=5e-3) == 0.0
    assert scaling_efficiency(0.3, 0.1) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        exposed_seconds(0.05, compute, overlap=1.5)


def test_efficiency_falls_with_workers_and_rises_with_batch():
    def efficiency(workers, batch, gbit=25.0, fp16=False, overlap=0.0):
        scenario = Scenario(workers=workers, latency_s=0.5e-3, overlap=overlap)
        model = ModelInputs(TOY.name, batch, TOY.crop, TOY.trainable_params, TOY.tensors,
                            TOY.flops)
        return scenario.step(model, 1000.0, gbit, fp16)[3]

    by_workers = [efficiency(n, 128) for n in (1, 2, 8, 64, 512)]
    assert by_workers[0] == 1.0
    assert all(a > b for a, b in zip(by_workers, by_workers[1:]))
    by_batch = [efficiency(64, b) for b in (16, 32, 64, 128, 256)]
    assert all(a < b for a, b in zip(by_batch, by_batch[1:]))
    assert efficiency(64, 64, gbit=100) > efficiency(64, 64, gbit=25)
    assert efficiency(64, 64, fp16=True) > efficiency(64, 64)
    assert efficiency(64, 64, overlap=1.0) > efficiency(64, 64)


def test_gradient_of_resnest50_is_its_trainable_parameters_in_float32():
    net = get_model("resnest50")
    trainable = sum(math.prod(p.shape) for p in net.collect_params().values()
                    if p.grad_req != "null")
    inputs = model_inputs("resnest50")
    assert inputs.trainable_params == trainable == count_params(net, trainable_only=True)
    assert inputs.trainable_params < count_params(net)    # BN running stats are no gradients
    assert gradient_bytes(inputs.trainable_params) == 4 * trainable
    assert (inputs.batch, inputs.crop) == (128, 224)
    assert inputs.tensors == sum(1 for p in net.collect_params().values()
                                 if p.grad_req != "null")


def test_recipe_batch_matches_the_shipped_configs():
    for name in DEPTHS:
        config = load_config(f"configs/{name}.yaml")
        assert config.model.name == name
        assert config.train.batch_size == RECIPE_BATCH[name]


def test_resnet50_reference_and_timm_ratio():
    net = resnet50_v15()
    assert count_params(net, trainable_only=True) == 25_557_032    # torchvision's resnet50
    assert count_flops(net, 224) / 1e9 == pytest.approx(4.09, abs=0.01)
    assert timm_ratio("resnest50", 224) == pytest.approx(534.66 / 826.06)
    assert timm_ratio("resnest101", 224) == pytest.approx(253.9 / 826.06 * (256 / 224) ** 2)


def test_command_prints_every_depth_for_every_gpu_and_link(capsys):
    assert command.main([]) == 0
    out = capsys.readouterr().out
    for name in DEPTHS:
        rows = [line for line in out.splitlines() if line.startswith(f"| {name} |")]
        # one inputs row, then one row per link speed (25, 100) in each GPU table
        assert len(rows) == 1 + 2 * len(PUBLISHED_RESNET50), name
    for ref in PUBLISHED_RESNET50:
        assert f"### {ref.name}:" in out
    assert "DeepLearningExamples" in out and "pytorch-image-models" in out
    assert "fusion threshold 64 MiB, cycle time 5 ms" in out


def test_command_takes_measured_throughput_and_rejects_bad_input(capsys):
    assert command.main(["resnest50", "--img-per-s", "resnest50=850", "--latency-us", "0",
                         "--bandwidth-gbit", "10"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| resnest50 | 128 | 850 |")]
    assert len(row) == 1 and "| 10 |" in row[0]
    assert "### V100-FP32" not in out and "Measured img/s" in out
    assert command.main(["--img-per-s", "resnest51=3"]) == 2
    assert command.main(["resnest51"]) == 2
    assert command.main(["--overlap", "2"]) == 2
    assert "resnest-scaling:" in capsys.readouterr().err


def test_scaling_script_help():
    out = subprocess.run([sys.executable, "scripts/scaling.py", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert "--fusion-mb" in out and "--img-per-s" in out and "--bandwidth-gbit" in out


def test_wire_efficiency_compression_and_the_host_floor():
    """Two hosts at 1 Gbit/s, 110 MB: the wire carries 0.956 of the bits, the float16 cast
    comes before and after the ring, and the ring takes at least the hosts' own floor."""
    base = allreduce_seconds(110e6, 2, 1e9, 0.0, 64 * 2**20, 161)
    assert base == pytest.approx(8 * 110e6 / 1e9)
    wire = allreduce_seconds(110e6, 2, 1e9, 0.0, 64 * 2**20, 161, wire_efficiency=0.956)
    assert wire == pytest.approx(base / 0.956)
    cast = allreduce_seconds(110e6, 2, 1e9, 0.0, 64 * 2**20, 161, compress_s=0.1)
    assert cast == pytest.approx(base + 0.1)
    floor = allreduce_seconds(110e6, 2, 5e9, 0.0, 64 * 2**20, 161, cycle_s=0.005,
                              host_floor_s=0.2)
    assert floor == pytest.approx(0.0025 + 0.2)                   # 0.176 s on the wire < 0.2
    assert allreduce_seconds(110e6, 2, 1e9, 0.0, 64 * 2**20, 161, host_floor_s=0.2) == \
        pytest.approx(base)                                       # the wire is slower
