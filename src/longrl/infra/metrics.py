"""Per-step metrics to the console, ``metrics.jsonl``, TensorBoard and Weights & Biases.

Steps are 1-based counts of completed updates: ``log(step=1, ...)`` reports the first update, and
the checkpoint written after it is ``step_1``. A run resumed from ``step_N`` creates its logger
with ``start_step=N``: rows for later steps (logged before the crash but lost with it) are dropped
from ``metrics.jsonl`` and TensorBoard, so each step appears once. A NaN or inf value reaches
every sink as itself (``NaN`` in ``metrics.jsonl``, ``nan`` on the console), never dropped.

Metric names the console line and ``longrl report`` know (others are logged and plotted as-is):
``reward/mean`` and ``reward/<component>``, ``accuracy``, ``response_length/{mean,max,clip_frac}``,
``kl``, ``entropy``, ``clip_frac``, ``loss``, ``grad_norm``, ``lr``, ``tokens_per_s``,
``time/<phase>`` (encode, rollout, reward, logprobs, update, step), ``memory/peak_gb``; and, on the
console only when non-zero, ``data/skipped_rows`` (so far), ``reward/fallback_frac`` and
``reward/judge_failures`` (this step).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run_info.json"

# (metric name, console label, format) in console order.
CONSOLE_FIELDS: list[tuple[str, str, str]] = [
    ("loss", "loss", "{:.4f}"),
    ("reward/mean", "reward", "{:.3f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("response_length/mean", "len", "{:.1f}"),
    ("kl", "kl", "{:.2e}"),
    ("entropy", "ent", "{:.3f}"),
    ("clip_frac", "clip", "{:.3f}"),
    ("grad_norm", "gnorm", "{:.3f}"),
    ("lr", "lr", "{:.2e}"),
]
# Shown only when non-zero: a healthy run's line stays short, a degrading one says so.
PROBLEM_FIELDS: list[tuple[str, str, str]] = [
    ("data/skipped_rows", "skipped", "{:.0f}"),
    ("reward/fallback_frac", "fallback", "{:.3f}"),
    ("reward/judge_failures", "judge fail", "{:.0f}"),
]


def _to_float(value: Any) -> float | None:
    """``value`` as a float, NaN and inf included (a NaN loss must stay visible); None if not a number."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    value = _to_float(value)
    return value if value is not None and math.isfinite(value) else None


# A trainer may namespace its metrics ("sft/loss"); the console and report treat those as "loss".
NAMESPACES = ("sft", "rl", "train", "policy", "actor")


# Other spellings of the standard names that trainers log.
ALIASES = {
    "kl": ["actor/kl_loss"],
    "accuracy": ["reward/accuracy"],
    "response_length/mean": ["response/length_mean"],
    "response_length/max": ["response/length_max"],
    "response_length/clip_frac": ["response/clipped_frac"],
    "tokens_per_s": ["perf/tokens_per_s", "perf/rollout_tok_s"],
    "memory/peak_gb": ["perf/peak_mem_gb"],
}


def metric_aliases(name: str) -> list[str]:
    """Keys that stand for the standard metric ``name``, preferred first."""
    return [name] + [f"{ns}/{name}" for ns in NAMESPACES] + ALIASES.get(name, [])


def find_metric(metrics: dict[str, Any], name: str) -> Any:
    """``metrics[name]``, else ``metrics["sft/name"]`` (or another trainer namespace)."""
    for key in metric_aliases(name):
        if key in metrics:
            return metrics[key]
    return None


