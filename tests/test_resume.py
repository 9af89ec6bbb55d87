"""Exact resume: a `longrl train rl` run SIGKILLed at any moment, even inside a checkpoint write,
and resumed with trainer.resume=auto logs the same per-step metrics as an uninterrupted run.

Runs the real command in subprocesses: a tiny model, a tiny synthetic video task, CPU,
deterministic mode, one thread (so float reductions run in one order in every process).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _slow_checkpoint
from longrl.data.synth import SynthConfig, generate_synth
from longrl.infra.checkpoint import COMPLETE

STEPS = 6
# Wall-clock metrics differ between runs by nature; everything else must match exactly.
TIMING_PREFIXES = ("time/", "perf/")


def _overrides(data: Path, out: Path) -> list[str]:
    return [
        f"data.train_path={data / 'train.jsonl'}",
        "data.num_frames=4",
        "data.min_pixels=3136",
        "data.max_pixels=3136",
        "model.tiny.hidden_size=64",
        "model.tiny.intermediate_size=128",
        "model.tiny.num_layers=2",
        "model.tiny.vision_hidden_size=32",
        "model.tiny.vision_depth=1",
        "model.tiny.vocab_size=400",
        f"rl.steps={STEPS}",
        "rl.prompts_per_step=2",
        "rollout.n=2",
        "rollout.max_new_tokens=6",
        "trainer.save_every=1",
        "trainer.keep_last=2",
        "trainer.deterministic=true",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.log_every=1",
        f"trainer.out_dir={out}",
    ]


def _env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", CUBLAS_WORKSPACE_CONFIG=":4096:8"
    )
    env.update(extra)
    return env


def _start(data: Path, out: Path, slow_checkpoint: tuple[float, int] | None = None) -> subprocess.Popen:
    """``slow_checkpoint=(seconds, step)``: checkpoint ``step`` waits that long before it is published."""
    args = ["train", "rl", *_overrides(data, out)]
    cmd = (
        _slow_checkpoint.command(*slow_checkpoint, *args)
        if slow_checkpoint
        else [sys.executable, "-m", "longrl.cli", *args]
    )
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-4000:]
    return output


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            output = proc.stdout.read()
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}:\n{output[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time" and not k.startswith(TIMING_PREFIXES)}


def _last_logged_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(root), num_train=8, num_test=2, frames=16, size=56, seed=0))
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run, and its mean seconds per step."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _finish(_start(data, out))
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # Seconds per step from the logged wall times (process start-up and checkpoint-free steps
    # would otherwise inflate it and let the kill land after the run has finished).
    return out, (rows[-1]["time"] - rows[0]["time"]) / (STEPS - 1)


def test_sigkill_anywhere_then_resume_matches_uninterrupted_run(data, reference, tmp_path):
    ref_out, seconds_per_step = reference
    out = tmp_path / "run"
    ckpts = out / "checkpoints"

    # 1. SIGKILL inside the write of checkpoint step_2: its files are in .tmp-step_2, not yet published.
    proc = _start(data, out, slow_checkpoint=(60, 2))
    _wait_for(lambda: (ckpts / ".tmp-step_2" / "trainer_state.pt").exists(), proc, "the step_2 write")
    _kill(proc)
    assert (ckpts / "step_1" / COMPLETE).exists() and not (ckpts / "step_2").exists()

    # 2. Resume (from step_1), then SIGKILL at a random moment a few steps later.
    seed = int(os.environ.get("LONGRL_TEST_KILL_SEED", time.time_ns() % 10_000))
    delay = random.Random(seed).uniform(0.0, 1.5 * seconds_per_step)
    proc = _start(data, out)
    _wait_for(lambda: _last_logged_step(out) >= 3, proc, "step 3 of the resumed run")
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before the kill; raise STEPS"
    _kill(proc)

    # 3. Resume to the end.
    output = _finish(_start(data, out))
    assert "resumed from" in output

    rows, ref_rows = _rows(out), _rows(ref_out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), f"kill seed {seed}"
    for row, ref_row in zip(rows, ref_rows):
        assert _comparable(row) == _comparable(ref_row), f"step {row['step']} differs (kill seed {seed})"
    final = load_file(str(out / "model" / "model.safetensors"))
    ref_final = load_file(str(ref_out / "model" / "model.safetensors"))
    assert final.keys() == ref_final.keys()
    assert all(torch.equal(final[k], ref_final[k]) for k in final)
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step_{STEPS - 1}", f"step_{STEPS}"]
