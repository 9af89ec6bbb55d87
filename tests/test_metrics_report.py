"""`longrl report`: PNG plots of the main curves and an HTML page that shows them."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from longrl.infra.metrics import MetricsLogger
from longrl.infra.report import render_report


def test_report_renders_plots_and_summary(tmp_path):
    (tmp_path / "config.yaml").write_text("rl:\n  steps: 40\n")
    logger = MetricsLogger(tmp_path, total_steps=40, tensorboard=False, progress=False, desc="rl <grpo>")
    for step in range(1, 41):
        logger.log(
            step,
            {
                "reward/mean": step / 40,
                "reward/accuracy": step / 80,
                "reward/format": 1.0,
                "accuracy": step / 80,
                "response_length/mean": 50 + step,
                "response_length/max": 96,
                "response_length/clip_frac": 0.1,
                "kl": 1e-3 * step,
                "entropy": 2 - step / 40,
                "grad_norm": 1 + math.sin(step),
                "lr": 1e-4,
                "tokens_per_s": 1000.0,
                "time/rollout": 2.0,
                "time/update": 1.0,
                "memory/peak_gb": 0.0,  # a CPU run: no memory plot
            },
        )
    logger.close()
    index = render_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert pngs == {
        "reward.png",
        "accuracy.png",
        "response_length.png",
        "response_clipped.png",
        "kl.png",
        "entropy.png",
        "grad_norm.png",
        "lr.png",
        "tokens_per_s.png",
        "phase_times.png",
    }
    for png in pngs:
        assert (index.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = index.read_text()
    for png in pngs:
        assert f'src="{png}"' in page
    assert "<td>reward/mean</td><td>1</td>" in page  # the last value
    assert "rl &lt;grpo&gt;" in page and "steps logged: 40 / 40" in page
    assert "steps: 40" in page  # the config


def test_report_without_metrics_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl rows"):
        render_report(tmp_path)


def _red_pixels(png) -> int:
    import matplotlib.image

    rgb = matplotlib.image.imread(png)[..., :3]
    return int(((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)).sum())


def test_report_marks_nonfinite_steps_instead_of_dropping_them(tmp_path):
    import shutil
    from pathlib import Path

    # A diverging SFT run's metrics: NaN and inf at steps 3, 4 and 6 (tests/bad_input/runs_nan_metrics.jsonl).
    shutil.copy(Path(__file__).parent / "bad_input" / "runs_nan_metrics.jsonl", tmp_path / "metrics.jsonl")
    index = render_report(tmp_path)
    page = index.read_text()
    assert (
        "<li><code>sft/grad_norm</code>: NaN/inf at 3 of 6 logged steps (3-4, 6)</li>" in page
        and "<li><code>sft/loss</code>: NaN/inf at 3 of 6 logged steps (3-4, 6)</li>" in page
    )
    assert '<tr class="nonfinite"><td>sft/loss</td><td>nan</td>' in page  # the last value is NaN, shown as such
    assert "<tr><td>sft/lr</td><td>0.006</td>" in page  # a finite metric is not marked
    # The plots carry red crosses where the values are NaN/inf; a finite run's plots have none.
    assert _red_pixels(index.parent / "loss.png") > 20 and _red_pixels(index.parent / "grad_norm.png") > 20
    assert _red_pixels(index.parent / "lr.png") == 0

    finite = tmp_path / "finite"
    finite.mkdir()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (finite / "metrics.jsonl").write_text("\n".join(r for r in rows if "NaN" not in r and "Infinity" not in r))
    finite_index = render_report(finite)
    assert _red_pixels(finite_index.parent / "loss.png") == 0
    assert "Non-finite values" not in finite_index.read_text()


def test_report_plots_a_metric_that_was_never_finite(tmp_path):
    logger = MetricsLogger(tmp_path, total_steps=3, tensorboard=False, progress=False)
    for step in range(1, 4):
        logger.log(step, {"sft/loss": float("nan"), "sft/lr": 0.1})
    logger.close()
    index = render_report(tmp_path)
    assert (index.parent / "loss.png").exists() and _red_pixels(index.parent / "loss.png") > 20
    assert "<li><code>sft/loss</code>: NaN/inf at 3 of 3 logged steps (1-3)</li>" in index.read_text()


def test_report_shows_a_generation_runs_sample_grids_in_step_order(tmp_path):
    from longrl.data.image import write_png

    logger = MetricsLogger(tmp_path, total_steps=20, tensorboard=False, progress=False, desc="gen")
    for step in range(1, 21):
        logger.log(step, {"reward/mean": step / 20, **({"eval/reward": 0.5 + step / 100} if step % 10 == 0 else {})})
    logger.close()
    for step in (20, 0, 10):  # written out of order; step_x.png is not a grid
        write_png(tmp_path / "samples" / f"step_{step}.png", np.full((8, 16, 3), step * 10, dtype=np.uint8))
    write_png(tmp_path / "samples" / "step_x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    page = render_report(tmp_path).read_text()
    shown = re.findall(r'src="\.\./samples/(step_\w+)\.png"', page)
    assert shown == ["step_0", "step_10", "step_20"]
    assert "step 10 &middot; held-out reward 0.6000" in page and "step 20 &middot; held-out reward 0.7000" in page
    assert (tmp_path / "report" / "eval.png").is_file()  # the held-out curve
    # a run without samples gets no samples section
    assert "Samples per evaluation" not in render_report(_run_without_samples(tmp_path)).read_text()


def _run_without_samples(tmp_path):
    run = tmp_path / "plain"
    logger = MetricsLogger(run, total_steps=2, tensorboard=False, progress=False)
    for step in (1, 2):
        logger.log(step, {"reward/mean": 0.1 * step})
    logger.close()
    return run
