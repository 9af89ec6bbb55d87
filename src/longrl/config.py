"""The run configuration: one dataclass per concern, merged from YAML and ``key.sub=value`` overrides.

cfg = load_config("my.yaml", ["rollout.n=8", "rl.steps=200"])  # my.yaml: any keys of configs/reference.yaml
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from longrl import config_utils
from longrl.config_utils import ConfigError  # noqa: F401  (re-exported for callers)
from longrl.dist.config import DistConfig
from longrl.models.config import ModelConfig
from longrl.rewards.config import RewardConfig
from longrl.rl.config import AlgorithmConfig
from longrl.rollout.config import RolloutConfig


@dataclass
class DataConfig:
    train_path: str = ""  # .jsonl or .parquet rows (id, video or image, question, options, answer, reasoning, category)
    test_path: str = ""  # held-out rows for `longrl eval`, same format as train_path
    media_root: str = ""  # relative video/image paths resolve here (default: the data file's folder)
    num_frames: int = 16  # uniform sampling over the whole video; 0 = sample at `fps`
    fps: float = 0.0  # frames per second of video when num_frames is 0 (capped by max_frames)
    max_frames: int = 768  # upper bound on frames per video when sampling at fps
    min_pixels: int = 56 * 56  # Qwen smart-resize bounds, per frame
    max_pixels: int = 448 * 448  # per frame; larger frames are resized down to at most this many pixels
    image_min_pixels: int = 56 * 56  # an image row's smart-resize bounds (Qwen2VLImageProcessor's defaults)
    image_max_pixels: int = 28 * 28 * 1280  # larger images are resized down to at most this many pixels
    bad_sample: Literal["skip", "error"] = "skip"  # a bad row (schema, JSON, UTF-8) or video: skip and count, or stop
    embed_cache_dir: str = ""  # precomputed video and image embeddings (`longrl cache-embeds`)
    audio: Literal["none", "in_video", "beside"] = (
        "none"  # a video's sound (omni): in_video interleaves, beside follows
    )

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "num_frames", "fps")
        config_utils.at_least(self, 1, "max_frames", "min_pixels", "image_min_pixels")
        if self.num_frames == 0 and self.fps == 0:
            raise config_utils.FieldError("{p}num_frames=0 samples at {p}fps, which is 0 too: set one of them > 0")
        if self.max_pixels < self.min_pixels:
            raise config_utils.FieldError(
                f"{{p}}max_pixels={self.max_pixels} must be >= {{p}}min_pixels={self.min_pixels}"
            )
        if self.image_max_pixels < self.image_min_pixels:
            raise config_utils.FieldError(
                f"{{p}}image_max_pixels={self.image_max_pixels} must be >= {{p}}image_min_pixels={self.image_min_pixels}"
            )


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2)
    warmup_steps: int = 10  # linear warm-up from 0 to lr over this many steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # clip the global gradient norm to this value

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "lr", "weight_decay", "warmup_steps", "grad_clip")
        config_utils.in_range(self, "min_lr_ratio", 0, 1)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise config_utils.FieldError(f"{{p}}betas={self.betas} must be two values in [0, 1), e.g. [0.9, 0.95]")


@dataclass
class SFTConfig:
    epochs: float = 3.0  # passes over the SFT rows (fractions allowed)
    batch_size: int = 16  # rows per optimizer step
    optim: OptimConfig = field(  # SFT optimizer
        default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=10)
    )

    def __post_init__(self) -> None:
        if self.epochs <= 0:  # sft_steps rounds up: 0 epochs would still train one step
            raise config_utils.FieldError(f"{{p}}epochs={self.epochs} must be > 0")
        config_utils.at_least(self, 1, "batch_size")


@dataclass
class RLConfig:
    steps: int = 40  # RL steps (one rollout + update each)
    prompts_per_step: int = 8  # prompts (videos) drawn per step; each gets rollout.n samples
    micro_batch_tokens: int = 16384  # dynamic micro-batching budget for log-prob/update passes
    # the group forward's attention; hybrid is the fastest measured on GPU (notes/train.md)
    group_attention: Literal["auto", "dense", "hybrid", "split"] = (
        "auto"  # auto: hybrid on GPU for groups >= 2048 tokens, else dense | dense | hybrid | split (no compiler)
    )
    optim: OptimConfig = field(  # RL optimizer
        default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=2, min_lr_ratio=1.0)
    )

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "steps")
        config_utils.at_least(self, 1, "prompts_per_step", "micro_batch_tokens")


@dataclass
class TrainerConfig:
    out_dir: str = "runs/default"  # run directory: config, metrics, checkpoints, the trained model
    device: str = "auto"  # auto = cuda when available
    seed: int = 0  # seeds data order, model init and sampling
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bitwise-repeatable runs)
    log_every: int = 10  # steps between console log lines
    save_every: int = 0  # steps; 0 = only at the end
    keep_last: int = 3  # checkpoints kept on disk (older ones are deleted)
    # auto: continue from the newest complete checkpoint in out_dir; never: refuse an out_dir that holds a
    # run; overwrite: delete that run's outputs first (checkpoints, metrics, model), then start at step 0
    resume: Literal["auto", "never", "overwrite"] = "auto"  # auto | never | overwrite (see above)
    max_nonfinite_steps: int = 5  # consecutive non-finite losses/gradients (skipped updates) before the run stops
    tensorboard: bool = True  # also write TensorBoard events to out_dir
    wandb: bool = False  # also log to Weights & Biases
    wandb_project: str = "longrl"  # W&B project name
    progress: bool = True  # show progress bars

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "save_every")
        config_utils.at_least(self, 1, "log_every", "keep_last", "max_nonfinite_steps")


@dataclass
class EvalConfig:
    max_new_tokens: int = 96  # response length limit per held-out question (greedy)
    batch_prompts: int = 32  # questions decoded together
    max_rows: int = 0  # evaluate only the first rows; 0 = all

    def __post_init__(self) -> None:
        config_utils.at_least(self, 0, "max_rows")
        config_utils.at_least(self, 1, "max_new_tokens", "batch_prompts")


# Advantage estimators that compare the samples of one group: with one sample per prompt their
# advantage is 0 (or undefined), so rollout.n must be >= 2.
GROUP_RELATIVE_ADVANTAGES = ("grpo", "drgrpo", "rloo")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)  # dataset rows and video sampling
    model: ModelConfig = field(default_factory=ModelConfig)  # which model, dtype, what trains
    sft: SFTConfig = field(default_factory=SFTConfig)  # chain-of-thought SFT
    rl: RLConfig = field(default_factory=RLConfig)  # the RL loop
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation (sampling, batching, kernels)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # advantage, loss, KL (GRPO family)
    reward: RewardConfig = field(default_factory=RewardConfig)  # reward functions and the judge
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # run directory, logging, checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation
    dist: DistConfig = field(default_factory=DistConfig)  # data / sequence parallel layout and FSDP2 options

    def validate(self) -> None:
        """Checks that span sections (each section checks its own fields when it is built)."""
        if self.rollout.n < 2 and self.algorithm.advantage in GROUP_RELATIVE_ADVANTAGES:
            raise ConfigError(
                f"rollout.n={self.rollout.n} with algorithm.advantage={self.algorithm.advantage!r} "
                "gives every sample a zero advantage (no learning signal): set rollout.n >= 2, "
                "or algorithm.advantage=reinforce_pp"
            )


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides; ``algorithm.name`` applies its preset first,
    so explicit algorithm keys still win over the preset's values."""
    from longrl.rl.presets import apply_preset

    cfg = config_utils.load(Config, yaml_path, overrides)
    preset = apply_preset(AlgorithmConfig(), cfg.algorithm.name)
    explicit = _explicit_keys(yaml_path, overrides, "algorithm")
    algorithm = config_utils.merge(preset, {k: getattr(cfg.algorithm, k) for k in explicit}, prefix="algorithm.")
    try:  # fill in what depends on the rollout (Dr.GRPO's divisor, DAPO's overlong buffer)
        algorithm = algorithm.resolve(cfg.rollout.max_new_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    cfg = dataclasses.replace(cfg, algorithm=algorithm)
    cfg.validate()
    _check_dist(cfg)
    return cfg


def _check_dist(cfg: Config) -> None:
    """dist.dp x dist.sp must be the world size torchrun launched; each dp rank draws an equal share."""
    from longrl.dist.env import world_size_from_env

    dp = cfg.dist.resolved(world_size_from_env()).dp
    if cfg.rl.prompts_per_step % dp:
        raise ConfigError(
            f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be a multiple of dist.dp={dp} "
            "(each data-parallel rank draws an equal share of the step's prompts)"
        )


def _explicit_keys(yaml_path, overrides, section: str) -> set[str]:
    keys: set[str] = set()
    if yaml_path:
        loaded = config_utils.read_yaml(yaml_path)
        keys |= set((loaded.get(section) or {}).keys())
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        if key.startswith(section + "."):
            keys.add(key.split(".")[1])
    return keys


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; secrets never live in it (API keys come from the environment)."""
    config_utils.save(cfg, path)
