"""``longrl train rl`` with sequence parallelism: ``torchrun --nproc-per-node 2 ... dist.sp=2`` (dp=1:
both ranks run the same prompts, each holds half of every packed group's tokens and half of its
frames) logs the same per-step losses and metrics as one process, and its checkpoint (written by
the 2 sp ranks) resumes in one process, which then continues as the uninterrupted single-process run.

Real commands in subprocesses (gloo, CPU, fp32, one thread per rank), the tiny model and task of
test_dist_torchrun (4 heads, 2 KV heads; 4 frames = 2 temporal patch groups, one per sp rank).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from longrl.data.synth import SynthConfig, generate_synth
from test_dist_torchrun import REWARD, STEPS, TIMING_PREFIXES, _overrides

TOL = 1e-5


def _command(data: Path, out: Path, world: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
    return [
        *(launcher if world > 1 else [sys.executable]),
        "-m",
        "longrl",
        "train",
        "rl",
        *_overrides(data, out),
        f"trainer.keep_last={STEPS}",
        *extra,
    ]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return output


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_close(row: dict, ref: dict) -> None:
    keys = {k for k in ref if k != "time" and not k.startswith(TIMING_PREFIXES)}
    assert keys == {k for k in row if k != "time" and not k.startswith(TIMING_PREFIXES)}
    for key in sorted(keys):
        assert abs(row[key] - ref[key]) <= TOL * max(1.0, abs(ref[key])), (row["step"], key, row[key], ref[key])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(root), num_train=8, num_test=2, frames=16, size=56, seed=0))
    (root / "reward.py").write_text(REWARD)
    return root


def test_torchrun_sp2_equals_one_process_and_resumes_in_one(data, tmp_path):
    one, sp = tmp_path / "one", tmp_path / "sp2"
    procs = [_start(_command(data, one, 1)), _start(_command(data, sp, 2, "dist.sp=2"))]
    _, output = (_finish(p) for p in procs)
    assert "sequence parallel over 2 ranks for the model" in output  # Ulysses and the frame-sharded tower were applied
    assert "sequence parallel over 2 ranks for the frozen model" in output  # the reference model too
    rows, ref_rows = _rows(sp), _rows(one)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, STEPS + 1))
    assert len({r["actor/loss"] for r in ref_rows}) == STEPS and ref_rows[1]["actor/kl_loss"] > 0  # it learns
    for row, ref_row in zip(rows, ref_rows):
        _assert_close(row, ref_row)  # counts (tokens, groups) once, not once per sp rank
    final, ref_final = (
        load_file(str(sp / "model" / "model.safetensors")),
        load_file(str(one / "model" / "model.safetensors")),
    )
    assert final.keys() == ref_final.keys()
    assert max((final[k] - ref_final[k]).abs().max().item() for k in final) <= TOL

    # the sp=2 checkpoint of step 2 resumes in one process: steps 3-4 as in the single-process run
    resumed = tmp_path / "resumed"
    shutil.copytree(sp, resumed)
    for step in range(3, STEPS + 1):
        shutil.rmtree(resumed / "checkpoints" / f"step_{step}")
    shutil.rmtree(resumed / "model")
    assert "resumed from step 2" in _finish(_start(_command(data, resumed, 1)))
    resumed_rows = _rows(resumed)
    assert [r["step"] for r in resumed_rows] == list(range(1, STEPS + 1))
    for row, ref_row in zip(resumed_rows[2:], ref_rows[2:]):
        _assert_close(row, ref_row)
    weights = load_file(str(resumed / "model" / "model.safetensors"))
    assert max((weights[k] - ref_final[k]).abs().max().item() for k in weights) <= TOL


def test_invalid_degrees_are_config_errors_naming_dist_sp_and_dp():
    from longrl.config_utils import ConfigError
    from longrl.dist.config import DistConfig
    from longrl.dist.parallelize import apply_sp
    from longrl.models.adapter import load_model
    from longrl.models.config import ModelConfig

    model, _ = load_model(ModelConfig(dtype="float32"), tokenizer_texts=["a b c"], seed=0)
    with pytest.raises(ConfigError, match=r"^dist.sp=3 does not divide the model's 4 attention heads"):
        apply_sp(model, None, DistConfig(dp=1, sp=3))
    with pytest.raises(ConfigError, match=r"^dist.dp x dist.sp = 2 x 2 does not match the world size 2"):
        DistConfig(dp=2, sp=2).resolved(2)
    with pytest.raises(ConfigError, match=r"^dist.fsdp=false with 2 processes"):
        DistConfig(fsdp=False).resolved(2)


def test_torchrun_dp2_sp2_equals_dp2(data, tmp_path):
    """4 processes, mesh dp=2 x sp=2 (FSDP2 over the 4 ranks flattened): each dp slot's 2 sp ranks
    share its prompts; the run logs what the 2-process dp=2 run (no sp) logs, counts included. The
    rollout here decodes head-parallel (``dist.sp_decode=sharded``): the same tokens as one rank."""
    short = ["rl.steps=2", "trainer.save_every=0"]
    procs = [
        _start(_command(data, tmp_path / "dp2sp2", 4, "dist.dp=2", "dist.sp=2", "dist.sp_decode=sharded", *short)),
        _start(_command(data, tmp_path / "dp2", 2, *short)),
    ]
    output, _ = (_finish(p) for p in procs)
    assert "sequence parallel over 2 ranks for the model" in output and "decode sharded" in output
    rows, ref_rows = _rows(tmp_path / "dp2sp2"), _rows(tmp_path / "dp2")
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == [1, 2]
    assert ref_rows[0]["rollout/groups_kept"] == 2 and ref_rows[0]["rollout/tokens"] == 24  # 2 prompts x 2 samples x 6
    for row, ref_row in zip(rows, ref_rows):
        _assert_close(row, ref_row)
