"""The generation loop end to end on the tiny SD3: a smoke run that logs, checkpoints and exports a
pipeline diffusers loads, and a run killed (SIGKILL) after a checkpoint and resumed equals one run
without the kill, weight for weight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

TINY = ["gen.n=2", "gen.prompts_per_step=2", "gen.mini_batches=1", "gen.num_steps=3", "gen.eval_steps=3",
        "gen.train_timesteps=2", "gen.eval_prompts=2", "gen.grid_samples=2", "trainer.progress=false",
        "trainer.tensorboard=false", "trainer.log_every=1"]  # fmt: skip
SRC = str(Path(__file__).resolve().parents[1] / "src")

# Run in a child process so a SIGKILL ends the run, not pytest. KILL_AT: kill itself right after
# the checkpoint of that step is published.
CHILD = """
import os, signal, sys
from longrl.gen.config import load_gen_config
from longrl.gen import train
kill_at = int(os.environ.get("KILL_AT", "0"))
if kill_at:
    save = train.Checkpointer.save
    def save_then_die(self, step, **kw):
        path = save(self, step, **kw)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    train.Checkpointer.save = save_then_die
train.train_gen(load_gen_config(None, sys.argv[1:]))
"""


def _run(out: Path, *extra: str, kill_at: int = 0) -> int:
    env = {**os.environ, "PYTHONPATH": SRC, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", CHILD, *TINY, f"trainer.out_dir={out}", *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True).returncode


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "transformer" / "diffusion_pytorch_model.safetensors")


def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    assert _run(tmp_path / "straight", "steps=3") == 0
    assert _run(tmp_path / "killed", "steps=3", "trainer.save_every=1", kill_at=2) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model").exists()
    assert _run(tmp_path / "killed", "steps=3", "trainer.save_every=1") == 0  # resumes from step_2
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    first = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/mean"] for r in rows] == [r["reward/mean"] for r in first]
    # the export is a pipeline diffusers loads, with the trained transformer in it
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "straight" / "model")
    assert torch.equal(pipe.transformer.state_dict()["proj_out.weight"], straight["proj_out.weight"])
    assert (tmp_path / "straight" / "samples" / "step_3.png").is_file()
    report = json.loads((tmp_path / "straight" / "gen_report.json").read_text())
    assert [e[0] for e in report["evals"]] == [0, 3]


def test_lora_adapters_train_and_export_weights_load_lora_weights_accepts(tmp_path):
    from longrl.gen.config import load_gen_config
    from longrl.gen.models import tiny_sd3_pipeline
    from longrl.gen.train import train_gen

    torch.set_num_threads(1)
    out = tmp_path / "lora"
    cfg = load_gen_config(None, [*TINY, "steps=2", "model.lora_rank=4", "optim.lr=1e-2", f"trainer.out_dir={out}"])
    train_gen(cfg)
    assert (out / "model" / "pytorch_lora_weights.safetensors").is_file()
    base = tiny_sd3_pipeline(seed=0)
    before = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    base.load_lora_weights(out / "model")
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    e, p = torch.randn(1, 32, 64), torch.randn(1, 64)
    with torch.no_grad():
        adapted = base.transformer(hidden_states=x, timestep=t, encoder_hidden_states=e, pooled_projections=p).sample
        base.unload_lora_weights()
        plain = base.transformer(hidden_states=x, timestep=t, encoder_hidden_states=e, pooled_projections=p).sample
    assert not torch.allclose(adapted, plain)  # the adapters trained and load into a fresh pipeline
    assert all(torch.equal(before[k], v) for k, v in base.transformer.state_dict().items())  # base weights untouched
