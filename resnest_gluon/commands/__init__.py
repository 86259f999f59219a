"""Command-line entry points (argument parsing only; the work is in the library).

Each module has ``main(argv=None) -> int``, wrapped by :func:`.cli.command` (the exit codes
and the one-line errors of every tool); ``scripts/*.py`` and the console scripts of
``setup.py`` call it. Logging is configured here, never in the library.
"""
import logging
import os
import sys

__all__ = ["setup_logging"]


def setup_logging(verbose: bool = False, rank: int = 0):
    """Log to stderr; ranks other than 0 only report warnings and errors."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    if rank != 0:
        handler.addFilter(lambda record: record.levelno >= logging.WARNING)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
