"""Human-readable summaries of models: one model's cost and shapes, and the zoo table.

This module owns :func:`model_summary` and :func:`zoo_table` (Markdown), built on
:mod:`.flops` and the spec table.
"""
from typing import Iterable, Optional

from .flops import count_flops, count_params, stage_shapes
from .zoo import get_model, get_spec, list_models

__all__ = ["model_summary", "zoo_table"]


def model_summary(name: str, size: Optional[int] = None, classes: int = 1000,
                  **overrides) -> str:
    """Multi-line summary: spec, parameters, GFLOPs at ``size`` and per-stage output shapes."""
    net = get_model(name, classes=classes, **overrides)
    spec = net.spec
    size = size or spec.eval_size
    lines = [
        f"{name}  ({spec.tag}, layers {list(spec.layers)}, stem {spec.stem_width}, "
        f"avd {'first' if spec.avd_first else 'after'}, classes {classes})",
        f"  params   {count_params(net) / 1e6:8.2f} M  "
        f"({count_params(net, trainable_only=True) / 1e6:.2f} M trainable)",
        f"  GFLOPs   {count_flops(net, size) / 1e9:8.2f}    (multiply-adds, {size}x{size})",
        f"  train {spec.train_size}, eval {spec.eval_size} (crop ratio "
        f"{spec.eval_crop_ratio:.3f}, {spec.interpolation})",
        "  stage      output (C, H, W)",
    ]
    lines += [f"  {stage:<10} {shape}" for stage, shape in stage_shapes(net, size)]
    return "\n".join(lines)


def zoo_table(names: Iterable[str] = None, size: int = 224) -> str:
    """Markdown table of the zoo: params and GFLOPs at ``size`` beside the published values."""
    rows = ["| model | RsKxWd | params (M) | published | GFLOPs @%d | published | top-1 "
            "(published) | train / eval crop |" % size,
            "|---|---|---|---|---|---|---|---|"]
    for name in names or list_models():
        spec = get_spec(name)
        net = get_model(name)

        def fmt(value, digits=2):
            return "" if value is None else f"{value:.{digits}f}"

        rows.append(f"| {name} | {spec.tag} | {count_params(net) / 1e6:.2f} | "
                    f"{fmt(spec.published_params_m, 1)} | {count_flops(net, size) / 1e9:.2f} | "
                    f"{fmt(spec.published_gflops)} | {fmt(spec.published_top1)} | "
                    f"{spec.train_size} / {spec.eval_size} |")
    return "\n".join(rows)
