"""Is a logged metric rising? An ordinary least-squares line through (step, value) with its
standard error, so "the training accuracy rises" is a number with an uncertainty, not a look at a plot."""

from __future__ import annotations

import math
from pathlib import Path


def linear_trend(steps: list[float], values: list[float]) -> dict[str, float]:
    """Slope per 100 steps, its standard error (both per 100 steps), and the fitted start and end."""
    n = len(steps)
    if n < 3 or n != len(values):
        raise ValueError(f"a trend needs >= 3 (step, value) pairs of equal count, got {n} and {len(values)}")
    mean_x, mean_y = sum(steps) / n, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in steps)
    if sxx == 0:
        raise ValueError("a trend needs at least two distinct steps")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, values)) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(steps, values))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return {
        "slope_per_100": 100 * slope,
        "stderr_per_100": 100 * stderr,
        "fit_start": intercept + slope * steps[0],
        "fit_end": intercept + slope * steps[-1],
        "points": n,
    }


def metric_trend(metrics_path: str | Path, key: str) -> dict[str, float]:
    """The trend of ``key`` over the rows of a ``metrics.jsonl`` that log it (finite values only)."""
    from longrl.infra.metrics import METRICS_FILE, read_metrics

    metrics_path = Path(metrics_path)
    if metrics_path.name != METRICS_FILE:
        raise ValueError(f"{metrics_path}: expected a run's {METRICS_FILE}")
    steps, values = [], []
    for row in read_metrics(metrics_path.parent):  # skips a torn last line
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(float(row["step"]))
            values.append(float(value))
    if len(steps) < 3:
        raise ValueError(f"{metrics_path}: {key!r} is logged on {len(steps)} steps; a trend needs >= 3")
    return linear_trend(steps, values)
