"""`train_gen`: Flow-GRPO on a diffusers text-to-image / text-to-video model.

Per step: draw prompts -> n SDE samples each with per-step log-probs -> decode and score ->
group-normalized advantages -> clipped-ratio update over ``gen.train_timesteps`` of the sampled
transitions -> log -> checkpoint. Held-out prompts are scored before training, every
``gen.eval_every`` steps and at the end, by the deterministic ODE sampler at ``gen.eval_steps``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longrl import config_utils
from longrl.gen import rewards as _image_rewards  # noqa: F401  (registers the image rewards)
from longrl.gen.config import GenRunConfig
from longrl.gen.data import PromptSampler, split_prompts
from longrl.gen.loss import group_advantages
from longrl.gen.models import FlowPolicy, load_pipeline
from longrl.gen.sampler import sample
from longrl.gen.update import Reference, policy_update
from longrl.infra.checkpoint import Checkpointer
from longrl.infra.guard import NonFiniteGuard
from longrl.infra.metrics import MetricsLogger, PhaseTimer
from longrl.infra.run_dir import claim_run_dir
from longrl.rewards.model import RewardModel, build_reward
from longrl.rewards.registry import RewardInput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_policy(cfg: GenRunConfig) -> FlowPolicy:
    pipe = load_pipeline(
        cfg.model.kind, cfg.model.name, seed=cfg.trainer.seed, resolution=cfg.gen.resolution, frames=cfg.gen.frames,
        tiny_vae_fit_steps=cfg.model.tiny_vae_fit_steps,
    )  # fmt: skip
    device = torch.device("cuda" if cfg.trainer.device == "auto" and torch.cuda.is_available() else "cpu")
    if cfg.trainer.device not in ("auto", "cpu"):
        device = torch.device(cfg.trainer.device)
    pipe.to(device)
    if pipe.transformer.dtype != DTYPES[cfg.model.dtype]:  # a no-op cast still warns for Wan's fp32 modules
        pipe.transformer.to(DTYPES[cfg.model.dtype])
    pipe.set_progress_bar_config(disable=True)
    policy = FlowPolicy(pipe, cfg.model.kind, resolution=cfg.gen.resolution,
                        max_text_tokens=cfg.gen.max_text_tokens, frames=cfg.gen.frames)  # fmt: skip
    if cfg.model.lora_rank:
        from peft import LoraConfig

        pipe.transformer.requires_grad_(False)
        pipe.transformer.add_adapter(
            LoraConfig(r=cfg.model.lora_rank, lora_alpha=int(cfg.model.lora_alpha or cfg.model.lora_rank),
                       target_modules=cfg.model.lora_targets, init_lora_weights="gaussian")
        )  # fmt: skip
    return policy


def score(reward: RewardModel, prompts: list[str], pixels: torch.Tensor, tag: str) -> tuple[torch.Tensor, dict]:
    """Rewards [B] of decoded pixels (``prompts`` one per row) and the mean of each component."""
    arrays = pixels.numpy()
    key = "frames" if arrays.ndim == 5 else "image"
    inputs = [
        RewardInput(sample_id=f"{tag}/{i}", response="", answer="", question=p,
                    row={"prompt": p, key: a, **({"image": a[len(a) // 2]} if key == "frames" else {})})
        for i, (p, a) in enumerate(zip(prompts, arrays))
    ]  # fmt: skip
    results = reward(inputs)
    parts: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.components.items():
            parts.setdefault(name, []).append(value)
    return torch.tensor([r.score for r in results]), {f"reward/{k}": float(np.mean(v)) for k, v in parts.items()}


@torch.no_grad()
def evaluate(policy: FlowPolicy, cfg: GenRunConfig, reward: RewardModel, prompts: list[str], out: Path, step: int):
    """Mean reward of the held-out prompts, one ODE sample each from a fixed noise (the same every
    evaluation, so evaluations compare the weights alone); writes a grid of samples."""
    g = torch.Generator().manual_seed(cfg.trainer.seed + 10_007)
    neg = cfg.gen.negative_prompt if cfg.gen.guidance_scale > 1 else None
    traj = sample(policy, policy.cond(prompts, 1, neg), num_steps=cfg.gen.eval_steps, noise_level=0.0,
                  guidance_scale=cfg.gen.guidance_scale, generator=g)  # fmt: skip
    pixels = policy.decode(traj.final)
    scores, parts = score(reward, prompts, pixels, f"eval{step}")
    if cfg.gen.grid_samples:
        save_grid(pixels[: cfg.gen.grid_samples], out / "samples" / f"step_{step}.png")
    return float(scores.mean()), parts


def save_grid(pixels: torch.Tensor, path: Path) -> None:
    """One row of images (a clip's frames go down its column)."""
    from PIL import Image

    array = pixels.numpy()
    if array.ndim == 4:
        array = array[:, None]
    columns = [np.concatenate(list(clip), axis=0) for clip in array]  # [T*H, W, 3] per sample
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(columns, axis=1)).save(path)