def format_console_line(step: int, total_steps: int, metrics: dict[str, Any], seconds_per_step: float | None) -> str:
    """``step 20/40 | loss 0.1234 | reward 0.530 | ... | 1.2k tok/s | 3.41 s/step | mem 12.3 GB``."""
    parts = [f"step {step}/{total_steps}"]
    for name, label, fmt in CONSOLE_FIELDS:
        value = _to_float(find_metric(metrics, name))
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}")
    for name, label, fmt in PROBLEM_FIELDS:
        value = _finite(metrics.get(name))
        if value:
            parts.append(f"{label} {fmt.format(value)}")
    tokens = _finite(find_metric(metrics, "tokens_per_s"))
    if tokens is not None:
        parts.append(f"{tokens / 1000:.1f}k tok/s" if tokens >= 1000 else f"{tokens:.0f} tok/s")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    memory = _finite(find_metric(metrics, "memory/peak_gb"))
    if memory:
        parts.append(f"mem {memory:.1f} GB")
    return " | ".join(parts)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; a torn last line (the run was killed mid-write) is ignored.
    Non-finite values are written as Python's json writes them (``NaN``, ``Infinity``) and read
    back as floats."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class MetricsLogger:
    """Fans each step's metrics out to every sink. On ranks other than 0 it does nothing."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        log_every: int = 10,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "longrl",
        config: dict | None = None,
        desc: str = "rl",
        start_step: int = 0,
        progress: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.log_every = max(1, log_every)
        self.enabled = _is_rank0()
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._file = None
        self._tb = None
        self._wandb = None
        self._bar = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = open(self.run_dir / METRICS_FILE, "a", buffering=1)  # line-buffered: a crash loses <= 1 row
        (self.run_dir / RUN_INFO_FILE).write_text(
            json.dumps({"desc": desc, "total_steps": total_steps, "config": config or {}}, indent=2, default=str)
        )
        if tensorboard:
            self._tb = _open_tensorboard(self.run_dir / "tensorboard", purge_step=start_step + 1)
            if self._tb is not None and config:
                self._tb.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        if wandb:
            self._wandb = _open_wandb(self.run_dir, wandb_project, config, start_step)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, file=sys.stderr, unit="step"
            )

    def _truncate_after(self, start_step: int) -> None:
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        keep = [row for row in read_metrics(self.run_dir) if row.get("step", 0) <= start_step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
        tmp.replace(path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self._last_time
        per_step = elapsed / max(1, step - self._last_step)
        self._last_time, self._last_step = now, step
        values = {key: _to_float(value) for key, value in metrics.items()}
        assert self._file is not None  # opened in __init__ whenever enabled
        self._file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if v is not None}, step=step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        if step % self.log_every == 0 or step == self.total_steps:
            seconds = _finite(metrics.get("time/step")) or per_step
            line = format_console_line(step, self.total_steps, metrics, seconds)
            if self._bar is not None:
                self._bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TB_NOTICE_SHOWN = False


def _open_tensorboard(log_dir: Path, purge_step: int):
    global _TB_NOTICE_SHOWN
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _TB_NOTICE_SHOWN:
            print(
                "note: tensorboard is not installed, so TensorBoard logging is off "
                "(pip install tensorboard, or set trainer.tensorboard=false to silence this)",
                file=sys.stderr,
            )
            _TB_NOTICE_SHOWN = True
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _open_wandb(run_dir: Path, project: str, config: dict | None, start_step: int):
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "trainer.wandb=true needs Weights & Biases: pip install wandb (or set trainer.wandb=false)"
        ) from exc
    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    # A resumed run continues the same W&B run; W&B ignores re-logged steps <= its last one.
    return wandb.init(
        project=project, dir=str(run_dir), id=run_id, resume="allow", name=run_dir.name, config=config or {}
    )


class PhaseTimer:
    """Wall-clock seconds per phase of a step: ``with timer("rollout"): ...``; ``timer.pop()``.

    On CUDA it synchronizes at both ends of a phase, so queued kernels are counted where they ran."""

    def __init__(self, sync_cuda: bool | None = None):
        self.sync_cuda = torch.cuda.is_available() if sync_cuda is None else sync_cuda
        self._seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.sync_cuda and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, phase: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._seconds[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """``{"time/<phase>": seconds}`` accumulated since the last pop, then reset."""
        out = {f"time/{phase}": seconds for phase, seconds in self._seconds.items()}
        self._seconds.clear()
        return out


def peak_memory_gb(reset: bool = False) -> float:
    """Peak CUDA memory allocated (GiB) on the current device since the last reset; 0 on CPU.
    ``reset=True`` starts a new window, e.g. once per step for a per-step peak."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak
