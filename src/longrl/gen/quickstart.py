"""`longrl quickstart --task sd3|wan`: a tiny random SD3 (images) or Wan 2.1 (5-frame clips) learns to
make brighter pixels, offline, on a CPU.

Each seed builds its own tiny model (seeded), trains Flow-GRPO under the brightness reward (over all
frames of a clip) on the synthetic prompts and scores 16 held-out prompts with the ODE sampler
before and after. The table gives each seed's held-out brightness before and after, the gain and
the wall minutes. The two tasks are one run with the family's keys on top (``KIND_OVERRIDES``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from longrl.gen.config import load_gen_config
from longrl.gen.train import train_gen

# The tiny run's defaults (notes/log/gen.md has the probes behind them).
# gen.threads=1: the tiny model's ops are too small to split across threads (notes/log/gen.md, "Threads")
# gen.kl_coef=0: with Flow-GRPO's 0.04 the tiny model gained +0.020 / +0.024 / +0.005 on seeds 0-2, without
# it +0.074 / +0.072 / +0.015 (notes/log/gen.md); the KL's own default stays Flow-GRPO's
QUICKSTART_OVERRIDES = [
    "steps=100", "optim.lr=3e-3", "gen.kl_coef=0", "gen.threads=1", "trainer.log_every=20", "trainer.progress=false"
]  # fmt: skip
# The family's keys on top of the shared ones.
# Wan: the tiny VAE's decoder is fitted first (200 steps, ~20 s): left random, its clips' mean brightness
# barely moves with the latents (sd 0.0007-0.0035 over random latents), notes/log/gen.md.
KIND_OVERRIDES = {"sd3": [], "wan": ["model.kind=wan", "gen.frames=5", "model.tiny_vae_fit_steps=200"]}
# The stated margin: held-out brightness must rise by this much on every seed. Set before measuring, from
# the VAE's band (sd of clips' brightness over random latents: SD3's tiny VAE 0.010, the fitted Wan VAE
# 0.065-0.087 on seeds 0-4): the same for both.
MIN_GAIN = {"sd3": 0.01, "wan": 0.01}


def gen_quickstart(out: str, seeds: list[int], overrides: list[str], kind: str = "sd3") -> list[dict]:
    reports = []
    for seed in seeds:
        start = time.perf_counter()
        run_dir = Path(out) / f"seed_{seed}"
        cfg = load_gen_config(
            None,
            [*QUICKSTART_OVERRIDES, *KIND_OVERRIDES[kind], f"trainer.seed={seed}", f"trainer.out_dir={run_dir}",
             *overrides],
        )  # fmt: skip
        report = train_gen(cfg)
        report.update(seed=seed, gain=report["after"] - report["before"], minutes=(time.perf_counter() - start) / 60)
        reports.append(report)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "report.json").write_text(json.dumps(reports, indent=2))
    table = sweep_table(reports, MIN_GAIN[kind])
    (Path(out) / "sweep.md").write_text(table + "\n")
    print(table)
    return reports


def sweep_table(reports: list[dict], min_gain: float = MIN_GAIN["sd3"]) -> str:
    lines = [
        "| seed | held-out brightness before | after | gain | minutes | margin |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        verdict = "met" if r["gain"] >= min_gain else f"missed: gain < {min_gain}"
        lines.append(
            f"| {r['seed']} | {r['before']:.4f} | {r['after']:.4f} | {r['gain']:+.4f} | {r['minutes']:.1f} | {verdict} |"
        )
    if len(reports) > 1:
        gains = [r["gain"] for r in reports]
        lines.append(
            f"| mean +- sd | {statistics.mean(r['before'] for r in reports):.4f} | "
            f"{statistics.mean(r['after'] for r in reports):.4f} | {statistics.mean(gains):+.4f} +- "
            f"{statistics.stdev(gains):.4f} | {sum(r['minutes'] for r in reports):.1f} (total) | |"
        )
    return "\n".join(lines)