def export(policy: FlowPolicy, cfg: GenRunConfig, out: Path) -> Path:
    """A directory diffusers loads: the whole pipeline (save_pretrained) or, with LoRA, the adapter
    weights for ``pipe.load_lora_weights``."""
    target = out / "model"
    if cfg.model.lora_rank:
        from peft.utils import get_peft_model_state_dict

        type(policy.pipe).save_lora_weights(
            target, transformer_lora_layers=get_peft_model_state_dict(policy.transformer)
        )
    else:
        policy.pipe.save_pretrained(target)
    return target


def train_gen(cfg: GenRunConfig) -> dict[str, Any]:
    out = Path(cfg.trainer.out_dir)
    claim_run_dir(out, cfg.trainer.resume)
    out.mkdir(parents=True, exist_ok=True)
    config_utils.save(cfg, out / "config.yaml")
    torch.set_num_threads(cfg.gen.threads) if cfg.gen.threads else None
    random.seed(cfg.trainer.seed), np.random.seed(cfg.trainer.seed), torch.manual_seed(cfg.trainer.seed)
    g = cfg.gen
    policy = build_policy(cfg)
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=(cfg.optim.betas[0], cfg.optim.betas[1]), weight_decay=cfg.optim.weight_decay
    )
    reference = Reference(policy, lora=bool(cfg.model.lora_rank)) if g.kl_coef > 0 else None
    reward = build_reward(cfg.reward)
    train_prompts, eval_prompts = split_prompts(
        cfg.data.train_prompts, cfg.data.eval_prompts, g.eval_prompts, cfg.trainer.seed
    )
    sampler = PromptSampler(train_prompts, cfg.trainer.seed)
    ckpt = Checkpointer(out, keep_last=cfg.trainer.keep_last)
    holder = nn.ModuleDict({"transformer": policy.transformer})  # no .config: diffusers' is not a transformers one
    guard = NonFiniteGuard(cfg.trainer.max_nonfinite_steps, checkpoints=ckpt)
    state = ckpt.load_latest(model=holder, optimizer=optimizer) or {"step": 0, "evals": []}
    if state["step"]:
        sampler.load_state_dict(state["sampler"])
    evals: list[list[float]] = [list(e) for e in state["evals"]]  # [step, held-out mean reward]
    timer, start = PhaseTimer(), time.perf_counter()
    logger = MetricsLogger(out, total_steps=cfg.steps, log_every=cfg.trainer.log_every, tensorboard=cfg.trainer.tensorboard,
                           config=config_utils.to_dict(cfg), desc="gen", start_step=state["step"], progress=cfg.trainer.progress)  # fmt: skip
    with logger:
        if not evals:
            evals.append([0, evaluate(policy, cfg, reward, eval_prompts, out, 0)[0]])
        for step in range(state["step"] + 1, cfg.steps + 1):
            with timer("rollout"):
                prompts = sampler.draw(g.prompts_per_step)
                cond = policy.cond(prompts, g.n, g.negative_prompt if g.guidance_scale > 1 else None)
                traj = sample(
                    policy, cond, num_steps=g.num_steps, noise_level=g.noise_level, guidance_scale=g.guidance_scale
                )
            with timer("reward"):
                rewards, parts = score(
                    reward, [p for p in prompts for _ in range(g.n)], policy.decode(traj.final), f"step{step}"
                )
            advantages = group_advantages(rewards, g.n, g)
            with timer("update"):
                stats = policy_update(policy, traj, cond, advantages, g, optimizer, params, grad_clip=cfg.optim.grad_clip,
                                      guard=guard, step=step, reference=reference)  # fmt: skip
            row = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()), **parts, **stats,
                   **reward.pop_metrics(), **timer.pop(), "lr": cfg.optim.lr}  # fmt: skip
            row["time/step"] = sum(v for k, v in row.items() if k.startswith("time/"))
            if (g.eval_every and step % g.eval_every == 0) or step == cfg.steps:
                with timer("eval"):
                    evals.append([step, evaluate(policy, cfg, reward, eval_prompts, out, step)[0]])
                row["eval/reward"] = evals[-1][1]
            logger.log(step, row)
            if (cfg.trainer.save_every and step % cfg.trainer.save_every == 0) or step == cfg.steps:
                ckpt.save(
                    step, model=holder, optimizer=optimizer, extra={"sampler": sampler.state_dict(), "evals": evals}
                )
    report = {"before": evals[0][1], "after": evals[-1][1], "evals": evals, "steps": cfg.steps,
              "minutes_this_process": (time.perf_counter() - start) / 60, "export": str(export(policy, cfg, out))}  # fmt: skip
    (out / "gen_report.json").write_text(json.dumps(report, indent=2))
    return report
