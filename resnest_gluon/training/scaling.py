"""Analytic model of data-parallel scaling: Horovod ring-allreduce time against compute per step.

This module owns the equations of ``docs/scaling.md`` as pure functions, the published inputs
they are evaluated with (per-GPU training throughput of ResNet-50 and the relative speed of each
ResNeSt depth, each with its source), and the Markdown tables the ``resnest-scaling`` command
prints. Nothing here imports horovod, measures time or does network I/O; the only model work
is counting parameters and multiply-adds of the zoo's networks.

The model, for ``N`` workers, a gradient of ``S`` bytes and a per-node link of ``B`` bit/s::

    t_ring    = k * alpha + 2 (N - 1) / N * 8 S / B        k = ceil(S / fusion threshold)
    t_comm    = cycle / 2 + t_ring
    t_compute = batch per GPU / (img/s per GPU)
    exposed   = max(min(t_comm, cycle / 2 + alpha), t_comm - f * beta * t_compute)
    efficiency = t_compute / (t_compute + exposed)

``f`` is the fraction of the backward pass (``beta * t_compute``) that hides communication:
0 is no overlap (step = compute + communication), 1 is full overlap with backward.
"""
import dataclasses
import math
import types
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..models import count_flops, count_params, get_model, get_spec

__all__ = ["RECIPE_BATCH", "DEPTHS", "GpuReference", "PUBLISHED_RESNET50", "TIMM_TRAIN_RTX3090",
           "NVIDIA_SOURCE", "TIMM_SOURCE", "NCCL_SOURCE", "ring_allreduce_seconds",
           "fused_buffers", "gradient_bytes", "nccl_ring_latency_seconds", "compute_seconds",
           "allreduce_seconds", "exposed_seconds", "scaling_efficiency", "ModelInputs",
           "model_inputs", "timm_ratio", "flop_ratio", "resnet50_v15", "speed_ratios",
           "estimated_img_per_s", "Scenario", "inputs_table", "scaling_table", "sources_text"]

MIB = 2 ** 20

# docs/reference.md (and configs/resnest*.yaml, train.batch_size): images per GPU per step.
RECIPE_BATCH: Mapping[str, int] = types.MappingProxyType(
    {"resnest14": 128, "resnest26": 128, "resnest50": 128, "resnest101": 64, "resnest200": 32,
     "resnest269": 32})
DEPTHS: Tuple[str, ...] = tuple(RECIPE_BATCH)

NVIDIA_SOURCE = ("NVIDIA DeepLearningExamples, MxNet/Classification/RN50v1.5/README.md, "
                 "'Training performance results' (1-GPU rows, mxnet-20.12-py3 NGC container, "
                 "Total IPS with data loading): DGX-1 8x V100 16GB, FP32 at batch 96 and "
                 "mixed precision at batch 192; DGX A100 8x A100 80GB, TF32 and mixed "
                 "precision at batch 256")
TIMM_SOURCE = ("huggingface/pytorch-image-models, results/benchmark-train-amp-nchw-pt112-"
               "cu113-rtx3090.csv (training samples/s, AMP, NCHW, PyTorch 1.12, one RTX 3090)")
NCCL_SOURCE = ("NCCL's own cost model, src/graph/tuning.cc (NVIDIA/nccl): ring/Simple "
               "allreduce latency = 8.4 us + 3.4 us per NVLink step + 9.6 us per network step, "
               "x1.9 for multi-node messages past the ring's plateau")


@dataclasses.dataclass(frozen=True)
class GpuReference:
    """Published single-GPU training throughput of ResNet-50 v1.5 on one GPU and precision."""

    name: str
    resnet50_img_per_s: float
    batch: int
    description: str


PUBLISHED_RESNET50: Tuple[GpuReference, ...] = (
    GpuReference("V100-FP32", 384.0, 96, "V100 16GB, FP32 (the published ResNeSt recipe)"),
    GpuReference("V100-AMP", 1376.0, 192, "V100 16GB, mixed precision"),
    GpuReference("A100-TF32", 1022.0, 256, "A100 80GB, TF32"),
    GpuReference("A100-AMP", 2180.0, 256, "A100 80GB, mixed precision"),
)

