"""The radix x cardinality ablation (the paper's central study) as one workflow over a folder.

A grid file (:mod:`.grid`) lists the points in the paper's ``RsCxWd`` notation over a base
config they all share; three steps fill a work directory::

    DIR/summary.json           summarize(): params, GFLOPs, img/s per point (reused unless forced)
    DIR/status.json            train_points(): the last outcome of each point's training
    DIR/<point>/point.yaml     the point's config deltas, what its trainer is launched with
    DIR/<point>/train.log      the trainer's output (appended by every launch)
    DIR/<point>/...            the trainer's own work directory (metrics.jsonl, checkpoints/, ...)
    DIR/report.md|csv|png      collect() + write_report(): the paper's table, top-1 against img/s

Imports ``config``, ``models`` and ``training``; speed is measured by a callable the caller
passes (the command passes the model benchmark's), so nothing here imports ``commands``.
"""
from .grid import (
                   Grid,
                   GridError,
                   LaunchSettings,
                   Point,
                   SpeedSettings,
                   base_config,
                   load_grid,
                   point_config,
                   point_tree,
)
from .report import REPORT_COLUMNS, collect, summary_table, write_report
from .runs import point_progress, summarize, train_command, train_points

__all__ = ["Grid", "GridError", "LaunchSettings", "Point", "SpeedSettings", "base_config",
           "load_grid", "point_config", "point_tree", "REPORT_COLUMNS", "collect",
           "summary_table", "write_report", "point_progress", "summarize", "train_command",
           "train_points"]
