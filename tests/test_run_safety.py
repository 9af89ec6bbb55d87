"""No run ends silently wrong: a NaN SFT run stops with one line and saves no model, the RL guard
names the checkpoint that exists, trainer.resume=never never touches a used directory, and an SFT
run killed mid-checkpoint resumes to exactly the uninterrupted run.

The `longrl train` runs that train and are compared are real subprocesses (tiny model, tiny
synthetic video task, CPU, deterministic mode, one thread), as in tests/test_resume.py; the others
call ``longrl.cli.main`` in this process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _slow_checkpoint
from longrl.cli import main
from longrl.data.synth import SynthConfig, generate_synth
from longrl.infra.checkpoint import COMPLETE, list_checkpoints, verify_checkpoint
from longrl.infra.metrics import read_metrics
from longrl.infra.run_dir import RUN_OUTPUTS, claim_run_dir

BAD_INPUT = Path(__file__).parent / "bad_input"
SFT_STEPS = 8  # 8 rows, batch 2, 2 epochs


def _overrides(data: Path, out: Path, deterministic: bool = True) -> list[str]:
    """``deterministic=False`` for runs inside the pytest process (the switch is process-global)."""
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
        "sft.batch_size=2",
        "sft.epochs=2",
        "trainer.save_every=2",
        "trainer.keep_last=2",
        "rl.steps=4",
        "rl.prompts_per_step=2",
        "rollout.n=2",
        "rollout.max_new_tokens=6",
        f"trainer.deterministic={str(deterministic).lower()}",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.log_every=1",
        f"trainer.out_dir={out}",
    ]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.update(extra)
    return env


def _command(stage: str, data: Path, out: Path, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "longrl.cli", "train", stage, *_overrides(data, out), *extra]


def _train(stage: str, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(stage, data, out, extra), env=_env(), capture_output=True, text=True, timeout=300)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(root), num_train=8, num_test=2, frames=16, size=56, seed=0))
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted SFT run: checkpoints at steps 2, 4, 6, 8 (the last two kept) and the model."""
    out = tmp_path_factory.mktemp("sft_reference")
    proc = _train("sft", data, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["step"] for r in read_metrics(out)] == list(range(1, SFT_STEPS + 1))
    return out


