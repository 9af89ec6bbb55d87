"""`longrl report RUN_DIR`: PNG plots of a run's main curves and an HTML page that shows them.

Reads ``metrics.jsonl`` (and the run's config) and writes ``RUN_DIR/report/index.html`` beside
one PNG per curve; a generation run's sample grids (``RUN_DIR/samples/step_N.png``, one per
evaluation, ``longrl.gen``) are shown in step order with the held-out reward of that step. Works on a finished run or one still training. Non-finite values (a NaN loss)
are never dropped: each plot marks their steps with red crosses and lines, and the page lists
them per metric above the final metrics.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longrl.infra.metrics import RUN_INFO_FILE, metric_aliases, read_metrics


@dataclass
class Plot:
    name: str  # file stem
    title: str
    pick: Callable[[list[str]], list[str]]  # all metric keys -> the keys to draw
    log_y: bool = False
    skip_if_zero: bool = False  # e.g. GPU memory of a CPU run


def _named(*names: str) -> Callable[[list[str]], list[str]]:
    """Keys equal to one of ``names``, bare or under a trainer namespace (``sft/loss`` counts as ``loss``)."""

    def pick(keys: list[str]) -> list[str]:
        wanted = [alias for n in names for alias in metric_aliases(n)]
        return [k for k in wanted if k in keys]

    return pick


def _prefixed(prefix: str, first: str | None = None, exclude: tuple[str, ...] = ()) -> Callable[[list[str]], list[str]]:
    def pick(keys: list[str]) -> list[str]:
        chosen = sorted(k for k in keys if k.startswith(prefix) and k not in exclude)
        if first in chosen:
            chosen.remove(first)
            chosen.insert(0, first)
        return chosen

    return pick


def _either(*pickers: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
    def pick(keys: list[str]) -> list[str]:
        return list(dict.fromkeys(k for p in pickers for k in p(keys)))

    return pick


PLOTS = [
    Plot("reward", "Reward (mean and per component)", _prefixed("reward/", first="reward/mean")),
    Plot("accuracy", "Accuracy", _named("accuracy")),
    Plot("response_length", "Response length (tokens)", _named("response_length/mean", "response_length/max")),
    Plot("response_clipped", "Responses clipped at max length (fraction)", _named("response_length/clip_frac")),
    Plot("loss", "Loss", _named("loss")),
    Plot("eval", "Held-out evaluation", _prefixed("eval/")),
    Plot("kl", "KL to reference", _named("kl")),
    Plot("entropy", "Entropy", _named("entropy")),
    Plot("clip_frac", "Policy ratio clip fraction", _either(_named("clip_frac"), _prefixed("actor/clip_frac"))),
    Plot("grad_norm", "Gradient norm (before clipping)", _named("grad_norm"), log_y=True),
    Plot("lr", "Learning rate", _named("lr")),
    Plot("tokens_per_s", "Throughput (tokens/s)", _named("tokens_per_s")),
    Plot("phase_times", "Time per phase (s)", _prefixed("time/")),
    Plot("memory", "Peak GPU memory (GiB)", _named("memory/peak_gb"), skip_if_zero=True),
]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` where it was logged as a number, NaN and inf included."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def _split_finite(steps: list[int], values: list[float]) -> tuple[list[int], list[float], list[int]]:
    """(steps, values) of the finite points, and the steps whose value is NaN/inf."""
    good = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    bad = [s for s, v in zip(steps, values) if not math.isfinite(v)]
    return [s for s, _ in good], [v for _, v in good], bad


def _step_ranges(steps: list[int]) -> str:
    """``[2, 3, 4, 9]`` -> ``"2-4, 9"``."""
    parts, start = [], None
    for i, step in enumerate(steps):
        if start is None:
            start = step
        if i + 1 == len(steps) or steps[i + 1] != step + 1:
            parts.append(str(start) if start == step else f"{start}-{step}")
            start = None
    return ", ".join(parts)


def nonfinite_steps(rows: list[dict]) -> dict[str, list[int]]:
    """{metric: steps where it was NaN/inf}, for the metrics that ever were."""
    keys = sorted({k for row in rows for k in row if k not in ("step", "time")})
    found = {key: _split_finite(*_series(rows, key))[2] for key in keys}
    return {key: steps for key, steps in found.items() if steps}


def _ema(values: list[float], span: int) -> list[float]:
    alpha = 2 / (span + 1)
    out, acc = [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def _draw(plot: Plot, rows: list[dict], keys: list[str], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(key, *_split_finite(*_series(rows, key))) for key in keys]
    drawn = [d for d in drawn if d[1] or d[3]]
    if not drawn or (plot.skip_if_zero and not any(v for _, _, vals, _ in drawn for v in vals)):
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for i, (key, steps, values, _) in enumerate(drawn):
        color = f"C{i % 10}"
        if len(values) > 30:  # noisy curves: faint raw values, a smoothed line on top
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _ema(values, max(5, len(values) // 20)), color=color, linewidth=1.6, label=key)
        elif values:
            ax.plot(
                steps,
                values,
                color=color,
                linewidth=1.4,
                marker="o" if len(values) < 15 else None,
                markersize=3,
                label=key,
            )
    if plot.log_y and all(v > 0 for _, _, vals, _ in drawn for v in vals):
        ax.set_yscale("log")
    bad = sorted({s for *_, steps in drawn for s in steps})
    if bad:  # NaN/inf cannot be drawn as values: mark where they are
        if not any(vals for _, _, vals, _ in drawn):
            ax.set_ylim(0, 1)
        for step in bad:
            ax.axvline(step, color="red", alpha=0.25, linewidth=1)
        limits = ax.get_ylim()
        ax.plot(
            bad,
            [limits[0]] * len(bad),
            "x",
            color="red",
            markersize=6,
            clip_on=False,
            label=f"NaN/inf ({len(bad)} steps)",
        )
        ax.set_ylim(*limits)  # the crosses sit on the bottom edge without rescaling the curve
    ax.set_title(plot.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(drawn) > 1 or drawn[0][0] != plot.name or bad:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def _load_config(run_dir: Path) -> str:
    for name in ("config.yaml", "config.yml", "config.json"):
        path = run_dir / name
        if path.is_file():
            return path.read_text()
    info = run_dir / RUN_INFO_FILE
    if info.is_file():
        config = json.loads(info.read_text()).get("config")
        if config:
            return json.dumps(config, indent=2)
    return "(no config file found in the run directory)"


def _final_metrics(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(key, last value, mean over the last 10% of logged steps) for every numeric metric."""
    keys = sorted({k for row in rows for k in row if k not in ("step", "time")})
    tail = rows[-max(1, len(rows) // 10) :]
    out = []
    for key in keys:
        _, values = _series(rows, key)
        _, tail_values = _series(tail, key)
        if values:
            out.append((key, values[-1], sum(tail_values) / len(tail_values) if tail_values else values[-1]))
    return out


_NONFINITE_CLASS = ' class="nonfinite"'


def sample_grids(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``samples/step_N.png`` of the run, in step order."""
    found = []
    for path in (run_dir / "samples").glob("step_*.png"):
        stem = path.stem.removeprefix("step_")
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def _samples_section(run_dir: Path, rows: list[dict]) -> str:
    grids = sample_grids(run_dir)
    if not grids:
        return ""
    held_out = {row["step"]: row["eval/reward"] for row in rows if "eval/reward" in row}
    items = []
    for step, path in grids:
        reward = f" &middot; held-out reward {held_out[step]:.4f}" if step in held_out else ""
        items.append(
            f'<figure><img src="../samples/{html.escape(path.name)}" alt="samples at step {step}">'
            f"<figcaption>step {step}{reward}</figcaption></figure>"
        )
    return '<h2>Samples per evaluation</h2>\n<div class="samples">\n' + "\n".join(items) + "\n</div>"


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/index.html`` and its PNGs; returns the HTML path."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(
            f"{run_dir} has no metrics.jsonl rows; point `longrl report` at a run directory (trainer.out_dir)"
        )
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in rows for k in row if k not in ("step", "time")})
    images = []
    for plot in PLOTS:
        png = out_dir / f"{plot.name}.png"
        if _draw(plot, rows, plot.pick(keys), png):
            images.append((plot.title, png.name))
        elif png.exists():
            png.unlink()  # a stale plot from an older report

    info = {}
    if (run_dir / RUN_INFO_FILE).is_file():
        info = json.loads((run_dir / RUN_INFO_FILE).read_text())
    last_step = rows[-1]["step"]
    total = info.get("total_steps")
    progress = f"{last_step} / {total}" if total else str(last_step)
    bad = nonfinite_steps(rows)
    table = "\n".join(
        f"<tr{_NONFINITE_CLASS if k in bad else ''}><td>{html.escape(k)}</td><td>{last:.6g}</td><td>{mean:.6g}</td></tr>"
        for k, last, mean in _final_metrics(rows)
    )
    warning = ""
    if bad:
        items = "\n".join(
            f"<li><code>{html.escape(k)}</code>: NaN/inf at {len(steps)} of {len(rows)} logged steps "
            f"({_step_ranges(steps)})</li>"
            for k, steps in bad.items()
        )
        warning = f"<div{_NONFINITE_CLASS}><h2>Non-finite values</h2>\n<ul>\n{items}\n</ul></div>"
    figures = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}'
        "</figcaption></figure>"
        for title, name in images
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>longrl report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
td:nth-child(n+2) {{ font-family: monospace; text-align: right; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} img {{ max-width: 640px; width: 100%; }}
.samples img {{ image-rendering: pixelated; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; max-height: 40em; }}
.nonfinite {{ background: #fde8e8; color: #a00; }}
div.nonfinite {{ padding: 0.2em 1em; border: 1px solid #e99; }}
</style></head><body>
<h1>longrl run: {html.escape(run_dir.name)}</h1>
<p>{html.escape(str(info.get("desc", "")))} &middot; steps logged: {html.escape(progress)} &middot;
directory: <code>{html.escape(str(run_dir.resolve()))}</code></p>
{warning}
<h2>Final metrics</h2>
<table><tr><th>metric</th><th>last</th><th>mean of last 10%</th></tr>
{table}
</table>
<h2>Curves</h2>
<div class="plots">
{figures}
</div>
{_samples_section(run_dir, rows)}
<h2>Config</h2>
<pre>{html.escape(_load_config(run_dir))}</pre>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
