"""Tables and the plot of a grid: the summary table and the report (Markdown, CSV, PNG).

This module owns :func:`summary_table` (of :func:`~.runs.summarize`'s records),
:func:`collect` (one row per point: cost and speed from ``DIR/summary.json``, top-1 / top-5
from the final evaluation in each point's ``metrics.jsonl``, its state) and
:func:`write_report` (``DIR/report.md``, ``DIR/report.csv`` laid out like the paper's table:
variant, #P, GFLOPs, img/s, top-1, top-5, then the details, and ``DIR/report.png``: top-1
against img/s, each point labelled).
"""
import csv
import os
from typing import Any, Dict, List, Optional, Sequence

from ..models import count_flops, count_params
from ..training.metrics import pyplot, save_figure
from ..training.setup import build_network
from .grid import Grid, point_config
from .runs import cost_key, point_progress, read_json

__all__ = ["REPORT_COLUMNS", "summary_table", "collect", "write_report"]

# CSV columns: the paper's (variant, #P, GFLOPs, img/s, top-1, top-5), then the details.
REPORT_COLUMNS = ["variant", "params_m", "gflops", "infer_img_per_s", "train_img_per_s",
                  "top1", "top5", "radix", "cardinality", "width", "epochs_done", "epochs",
                  "status"]


def _fmt(value, digits=2, suffix=""):
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def _fmt_gflops(value):
    # 2 decimals as published at 224; 4 for a small demo input
    return "" if value is None else (f"{value:.2f}" if value >= 1 else f"{value:.4f}")


def _speed_note(records) -> str:
    speeds = [r["speed"] for r in records if r.get("speed")]
    if not speeds:
        return "img/s not measured"
    first = speeds[0]
    return (f"img/s measured on this machine ({first.get('cores')} CPU cores), batch "
            f"{first['batch']}, float32, hybridized, median of {first['repeats']} timed "
            f"iteration(s); a training step is forward, backward and NAG update")