def test_sft_with_a_huge_learning_rate_stops_with_one_line_and_saves_no_model(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference / "model", out / "model")  # an earlier model the NaN run must not replace
    model_before = _snapshot(out / "model")

    proc = _train("sft", data, out, "trainer.save_every=1", "--config", str(BAD_INPUT / "runs_sft_huge_lr.yaml"))

    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    rows = read_metrics(out)
    first_nan = next(r["step"] for r in rows if math.isnan(r["sft/loss"]))
    stop = first_nan + 2  # trainer.max_nonfinite_steps: 3 in a row
    assert first_nan >= 2 and math.isfinite(rows[0]["sft/loss"])
    # The NaN steps are logged as NaN; the stopping step raises before its row is written.
    assert [r["step"] for r in rows] == list(range(1, stop))
    assert all(
        math.isnan(r["sft/loss"]) and r["sft/skipped_updates"] == r["step"] - first_nan + 1
        for r in rows[first_nan - 1 :]
    )
    last = out / "checkpoints" / f"step_{stop - 1}"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: step {stop}: loss or gradient was NaN/inf for 3 updates in a row; stopping without saving the "
        f"model. Those updates were skipped; the last checkpoint is {last} (step {stop - 1}). Usual causes: too "
        "high a learning rate (lower rl.optim.lr / sft.optim.lr), fp16 overflow (use bfloat16), or a degenerate "
        "batch; raise trainer.max_nonfinite_steps to tolerate more"
    )
    assert _snapshot(out / "model") == model_before  # nothing saved over the earlier model
    checkpoints = list_checkpoints(out / "checkpoints")
    assert [step for step, _ in checkpoints] == [stop - 1, stop - 2]  # saved every step, trainer.keep_last=2
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []
    from longrl.infra.export import export_hf

    for _, path in checkpoints:
        assert verify_checkpoint(path) is None
        weights = load_file(str(export_hf(path, tmp_path / f"hf_{path.name}") / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values()), path


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_resume_never_on_a_used_directory_refuses_and_changes_no_byte(data, reference, tmp_path, capsys, stage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _snapshot(out)

    assert main(["train", stage, *_overrides(data, out, deterministic=False), "trainer.resume=never"]) == 1

    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: trainer.out_dir {out} already holds a run (checkpoints, metrics.jsonl, model) and "
        "trainer.resume=never does not touch it: choose a new trainer.out_dir, continue it with "
        "trainer.resume=auto, or delete its outputs and start over with trainer.resume=overwrite"
    ]
    assert _snapshot(out) == before


def test_rl_does_not_resume_an_sft_run_directory(data, reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _snapshot(out)

    # trainer.resume=auto: SFT's step_8 would be taken for RL's
    assert main(["train", "rl", *_overrides(data, out, deterministic=False)]) == 1

    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: trainer.out_dir {out} holds an SFT run, so RL cannot continue it: give RL its own "
        f"trainer.out_dir (start from the SFT model with model.path={out / 'model'}), or replace that run with "
        "trainer.resume=overwrite"
    ]
    assert _snapshot(out) == before


def test_resume_overwrite_deletes_the_run_outputs_only_and_starts_over(data, reference, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out").write_text("old")
    (out / "notes.txt").write_text("mine")  # not a run output: stays

    with caplog.at_level(logging.WARNING):
        claim_run_dir(out, "overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]
    deleted = [name for name in RUN_OUTPUTS if f"deleted {out / name}" in caplog.text]
    assert deleted == ["checkpoints", "metrics.jsonl", "run_info.json", "tensorboard", "model"]
    claim_run_dir(out, "never")  # nothing left that counts as an earlier run

    shutil.rmtree(out)
    shutil.copytree(reference, out)
    proc = _train("sft", data, out, "trainer.resume=overwrite")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed" not in proc.stderr
    assert [_comparable(r) for r in read_metrics(out)] == [_comparable(r) for r in read_metrics(reference)]


def test_resume_never_accepts_a_directory_without_an_earlier_run(tmp_path):
    claim_run_dir(tmp_path / "new", "never")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("a: 1\n")  # a run that stopped before its first step
    (tmp_path / "started" / "metrics.jsonl").write_text("")
    claim_run_dir(tmp_path / "started", "never")
    with pytest.raises(ValueError, match="trainer.resume='sometimes': choose one of auto, never, overwrite"):
        claim_run_dir(tmp_path, "sometimes")


def test_sft_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_run(data, reference, tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    cmd = _slow_checkpoint.command(60, 4, "train", "sft", *_overrides(data, out))  # step_4 waits 60 s
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (ckpts / ".tmp-step_4" / "trainer_state.pt").exists():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before writing step_4"
        assert time.monotonic() < deadline, "timed out waiting for the step_4 write"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (ckpts / "step_2" / COMPLETE).exists() and not (ckpts / "step_4").exists()
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]  # logged before the kill, redone on resume

    proc = _train("sft", data, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed SFT from step 2 of 8" in proc.stderr

    rows, ref_rows = read_metrics(out), read_metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, SFT_STEPS + 1))  # each step once
    assert [_comparable(r) for r in rows] == [_comparable(r) for r in ref_rows]
    final = load_file(str(out / "model" / "model.safetensors"))
    ref_final = load_file(str(reference / "model" / "model.safetensors"))
    assert final.keys() == ref_final.keys() and all(torch.equal(final[k], ref_final[k]) for k in final)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_6", "step_8"]
    assert json.loads((out / "run_info.json").read_text())["total_steps"] == SFT_STEPS


@pytest.mark.parametrize("poison_from, last_checkpoint", [(1, None), (3, 2)])
def test_rl_guard_stop_names_the_checkpoint_that_exists(
    data, tmp_path, monkeypatch, capsys, poison_from, last_checkpoint
):
    """From RL step ``poison_from`` on every policy loss is NaN; two in a row stop the run
    (checkpoints every 2 steps)."""
    from longrl.train import rl

    real_update, real_loss = rl.policy_update, rl.policy_loss

    def nan_loss(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        return loss * float("nan"), metrics

    def update(*args):
        if args[-1] >= poison_from:  # the RL step (1-based)
            monkeypatch.setattr(rl, "policy_loss", nan_loss)
        return real_update(*args)

    monkeypatch.setattr(rl, "policy_update", update)
    out = tmp_path / "run"

    assert main(["train", "rl", *_overrides(data, out, deterministic=False), "trainer.max_nonfinite_steps=2"]) == 1

    stop = poison_from + 1
    if last_checkpoint is None:
        note = f"no checkpoint was written yet (under {out / 'checkpoints'})"
    else:
        note = f"the last checkpoint is {out / 'checkpoints' / f'step_{last_checkpoint}'} (step {last_checkpoint})"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: step {stop}: loss or gradient was NaN/inf for 2 updates in a row; stopping without saving the "
            f"model. Those updates were skipped; {note}. Usual causes:"
        )
    )
    assert not (out / "model").exists()
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == ([last_checkpoint] if last_checkpoint else [])
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, stop))
    assert math.isnan(rows[-1]["actor/grad_norm"]) and all(math.isfinite(r["actor/grad_norm"]) for r in rows[:-1])
    assert [r["actor/skipped_updates"] for r in rows] == [0] * (len(rows) - 1) + [1]


def test_weights_with_nan_are_never_saved():
    from _checkpoint_tiny import tiny
    from longrl.infra.guard import NonFiniteError, require_finite_weights

    model, _ = tiny()
    require_finite_weights(model, "the final model")
    name, param = list(model.named_parameters())[3]
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"^parameter {name} holds NaN/inf, so the final model was not saved"):
        require_finite_weights(model, "the final model")
