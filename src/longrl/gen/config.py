"""The generation-RL run's config: its own tree, loaded only by ``longrl.gen``.

It is not a section of the VLM run's ``longrl.config.Config``: the two runs share no model, rollout
or data keys, and one tree holding both would let ``rollout.n`` be set on an image run where it means
nothing. What they do share is reused as is: ``reward`` (``RewardConfig``: functions, weights,
fallback score, the judge), ``optim`` (``OptimConfig``) and ``trainer`` (``TrainerConfig``: out_dir,
seed, checkpoints, resume, logging). Unknown keys are refused by ``config_utils`` like everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from longrl import config_utils
from longrl.config import OptimConfig, TrainerConfig
from longrl.config_utils import ConfigError, FieldError
from longrl.rewards.config import RewardConfig


@dataclass
class GenModelConfig:
    # sd3: StableDiffusion3Pipeline / SD3Transformer2DModel (SD3, SD3.5); wan: WanPipeline (Wan 2.1 text to video)
    kind: Literal["sd3", "wan"] = (
        "sd3"  # sd3 (Stable Diffusion 3 / 3.5) | wan (Wan 2.1 text to video), through diffusers
    )
    name: str = "tiny"  # tiny (random, built in-process) | a local diffusers directory | a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the transformer's weights and compute
    lora_rank: int = 0  # 0 = full fine-tuning of the transformer; > 0 = LoRA adapters of this rank (peft)
    lora_alpha: int = 0  # LoRA scaling numerator; 0 = lora_rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # LoRA modules
    # name=tiny, kind=wan: Adam steps fitting the random VAE decoder to decode latents as colour patches
    # before training (0 = leave it random; a random decoder barely moves brightness: notes/log/gen.md)
    tiny_vae_fit_steps: int = 0

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "lora_rank", "lora_alpha", "tiny_vae_fit_steps")
        if self.lora_rank and not self.lora_targets:
            raise FieldError("{p}lora_targets is empty: name the modules LoRA adapts (e.g. to_q, to_v)")
        if self.tiny_vae_fit_steps and (self.kind, self.name) != ("wan", "tiny"):
            raise FieldError(
                f"{{p}}tiny_vae_fit_steps={self.tiny_vae_fit_steps} fits the tiny Wan VAE only: it needs "
                f"{{p}}kind=wan and {{p}}name=tiny (here {self.kind}, {self.name!r}); set it to 0"
            )


@dataclass
class GenConfig:
    resolution: int = 32  # image height = width in pixels (a multiple of the VAE factor x patch size)
    frames: int = 1  # video frames per sample (model.kind=wan): 1 + 4k (1, 5, 9, ...), Wan's VAE keeps 1 + k
    num_steps: int = 8  # denoising steps of the training rollouts (Flow-GRPO samples with few)
    eval_steps: int = 16  # denoising steps of the held-out evaluation (deterministic ODE)
    train_timesteps: int = 4  # of the num_steps transitions, how many (drawn at random per step) train
    noise_level: float = 0.7  # a in sigma_t = a * sqrt(t / (1 - t)): the SDE's noise; 0 = the ODE
    guidance_scale: float = 4.5  # classifier-free guidance; <= 1 turns it off (no unconditional pass)
    negative_prompt: str = ""  # the unconditional prompt of CFG
    max_text_tokens: int = 16  # T5 tokens per prompt (SD3 max_sequence_length; Wan's too)
    n: int = 8  # samples per prompt (one GRPO group), drawn in one batch
    prompts_per_step: int = 4  # prompts per RL step
    mini_batches: int = 2  # optimizer steps per RL step (the batch is split by prompt groups)
    micro_batch: int = 16  # samples per transformer forward in training (gradient accumulation)
    advantage: Literal["grpo", "drgrpo", "rloo"] = "grpo"  # per-prompt group estimator (longrl.rl)
    adv_clip: float = 5.0  # advantages are clipped to [-adv_clip, adv_clip] (Flow-GRPO: 5)
    clip_range: float = 1e-4  # ratio clip 1 +- clip_range (Flow-GRPO: 1e-4; log-probs are per-element means)
    kl_coef: float = 0.04  # beta of the KL to the reference (the initial) policy; 0 = no reference
    eval_prompts: int = 16  # held-out prompts scored before, during and after training
    eval_every: int = 0  # steps between held-out evaluations; 0 = only before and after
    grid_samples: int = 8  # images saved per evaluation in samples/step_N.png (0 = none)
    threads: int = 0  # torch CPU threads; 0 leaves torch's own choice (1 helps on busy shared cores: notes/log/gen.md)

    def __post_init__(self) -> None:
        config_utils.at_least(self, 1, "resolution", "frames", "num_steps", "eval_steps", "train_timesteps", "n")
        config_utils.at_least(self, 1, "prompts_per_step", "mini_batches", "micro_batch", "max_text_tokens")
        config_utils.at_least(self, 0, "noise_level", "guidance_scale", "adv_clip", "clip_range", "kl_coef")
        config_utils.at_least(self, 0, "eval_prompts", "eval_every", "grid_samples", "threads")
        if (self.frames - 1) % 4:
            raise FieldError(
                f"{{p}}frames={self.frames} must be 1 + 4k (1, 5, 9, 13, ...): Wan's VAE compresses time 4x"
            )
        if self.train_timesteps > self.num_steps:
            raise FieldError(
                f"{{p}}train_timesteps={self.train_timesteps} must be <= {{p}}num_steps={self.num_steps} "
                "(the trained transitions are a subset of the sampled ones)"
            )
        if self.noise_level == 0:
            raise FieldError("{p}noise_level=0 makes sampling deterministic: no log-probs to train on; use > 0")
        if self.prompts_per_step % self.mini_batches:
            raise FieldError(
                f"{{p}}prompts_per_step={self.prompts_per_step} must be a multiple of "
                f"{{p}}mini_batches={self.mini_batches} (each optimizer step takes whole prompt groups)"
            )


@dataclass
class GenDataConfig:
    # A text file of prompts, one a line; "" = the synthetic prompts of longrl.gen.data (offline)
    train_prompts: str = ""  # prompts file (one a line) or "" for the synthetic prompts
    eval_prompts: str = ""  # held-out prompts file or "" for synthetic ones never used in training

    def __post_init__(self) -> None:
        for name in ("train_prompts", "eval_prompts"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise FieldError(f"{{p}}{name}={path!r} is not a file: give a text file with one prompt a line")


def _gen_reward() -> RewardConfig:
    return RewardConfig(functions=["brightness"])


def _gen_optim() -> OptimConfig:
    return OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, betas=[0.9, 0.999], grad_clip=1.0)


@dataclass
class GenRunConfig:
    model: GenModelConfig = field(default_factory=GenModelConfig)  # which diffusers model, LoRA or full
    gen: GenConfig = field(default_factory=GenConfig)  # sampling (SDE, CFG, n) and the Flow-GRPO update
    data: GenDataConfig = field(default_factory=GenDataConfig)  # prompts
    reward: RewardConfig = field(
        default_factory=_gen_reward
    )  # brightness | target_color | jpeg_compressibility | image_judge | file.py:fn
    optim: OptimConfig = field(default_factory=_gen_optim)  # AdamW over the trainable weights
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # out_dir, seed, device, checkpoints, resume, logging
    steps: int = 30  # RL steps

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1")
        if self.gen.n < 2 and self.gen.advantage in ("grpo", "rloo", "drgrpo"):
            raise ConfigError(f"gen.n={self.gen.n}: a group of one has no advantage; set gen.n >= 2")
        if self.model.kind == "sd3" and self.gen.frames != 1:
            raise ConfigError(
                f"gen.frames={self.gen.frames}: model.kind=sd3 makes images; set gen.frames=1 or model.kind=wan"
            )


def load_gen_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> GenRunConfig:
    return config_utils.load(GenRunConfig, yaml_path, overrides)