def summary_table(records: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize`'s records."""
    size = records[0]["size"] if records else 224
    lines = [f"| variant | #P | GFLOPs @{size} | img/s (infer) | img/s (train) |",
             "|---|---|---|---|---|"]
    for r in records:
        if r.get("error") and r.get("params") is None:
            lines.append(f"| {r['point']} | failed | | | |")
            continue
        speed = r.get("speed") or {}
        lines.append(f"| {r['point']} | {_fmt(r['params'] / 1e6, 2, 'M')} | "
                     f"{_fmt_gflops(r['gflops'])} | {_fmt(speed.get('infer_img_per_s'))} | "
                     f"{_fmt(speed.get('train_img_per_s'))} |")
    lines.append(f"\n(#P: parameters, BatchNorm statistics included; GFLOPs: multiply-adds at "
                 f"{size}x{size}; {_speed_note(records)})")
    return "\n".join(lines)


def collect(grid: Grid, workdir: str, overrides: Sequence[str] = (),
            points: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """One row per point: cost and speed from ``summary.json`` (params and GFLOPs computed
    when missing), top-1/top-5 from the final evaluation in the point's ``metrics.jsonl``,
    and its state (finished | partial | failed | not trained | invalid)."""
    summary = read_json(os.path.join(workdir, "summary.json")).get("points", {})
    statuses = read_json(os.path.join(workdir, "status.json"))
    size = grid.summary.size
    sizes = {r.get("size") for r in summary.values() if r.get("params") is not None}
    if len(sizes) == 1:
        size = sizes.pop()                      # the size the summary was made at
    rows = []
    for point in grid.select(points):
        row = {column: None for column in REPORT_COLUMNS}
        row.update(variant=point.name, radix=point.radix, cardinality=point.cardinality,
                   width=point.width, error=None)
        try:
            config = point_config(grid, point, overrides)
            cached = summary.get(point.name, {})
            if cached.get("key") == cost_key(config, size) and cached.get("params"):
                params, gflops, speed = cached["params"], cached["gflops"], cached.get("speed")
            else:
                net = build_network(config)
                params, gflops, speed = count_params(net), count_flops(net, size) / 1e9, None
        except Exception as err:  # pylint: disable=broad-except
            row.update(status="invalid", error=f"{type(err).__name__}: {err}")
            rows.append(row)
            continue
        progress = point_progress(os.path.join(workdir, point.name), config.train.epochs)
        speed = speed or {}
        row.update(params_m=params / 1e6, gflops=gflops,
                   infer_img_per_s=speed.get("infer_img_per_s"),
                   train_img_per_s=speed.get("train_img_per_s"),
                   top1=progress["top1"] and 100 * progress["top1"],
                   top5=progress["top5"] and 100 * progress["top5"],
                   epochs_done=min(progress["epochs_done"], progress["epochs"]),
                   epochs=progress["epochs"], speed=speed, size=size,
                   val_images=progress["val_images"])
        last = statuses.get(point.name, {})
        if progress["finished"]:
            row["status"] = "finished"
        elif last.get("status") == "failed":
            row.update(status="failed", error=last.get("error"))
        else:
            row["status"] = "partial" if progress["epochs_done"] else "not trained"
        rows.append(row)
    return rows


def _markdown(rows) -> str:
    lines = ["| variant | #P | GFLOPs | img/s | img/s (train) | top-1 | top-5 | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "invalid":
            lines.append(f"| {r['variant']} | | | | | | | invalid |")
            continue
        state = {"finished": f"{r['epochs']}", "partial": f"{r['epochs_done']}/{r['epochs']}",
                 "failed": f"failed at {r['epochs_done']}/{r['epochs']}",
                 "not trained": f"0/{r['epochs']}"}[r["status"]]
        lines.append(f"| {r['variant']} | {_fmt(r['params_m'], 2, 'M')} "
                     f"| {_fmt_gflops(r['gflops'])} "
                     f"| {_fmt(r['infer_img_per_s'])} | {_fmt(r['train_img_per_s'])} "
                     f"| {_fmt(r['top1'])} | {_fmt(r['top5'])} | {state} |")
    size = next((r["size"] for r in rows if r.get("size")), 224)
    images = {r["val_images"] for r in rows if r.get("val_images")}
    notes = [f"#P: parameters, BatchNorm statistics included; GFLOPs: multiply-adds at "
             f"{size}x{size}; img/s: inference, img/s (train): training steps; "
             f"{_speed_note(rows)}",
             "top-1 / top-5 (%): each point's final evaluation"
             + (f" ({', '.join(str(i) for i in sorted(images))} validation images)"
                if images else "") + "; a partial run shows its latest evaluation"]
    notes += [f"{r['variant']}: {r['status']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def _plot(rows, path, speed_key):
    fig, ax = pyplot().subplots(figsize=(7, 5))
    shown = [r for r in rows if r.get(speed_key) and r.get("top1") is not None]
    for radix in sorted({r["radix"] for r in shown}, key=lambda v: (v is None, v or 0)):
        group = [r for r in shown if r["radix"] == radix]
        label = "other" if radix is None else ("radix 0 (ResNet-D)" if radix == 0
                                               else f"radix {radix}")
        ax.scatter([r[speed_key] for r in group], [r["top1"] for r in group], s=40,
                   label=label, zorder=3)
    for r in shown:
        ax.annotate(r["variant"], (r[speed_key], r["top1"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=9)
    if shown:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no point has both img/s and top-1 yet\n(run summary and train)",
                ha="center", va="center", transform=ax.transAxes)
    mode = "inference" if speed_key == "infer_img_per_s" else "training"
    speeds = [r["speed"] for r in shown if r.get("speed")]
    setting = (f" ({shown[0]['size']}x{shown[0]['size']}, batch {speeds[0]['batch']})"
               if speeds else "")
    ax.set(xlabel=f"{mode} images/s on this machine{setting}", ylabel="top-1 (%)",
           title=f"top-1 against {mode} speed")
    ax.margins(0.15)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def write_report(rows: Sequence[Dict[str, Any]], workdir: str, speed: str = "infer"
                 ) -> Dict[str, str]:
    """Write ``report.md`` (the table and its notes), ``report.csv`` (:data:`REPORT_COLUMNS`)
    and ``report.png`` (top-1 against ``speed`` img/s, each point labelled) into ``workdir``.

    Returns
    -------
    dict
        ``md``, ``csv``, ``png`` paths and ``table`` (the Markdown text).
    """
    os.makedirs(workdir, exist_ok=True)
    paths = {kind: os.path.join(workdir, f"report.{kind}") for kind in ("md", "csv", "png")}
    table = _markdown(rows)
    with open(paths["md"], "w") as handle:
        handle.write(table)
    digits = {"params_m": 3, "gflops": 3, "infer_img_per_s": 2, "train_img_per_s": 2,
              "top1": 2, "top5": 2}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else
                             (round(r[c], digits[c]) if c in digits else r[c])
                             for c in REPORT_COLUMNS])
    _plot(rows, paths["png"], f"{speed}_img_per_s")
    return dict(paths, table=table)