# timm name, training samples/s, training crop (TIMM_SOURCE). Same architectures as our zoo:
# the trainable parameter counts agree (10.61, 17.07, 27.48, 48.28, 70.20, 110.93 M).
TIMM_TRAIN_RTX3090: Mapping[str, Tuple[str, float, int]] = types.MappingProxyType({
    "resnet50": ("resnet50", 826.06, 224),
    "resnest14": ("resnest14d", 979.06, 224),
    "resnest26": ("resnest26d", 728.94, 224),
    "resnest50": ("resnest50d", 534.66, 224),
    "resnest101": ("resnest101e", 253.9, 256),
    "resnest200": ("resnest200e", 83.33, 320),
    "resnest269": ("resnest269e", 35.75, 416),
})

# NCCL ring/Simple latencies in microseconds (NCCL_SOURCE).
_NCCL_BASE_US, _NCCL_NVLINK_STEP_US, _NCCL_NET_STEP_US, _NCCL_PLATEAU = 8.4, 3.4, 9.6, 1.9


def ring_allreduce_seconds(nbytes: float, workers: int, bandwidth_bits: float,
                           latency_s: float = 0.0, buffers: int = 1) -> float:
    """Time of a ring allreduce of ``nbytes`` over ``workers``, sent as ``buffers`` messages.

    Parameters
    ----------
    nbytes : float
        Bytes each worker contributes (the whole gradient, all buffers together).
    workers : int
        Ring size ``N``.
    bandwidth_bits : float
        Link bandwidth in bit/s. In a ring laid out node by node (as NCCL builds it), every
        node sends ``2 (N-1)/N`` of the data over its network link whatever its GPU count, so
        this is the network bandwidth of one node.
    latency_s : float
        Latency ``alpha`` of one allreduce call (all its ``2 (N-1)`` steps).
    buffers : int
        Number of separate allreduce calls (fused buffers); each pays ``latency_s``.

    Returns
    -------
    float
        ``buffers * latency_s + 2 (N-1)/N * 8 nbytes / bandwidth_bits``; 0 for one worker.
    """
    if workers < 1 or bandwidth_bits <= 0 or buffers < 1:
        raise ValueError("workers and buffers must be >= 1 and bandwidth_bits > 0")
    if workers == 1:
        return 0.0
    return buffers * latency_s + 2.0 * (workers - 1) / workers * 8.0 * nbytes / bandwidth_bits


def fused_buffers(nbytes: float, fusion_threshold_bytes: float, tensors: int) -> int:
    """Allreduce calls Horovod makes for one gradient when every tensor is ready at once.

    Parameters
    ----------
    nbytes : float
        Gradient bytes (after compression).
    fusion_threshold_bytes : float
        ``HOROVOD_FUSION_THRESHOLD``; 0 disables fusion.
    tensors : int
        Number of gradient arrays: the count when fusion is off.
    """
    if fusion_threshold_bytes <= 0:
        return max(int(tensors), 1)
    return max(math.ceil(nbytes / fusion_threshold_bytes), 1)


def gradient_bytes(trainable_params: int, fp16: bool = False) -> int:
    """Bytes of one gradient on the wire: 4 per value, 2 with Horovod's fp16 compression."""
    return int(trainable_params) * (2 if fp16 else 4)


def nccl_ring_latency_seconds(workers: int, gpus_per_node: int = 8) -> float:
    """Latency of one ring allreduce call after NCCL's cost model (:data:`NCCL_SOURCE`).

    ``2 (N-1)`` steps, ``2 (nodes-1)`` of them over the network and the rest over NVLink; the
    multi-node plateau factor applies (gradient buffers are past it).
    """
    if workers <= 1:
        return 0.0
    nodes = math.ceil(workers / max(gpus_per_node, 1))
    steps = 2 * (workers - 1)
    net_steps = 2 * (nodes - 1)
    micro = _NCCL_BASE_US + (steps - net_steps) * _NCCL_NVLINK_STEP_US \
        + net_steps * _NCCL_NET_STEP_US
    if nodes > 1:
        micro *= _NCCL_PLATEAU
    return micro * 1e-6


def compute_seconds(batch_per_gpu: int, img_per_s: float) -> float:
    """Forward + backward + update time of one step: per-GPU batch / per-GPU training img/s."""
    if img_per_s <= 0:
        raise ValueError(f"img_per_s must be > 0, got {img_per_s}")
    return batch_per_gpu / img_per_s


