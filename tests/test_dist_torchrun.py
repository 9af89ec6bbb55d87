"""``torchrun --nproc-per-node 2 -m longrl train rl``: runs, is SIGKILLed, resumes, and matches an
uninterrupted 2-process run step for step; its DCP checkpoint (written by 2 ranks) loads in 1.

Real commands in subprocesses (gloo, CPU, deterministic, one thread per rank), a tiny model, a
tiny synthetic task and a reward that varies within a group, so every step moves the weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longrl.data.synth import SynthConfig, generate_synth

STEPS = 4
TIMING_PREFIXES = ("time/", "perf/")
REWARD = "def score(x):\n    return (sum(map(ord, x.response)) % 7) / 7.0\n"
TINY = [
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_layers=2",
    "model.tiny.vision_hidden_size=32",
    "model.tiny.vision_depth=1",
    "model.tiny.vocab_size=400",
]


def _overrides(data: Path, out: Path) -> list[str]:
    return [
        f"data.train_path={data / 'train.jsonl'}",
        "data.num_frames=4",
        "data.min_pixels=3136",
        "data.max_pixels=3136",
        *TINY,
        f"reward.functions=[{data / 'reward.py'}:score]",
        "rl.optim.lr=0.01",
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


def _start(data: Path, out: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "longrl",
        "train",
        "rl",
        *_overrides(data, out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return output


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time" and not k.startswith(TIMING_PREFIXES)}


def _logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return len([line for line in path.read_text().splitlines() if line.endswith("}")])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(root), num_train=8, num_test=2, frames=16, size=56, seed=0))
    (root / "reward.py").write_text(REWARD)
    return root


def test_torchrun_2_ranks_sigkill_resume_matches_uninterrupted_and_loads_in_1(data, tmp_path):
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "run"
    reference = _start(data, ref_out)
    proc = _start(data, out)
    deadline = time.monotonic() + 240
    while _logged_steps(out) < 2:
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "timed out waiting for step 2"
        time.sleep(0.05)
    for pid in [*_descendants(proc.pid), proc.pid]:  # torchrun starts each rank in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _logged_steps(out) < STEPS
    output = _finish(_start(data, out))
    assert "resumed from" in output
    _finish(reference)

    rows, ref_rows = _rows(out), _rows(ref_out)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, STEPS + 1))
    assert len({r["actor/grad_norm"] for r in ref_rows}) > 1 and ref_rows[0]["actor/grad_norm"] > 0  # it learns
    for row, ref_row in zip(rows, ref_rows):
        assert _comparable(row) == _comparable(ref_row), f"step {row['step']} differs"
    final = load_file(str(out / "model" / "model.safetensors"))
    ref_final = load_file(str(ref_out / "model" / "model.safetensors"))
    assert final.keys() == ref_final.keys() and all(torch.equal(final[k], ref_final[k]) for k in final)

    # the last checkpoint, written by 2 ranks, loads in one process: weights, optimizer, sampler
    from transformers import Qwen2_5_VLForConditionalGeneration

    from longrl.config import load_config
    from longrl.infra.checkpoint import Checkpointer
    from longrl.infra.setup import load_run_model as _model, read_split as read_rows
    from longrl.train.optim import build_optimizer

    cfg = load_config(None, _overrides(data, out))
    model, _ = _model(cfg, "cpu", read_rows(cfg.data.train_path, cfg, "train_path")[0])  # (rows, skipped)
    optimizer = build_optimizer(model, cfg.rl.optim)
    extra = Checkpointer(out).load_latest(model=model, optimizer=optimizer)
    assert extra["step"] == STEPS
    assert extra["sampler"]["epoch"] * 8 + extra["sampler"]["cursor"] == STEPS * 2  # global draws, not per rank
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "model").state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, exported[key]), key
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(int(optimizer.state[p]["step"]) == STEPS for p in trainable)
