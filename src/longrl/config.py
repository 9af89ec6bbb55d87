"""The run configuration: one dataclass per concern, merged from YAML and ``key.sub=value`` overrides.

    cfg = load_config("examples/grpo.yaml", ["rollout.n=8", "rl.steps=200"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from longrl import config_utils
from longrl.config_utils import ConfigError  # noqa: F401  (re-exported for callers)
from longrl.dist.config import DistConfig
from longrl.models.config import ModelConfig
from longrl.rewards.config import RewardConfig
from longrl.rl.config import AlgorithmConfig
from longrl.rollout.config import RolloutConfig


@dataclass
class DataConfig:
    train_path: str = ""  # .jsonl or .parquet rows (id, video, question, options, answer, reasoning, category)
    test_path: str = ""
    media_root: str = ""  # relative video paths resolve here (default: the data file's folder)
    num_frames: int = 16  # uniform sampling over the whole video; 0 = sample at `fps`
    fps: float = 0.0
    max_frames: int = 768
    min_pixels: int = 56 * 56  # Qwen smart-resize bounds, per frame
    max_pixels: int = 448 * 448
    bad_sample: Literal["skip", "error"] = "skip"  # a missing/corrupt video: skip and count, or stop
    embed_cache_dir: str = ""  # precomputed video embeddings (`longrl cache-embeds`)
    max_rows: int = 0  # 0 = all rows


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class SFTConfig:
    epochs: float = 3.0
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=10))


@dataclass
class RLConfig:
    steps: int = 40
    prompts_per_step: int = 8
    micro_batch_tokens: int = 16384  # dynamic micro-batching budget for log-prob/update passes
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=2, min_lr_ratio=1.0))


@dataclass
class TrainerConfig:
    out_dir: str = "runs/default"
    device: str = "auto"  # auto = cuda when available
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    save_every: int = 0  # steps; 0 = only at the end
    keep_last: int = 3
    resume: Literal["auto", "never"] = "auto"
    max_nonfinite_steps: int = 5
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "longrl"
    progress: bool = True


@dataclass
class EvalConfig:
    max_new_tokens: int = 96
    batch_prompts: int = 32
    max_rows: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)  # data / sequence parallel layout and FSDP2 options


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides; ``algorithm.name`` applies its preset first,
    so explicit algorithm keys still win over the preset's values."""
    from longrl.rl.presets import apply_preset

    cfg = config_utils.load(Config, yaml_path, overrides)
    preset = apply_preset(AlgorithmConfig(), cfg.algorithm.name)
    explicit = _explicit_keys(yaml_path, overrides, "algorithm")
    algorithm = config_utils.merge(preset, {k: getattr(cfg.algorithm, k) for k in explicit})
    try:  # fill in what depends on the rollout (Dr.GRPO's divisor, DAPO's overlong buffer)
        algorithm = algorithm.resolve(cfg.rollout.max_new_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    _check_dist(cfg)
    return dataclasses.replace(cfg, algorithm=algorithm)


def _check_dist(cfg: Config) -> None:
    """dist.dp x dist.sp must be the world size torchrun launched; each dp rank draws an equal share."""
    from longrl.dist.env import world_size_from_env

    dp = cfg.dist.resolved(world_size_from_env()).dp
    if cfg.rl.prompts_per_step % dp:
        raise ConfigError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be a multiple of dist.dp={dp} "
                          "(each data-parallel rank draws an equal share of the step's prompts)")


def _explicit_keys(yaml_path, overrides, section: str) -> set[str]:
    keys: set[str] = set()
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        keys |= set((loaded.get(section) or {}).keys())
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        if key.startswith(section + "."):
            keys.add(key.split(".")[1])
    return keys


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; secrets never live in it (API keys come from the environment)."""
    config_utils.save(cfg, path)
