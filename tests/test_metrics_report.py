"""`longrl report`: PNG plots of the main curves and an HTML page that shows them."""

from __future__ import annotations

import math

import pytest

from longrl.train.metrics import MetricsLogger
from longrl.train.report import render_report


def test_report_renders_plots_and_summary(tmp_path):
    (tmp_path / "config.yaml").write_text("rl:\n  steps: 40\n")
    logger = MetricsLogger(tmp_path, total_steps=40, tensorboard=False, progress=False, desc="rl <grpo>")
    for step in range(1, 41):
        logger.log(step, {
            "reward/mean": step / 40, "reward/accuracy": step / 80, "reward/format": 1.0,
            "accuracy": step / 80, "response_length/mean": 50 + step, "response_length/max": 96,
            "response_length/clip_frac": 0.1, "kl": 1e-3 * step, "entropy": 2 - step / 40,
            "grad_norm": 1 + math.sin(step), "lr": 1e-4, "tokens_per_s": 1000.0,
            "time/rollout": 2.0, "time/update": 1.0, "memory/peak_gb": 0.0,  # a CPU run: no memory plot
        })
    logger.close()
    index = render_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert pngs == {"reward.png", "accuracy.png", "response_length.png", "response_clipped.png", "kl.png",
                    "entropy.png", "grad_norm.png", "lr.png", "tokens_per_s.png", "phase_times.png"}
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