def allreduce_seconds(nbytes: float, workers: int, bandwidth_bits: float, latency_s: float,
                      fusion_threshold_bytes: float, tensors: int,
                      cycle_s: float = 0.0, wire_efficiency: float = 1.0,
                      compress_s: float = 0.0, host_floor_s: float = 0.0) -> float:
    """Horovod's time to allreduce one gradient: half a cycle of waiting, the compression
    and the ring, which takes the longer of its time on the wire and ``host_floor_s``.

    Horovod's background loop looks for ready tensors once per ``HOROVOD_CYCLE_TIME``; a tensor
    waits half a cycle on average before its allreduce starts. ``wire_efficiency`` is the
    share of the link's bit rate that carries data (TCP over 1500-byte frames: 1448 of 1514
    bytes, 0.956). ``compress_s`` is the time to cast the gradient to float16 and back, before
    and after the ring (negligible on GPUs). ``host_floor_s`` is the ring's time when the link
    is not what limits it (the hosts' summing and copying, pipelined with the transfer): 0 for
    NCCL on GPUs, which sum at device speed; on CPUs, the same allreduce measured on an
    unlimited link (docs/scaling.md, section 7).
    """
    if workers == 1:
        return 0.0
    buffers = fused_buffers(nbytes, fusion_threshold_bytes, tensors)
    ring = ring_allreduce_seconds(nbytes, workers, bandwidth_bits * wire_efficiency, latency_s,
                                  buffers)
    return cycle_s / 2 + compress_s + max(ring, host_floor_s)


def exposed_seconds(comm_s: float, compute_s: float, overlap: float = 0.0,
                    backward_fraction: float = 2.0 / 3.0, latency_s: float = 0.0,
                    cycle_s: float = 0.0) -> float:
    """Communication time left on the step after hiding part of it under the backward pass.

    Parameters
    ----------
    comm_s : float
        :func:`allreduce_seconds` of the gradient (0 for one worker: nothing is exposed).
    compute_s : float
        :func:`compute_seconds`.
    overlap : float
        Fraction ``f`` in [0, 1] of the backward pass that overlaps communication.
    backward_fraction : float
        Share ``beta`` of the step spent in backward (about 2/3: twice the forward work).
    latency_s, cycle_s : float
        The floor under full overlap: the first layers' gradients are ready only when backward
        ends, then wait half a cycle and one allreduce latency.
    """
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    if comm_s <= 0:
        return 0.0
    floor = min(comm_s, cycle_s / 2 + latency_s)
    return max(floor, comm_s - overlap * backward_fraction * compute_s)


