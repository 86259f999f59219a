"""Timing a repeated step: the one rule every speed measurement of the project uses.

Standard library only: ``timm_measure.py`` imports it in an interpreter that has torch and no
MXNet (run as a script, this folder is on its path).
"""
import statistics
import time

__all__ = ["median_step_seconds"]


def median_step_seconds(step, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed
    ones (each call must finish its work before returning)."""
    times = []
    for i in range(warmup + repeats):
        tic = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)
