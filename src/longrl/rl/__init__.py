"""RL algorithms of the GRPO family: advantages, policy losses, KL, dynamic sampling, presets."""

from longrl.rl.advantages import (
    compute_advantages,
    drgrpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from longrl.rl.config import AlgorithmConfig
from longrl.rl.dynamic_sampling import BatchFiller, keep_informative_groups, overlong_penalty
from longrl.rl.losses import aggregate, entropy_from_logits, importance_log_ratio, kl_penalty, policy_loss
from longrl.rl.presets import PRESETS, apply_preset, presets_markdown

__all__ = [
    "AlgorithmConfig",
    "PRESETS",
    "apply_preset",
    "presets_markdown",
    "compute_advantages",
    "grpo_advantages",
    "drgrpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "policy_loss",
    "aggregate",
    "kl_penalty",
    "entropy_from_logits",
    "importance_log_ratio",
    "BatchFiller",
    "keep_informative_groups",
    "overlong_penalty",
]