def scaling_efficiency(compute_s: float, exposed_s: float) -> float:
    """Per-GPU throughput at N workers over one GPU's: ``t_compute / (t_compute + exposed)``."""
    return compute_s / (compute_s + exposed_s)


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the model needs to know of one network at its training crop."""

    name: str
    batch: int
    crop: int
    trainable_params: int
    tensors: int
    flops: int              # multiply-adds of one image at ``crop``


def model_inputs(name: str, batch: Optional[int] = None) -> ModelInputs:
    """Trainable parameters, gradient arrays and multiply-adds of zoo model ``name``.

    BatchNorm running statistics (``grad_req == 'null'``) are not gradients and are left out.
    ``batch`` defaults to the published per-GPU batch (:data:`RECIPE_BATCH`).
    """
    net = get_model(name)
    crop = get_spec(name).train_size
    trainable = [p for p in net.collect_params().values() if p.grad_req != "null"]
    return ModelInputs(name, batch or RECIPE_BATCH[name], crop,
                       count_params(net, trainable_only=True), len(trainable),
                       count_flops(net, crop))


def resnet50_v15():
    """ResNet-50 v1.5 built from our ResNeSt class (the network of the NVIDIA numbers).

    Radix 0 (plain 3x3 conv), 7x7 stem, strided 1x1 shortcut, stride on the 3x3 conv:
    25,557,032 trainable parameters, 4.09 G multiply-adds at 224.
    """
    return get_model("resnest50", radix=0, deep_stem=False, avg_down=False, avd=False)


def timm_ratio(name: str, crop: int) -> float:
    """Training speed of ``name`` at ``crop`` relative to ResNet-50 (224), measured by timm.

    Both throughputs come from the same run on one GPU (:data:`TIMM_TRAIN_RTX3090`); the
    ResNeSt one is moved from timm's crop to ``crop`` by the pixel ratio (cost ~ H x W).
    """
    _, reference, _ = TIMM_TRAIN_RTX3090["resnet50"]
    _, speed, timm_crop = TIMM_TRAIN_RTX3090[name]
    return speed / reference * (timm_crop / crop) ** 2


def flop_ratio(flops: int, resnet50_flops: int) -> float:
    """ResNet-50 multiply-adds over the model's: the speed ratio if time followed FLOPs."""
    return resnet50_flops / flops


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The cluster and Horovod settings a table is computed for."""

    workers: int = 64
    bandwidths_gbit: Tuple[float, ...] = (25.0, 100.0)
    fusion_mb: float = 64.0                 # DistConfig.fusion_threshold_mb (MiB)
    cycle_ms: float = 5.0                   # DistConfig.cycle_time_ms
    latency_s: Optional[float] = None       # None: NCCL's model for ``workers``
    gpus_per_node: int = 8
    overlap: float = 1.0
    backward_fraction: float = 2.0 / 3.0

    @property
    def alpha(self) -> float:
        """Latency of one allreduce call (seconds)."""
        if self.latency_s is not None:
            return self.latency_s
        return nccl_ring_latency_seconds(self.workers, self.gpus_per_node)

    def step(self, inputs: ModelInputs, img_per_s: float, gbit: float,
             fp16: bool) -> Tuple[float, float, float, float]:
        """``(compute s, allreduce s, efficiency without overlap, efficiency with overlap)``."""
        compute = compute_seconds(inputs.batch, img_per_s)
        nbytes = gradient_bytes(inputs.trainable_params, fp16)
        comm = allreduce_seconds(nbytes, self.workers, gbit * 1e9, self.alpha,
                                 self.fusion_mb * MIB, inputs.tensors, self.cycle_ms * 1e-3)
        efficiencies = []
        for overlap in (0.0, self.overlap):
            exposed = exposed_seconds(comm, compute, overlap, self.backward_fraction,
                                      self.alpha, self.cycle_ms * 1e-3)
            efficiencies.append(scaling_efficiency(compute, exposed))
        return compute, comm, efficiencies[0], efficiencies[1]


def speed_ratios(models: Sequence[ModelInputs], method: str = "timm") -> Dict[str, float]:
    """``{model: training speed relative to ResNet-50 v1.5}`` at each model's training crop.

    ``"timm"``: :func:`timm_ratio` (measured); ``"flops"``: :func:`flop_ratio` (counted).
    """
    if method == "timm":
        return {m.name: timm_ratio(m.name, m.crop) for m in models}
    if method == "flops":
        reference = count_flops(resnet50_v15(), 224)
        return {m.name: flop_ratio(m.flops, reference) for m in models}
    raise ValueError(f"method must be 'timm' or 'flops', got {method!r}")


def estimated_img_per_s(ratios: Mapping[str, float],
                        references: Iterable[GpuReference] = PUBLISHED_RESNET50
                        ) -> Dict[str, Dict[str, float]]:
    """``{reference name: {model: img/s per GPU}}``: ResNet-50's published img/s x ratio."""
    return {ref.name: {name: ref.resnet50_img_per_s * ratio for name, ratio in ratios.items()}
            for ref in references}


def inputs_table(models: Sequence[ModelInputs], scenario: Scenario,
                 throughput: Mapping[str, Mapping[str, float]],
                 ratios: Optional[Mapping[str, Mapping[str, float]]] = None) -> str:
    """Markdown table of the per-model inputs: batch, crop, gradient size, buffers, img/s.

    Parameters
    ----------
    throughput : mapping
        ``{column: {model: img/s per GPU}}`` (e.g. :func:`estimated_img_per_s`).
    ratios : mapping, optional
        ``{method: {model: speed relative to ResNet-50}}`` (:func:`speed_ratios`).
    """
    ratios = ratios or {}
    fusion = scenario.fusion_mb * MIB
    header = ("| model | batch/GPU | train crop | trainable params (M) | gradient arrays | "
              "gradient MiB fp32 / fp16 | fused buffers fp32 / fp16 | GMACs/img | "
              + "".join(f"speed vs RN50 ({k}) | " for k in ratios)
              + " | ".join(f"img/s/GPU {p}" for p in throughput) + " |")
    rows = [header, "|" + "---|" * (8 + len(ratios) + len(throughput))]
    for m in models:
        fp32, fp16 = gradient_bytes(m.trainable_params), gradient_bytes(m.trainable_params, True)
        relative = "".join(f"{ratios[k][m.name]:.3f} | " for k in ratios)
        speeds = " | ".join(_fmt_speed(throughput[p].get(m.name)) for p in throughput)
        rows.append(f"| {m.name} | {m.batch} | {m.crop} | {m.trainable_params / 1e6:.2f} | "
                    f"{m.tensors} | {fp32 / MIB:.1f} / {fp16 / MIB:.1f} | "
                    f"{fused_buffers(fp32, fusion, m.tensors)} / "
                    f"{fused_buffers(fp16, fusion, m.tensors)} | {m.flops / 1e9:.2f} | "
                    f"{relative}{speeds} |")
    return "\n".join(rows)


