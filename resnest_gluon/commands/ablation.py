"""``scripts/ablation.py``: the radix x cardinality ablation grid, from grid file to table and plot.

    ablation.py summary --grid configs/ablation.yaml --workdir runs/ablation
    ablation.py train   --grid configs/ablation.yaml --workdir runs/ablation \\
                        data.train=/data/rec/train data.val=/data/rec/val
    ablation.py report  --grid configs/ablation.yaml --workdir runs/ablation
    ablation.py all     ...   (summary, train, report in turn)
"""
import argparse
import functools
import logging
import signal
import sys
import textwrap

from .. import ablation
from . import setup_logging
from .bench_model import measure_in_subprocess
from .cli import command

log = logging.getLogger("ablation")


def _common(parser, top):
    # On the main parser and on each subcommand, so either order works; SUPPRESS keeps a
    # value given before the subcommand from being reset by the subcommand's default.
    default = argparse.SUPPRESS
    parser.add_argument("--grid", default=default, help="grid file (e.g. configs/ablation.yaml)")
    parser.add_argument("--workdir", default=default,
                        help="folder of the grid's runs, summary and report")
    parser.add_argument("--points", metavar="P1,P2", default=default,
                        type=lambda text: [p for p in text.split(",") if p],
                        help="only these points, comma-separated (e.g. 2s1x64d,4s1x64d)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")
    if not top:
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="config overrides for every point (section.key=value)")


_COMMANDS = {
    "summary": (
        "params, GFLOPs and measured img/s of every point (no training)",
        "Params, GFLOPs at the grid's size and measured inference and training img/s of every "
        "point on this machine (the model benchmark, each in a fresh process), without "
        "training. Cached per point in DIR/summary.json: --force measures again, --no-speed "
        "skips img/s."),
    "train": (
        "train every point (skip finished, resume interrupted, go on past failures)",
        "Trains every point with the same recipe, each in DIR/<point>, one after another, "
        "locally or each under horovodrun (the grid's train.launcher). Finished points are "
        "skipped, interrupted ones resume from their newest checkpoint; a failing point is "
        "reported (DIR/status.json) and the others go on, exit 1 at the end. Ctrl-C or "
        "SIGTERM lets the running trainer save a checkpoint. --dry-run prints the commands "
        "instead (for a scheduler of your own)."),
    "report": (
        "Markdown + CSV table and PNG plot of top-1 against img/s",
        "Writes DIR/report.md and DIR/report.csv (variant, #P, GFLOPs, img/s, top-1, top-5, "
        "as in the paper; top-1/top-5 from each point's final evaluation) and DIR/report.png "
        "(top-1 against img/s, each point labelled), and prints the table."),
    "all": ("summary, train and report in turn", "summary, train and report in turn."),
}


def build_parser():
    """The parser: summary, train, report and all, each with the common options."""
    paragraphs = [f"{name}: {text}" for name, (_, text) in _COMMANDS.items() if name != "all"]
    paragraphs.append("KEY=VALUE overrides (e.g. data.train=... train.epochs=90) apply to "
                      "every point. Exit status: 0; 1 when a point failed; 2 for a mistake "
                      "in the grid or config; 130 when interrupted.")
    parser = argparse.ArgumentParser(
        prog="ablation.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1] + "\n" + "\n\n".join(
            textwrap.fill(paragraph, 92) for paragraph in paragraphs),
        epilog="The grid file: see configs/ablation.yaml (ImageNet, 224) and "
               "configs/ablation_demo.yaml (digits, 32). `ablation.py COMMAND --help` for "
               "a command's options.")
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subs = {}
    for name, (short, text) in _COMMANDS.items():
        subs[name] = commands.add_parser(name, help=short, description=text)
        _common(subs[name], top=False)
    for name in ("summary", "all"):
        sub = subs[name]
        sub.add_argument("--size", type=int, help="input size of GFLOPs and img/s (grid's)")
        sub.add_argument("--batch", type=int, help="benchmark batch size (grid's)")
        sub.add_argument("--repeats", type=int, help="timed benchmark iterations (grid's)")
        sub.add_argument("--no-speed", action="store_true",
                         help="params and GFLOPs only, no img/s measurement")
        sub.add_argument("--force", action="store_true", help="ignore DIR/summary.json")
    for name in ("train", "all"):
        sub = subs[name]
        sub.add_argument("--launcher", choices=("local", "horovodrun"),
                         help="override the grid's train.launcher")
        sub.add_argument("--np", type=int, help="horovodrun -np (override train.np)")
    subs["train"].add_argument("--dry-run", action="store_true",
                               help="print each unfinished point's command, run nothing")
    for name in ("report", "all"):
        subs[name].add_argument("--speed", choices=("infer", "train"), default="infer",
                                help="x axis of report.png: inference or training img/s")
    return parser


def _summary(args, grid) -> int:
    measure = None if args.no_speed or not grid.summary.speed else functools.partial(
        measure_in_subprocess, "ours")
    records = ablation.summarize(grid, args.workdir, args.overrides, args.points,
                                 size=args.size, batch=args.batch, repeats=args.repeats,
                                 measure=measure, force=args.force)
    print(ablation.summary_table(records), flush=True)
    failed = [r["point"] for r in records if r["error"]]
    if failed:
        log.error("summary failed for %d point(s): %s", len(failed), ", ".join(failed))
    return 1 if failed else 0


def _train(args, grid) -> int:
    if args.launcher:
        grid.train.launcher = args.launcher
    if args.np:
        grid.train.np = args.np
    dry_run = getattr(args, "dry_run", False)
    outcome = ablation.train_points(grid, args.workdir, args.overrides, args.points,
                                    dry_run=dry_run)
    if dry_run:
        for entry in outcome.values():
            if entry["command"]:
                print(entry["command"])
    counts = {}
    for entry in outcome.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    log.info("train: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    failed = [name for name, entry in outcome.items() if entry["status"] == "failed"]
    if failed:
        log.error("%d point(s) failed: %s (status in %s/status.json)", len(failed),
                  ", ".join(failed), args.workdir)
    return 1 if failed else 0


def _report(args, grid) -> int:
    rows = ablation.collect(grid, args.workdir, args.overrides, args.points)
    paths = ablation.write_report(rows, args.workdir, args.speed)
    print(paths["table"], end="", flush=True)
    log.info("wrote %s, %s, %s", paths["md"], paths["csv"], paths["png"])
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@command("ablation", interrupted="interrupted; re-run the same command to go on")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("grid", "workdir"):
        if not hasattr(args, name):
            parser.error(f"--{name} is required")
    for name, value in (("points", None), ("verbose", False), ("overrides", []),
                        ("no_speed", False), ("force", False), ("size", None), ("batch", None),
                        ("repeats", None)):
        if not hasattr(args, name):
            setattr(args, name, value)
    setup_logging(args.verbose)
    # SIGTERM (a scheduler's stop) as Ctrl-C: the running trainer checkpoints, status is kept
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        grid = ablation.load_grid(args.grid)
        ablation.base_config(grid, args.overrides)      # a base mistake: fail at once
        steps = {"summary": [_summary], "train": [_train], "report": [_report],
                 "all": [_summary, _train, _report]}[args.command]
        return max(step(args, grid) for step in steps)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