def _fmt_speed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.0f}"


def scaling_table(models: Sequence[ModelInputs], scenario: Scenario,
                  img_per_s: Mapping[str, float]) -> str:
    """Markdown table: per model and link speed, allreduce time and efficiency, fp32 and fp16.

    Models without an ``img_per_s`` entry are left out.
    """
    f = scenario.overlap
    rows = [f"| model | batch/GPU | img/s/GPU | compute ms/step | link Gbit/s | "
            f"allreduce ms fp32 | efficiency fp32 (f=0 / f={f:g}) | allreduce ms fp16 | "
            f"efficiency fp16 (f=0 / f={f:g}) | {scenario.workers}-GPU img/s fp16 "
            f"(f=0 / f={f:g}) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        if m.name not in img_per_s:
            continue
        speed = img_per_s[m.name]
        for gbit in scenario.bandwidths_gbit:
            compute, comm32, e32_none, e32_overlap = scenario.step(m, speed, gbit, False)
            _, comm16, e16_none, e16_overlap = scenario.step(m, speed, gbit, True)
            total = scenario.workers * speed
            rows.append(f"| {m.name} | {m.batch} | {speed:.0f} | {compute * 1e3:.0f} | "
                        f"{gbit:g} | {comm32 * 1e3:.0f} | {e32_none:.0%} / {e32_overlap:.0%} | "
                        f"{comm16 * 1e3:.0f} | {e16_none:.0%} / {e16_overlap:.0%} | "
                        f"{total * e16_none:,.0f} / {total * e16_overlap:,.0f} |")
    return "\n".join(rows)


def sources_text(method: Optional[str], scenario: Scenario,
                 user_given: Iterable[str] = ()) -> List[str]:
    """Lines saying where every input of the tables comes from.

    Parameters
    ----------
    method : str or None
        How the published-GPU img/s were estimated (``"timm"`` or ``"flops"``); None when no
        published-GPU table was printed.
    scenario : Scenario
        The settings the tables used.
    user_given : iterable of str
        Models whose img/s were given on the command line.
    """
    lines = []
    if method is not None:
        lines.append(f"- ResNet-50 v1.5 img/s per GPU: {NVIDIA_SOURCE}.")
    if method == "timm":
        lines.append(f"- ResNeSt speed relative to ResNet-50: {TIMM_SOURCE}; ratio of the two "
                     "throughputs, scaled to our training crop by (timm crop / our crop)^2. "
                     "ResNeSt img/s on V100/A100 are ESTIMATES: ResNet-50's published img/s x "
                     "that ratio.")
    elif method == "flops":
        lines.append("- ResNeSt speed relative to ResNet-50: ratio of multiply-adds from "
                     "resnest_gluon.models.count_flops (ResNet-50 v1.5: 4.09 G at 224). "
                     "ResNeSt img/s on V100/A100 are ESTIMATES: ResNet-50's published img/s x "
                     "that ratio (optimistic: split attention's element-wise work is not in "
                     "the FLOPs).")
    given = sorted(user_given)
    if given:
        lines.append(f"- Measured img/s given on the command line: {', '.join(given)}.")
    if scenario.latency_s is None:
        lines.append(f"- Allreduce latency alpha = {scenario.alpha * 1e6:.0f} us per call: "
                     f"{NCCL_SOURCE}; {scenario.gpus_per_node} GPUs per node.")
    else:
        lines.append(f"- Allreduce latency alpha = {scenario.alpha * 1e6:g} us per call (given).")
    lines.append(f"- {scenario.workers} workers, fusion threshold {scenario.fusion_mb:g} MiB, "
                 f"cycle time {scenario.cycle_ms:g} ms, backward = "
                 f"{scenario.backward_fraction:.2f} of the step; f = fraction of backward that "
                 "overlaps communication (0: none).")
    return lines
