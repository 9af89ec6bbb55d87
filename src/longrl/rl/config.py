"""Algorithm settings for the GRPO family.

The defaults are plain GRPO with PPO-clip. Published settings for GRPO, DAPO, Dr.GRPO, RLOO,
REINFORCE++ and GSPO live in `longrl.rl.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ALGORITHMS = ("grpo", "dapo", "reinforce_pp", "rloo", "drgrpo", "gspo")
ADVANTAGES = ("grpo", "drgrpo", "rloo", "reinforce_pp")
IMPORTANCE_LEVELS = ("token", "sequence")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
KL_ESTIMATORS = ("k1", "k2", "k3")

# `token_sum_divisor` value that stands for "the rollout's maximum response length" (Dr.GRPO); the
# trainer replaces it by the real length with `AlgorithmConfig.resolve(max_response_len)`.
MAX_RESPONSE_LEN = -1.0


@dataclass
class AlgorithmConfig:
    name: str = "grpo"  # grpo | dapo | reinforce_pp | rloo | drgrpo | gspo (a label; the fields below decide)
    advantage: str = "grpo"  # grpo | drgrpo | rloo | reinforce_pp
    norm_adv_by_std: bool = True  # divide centred rewards by their std (group std; batch std for reinforce_pp)
    clip_ratio_low: float = 0.2  # ratio lower bound 1 - clip_ratio_low
    clip_ratio_high: float = 0.2  # ratio upper bound 1 + clip_ratio_high ("clip-higher" when > low)
    dual_clip_c: float = 0.0  # 0 = off; else the loss of a negative-advantage token is capped at -c * A
    importance: str = "token"  # token | sequence (GSPO: one length-normalized ratio per sequence)
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum
    # seq_mean_token_sum only: each sequence's token sum is divided by this constant (Dr.GRPO uses the
    # maximum response length, written as -1 until `resolve` fills it in). 0 = plain sum.
    token_sum_divisor: float = 0.0  # seq_mean_token_sum: divide token sums by this; -1 = max response length
    kl_coef: float = 0.0  # 0 removes the reference model entirely
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # True: KL penalizes the reward; False: KL is a loss term
    entropy_coef: float = 0.0  # entropy bonus weight in the loss; 0 = off
    ppo_epochs: int = 1  # passes over each step's rollouts
    mini_batches: int = 1  # optimizer steps per pass (the batch is split into this many)
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill the batch
    max_tries: int = 3  # generation rounds per step when dynamic sampling
    # tokens; 0 = off (DAPO soft overlong punishment); -1 = DAPO's ratio, 20% of the maximum
    # response length (4,096 of 20,480 in the paper), filled in by resolve()
    overlong_buffer: int = 0  # DAPO overlong punishment window in tokens; 0 = off, -1 = 20% of max length
    overlong_penalty: float = 1.0  # the penalty at (and beyond) the maximum length

    def __post_init__(self) -> None:
        def check_choice(field: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"algorithm.{field}={value!r} is not known; choose one of {', '.join(allowed)}")

        check_choice("name", ALGORITHMS)
        check_choice("advantage", ADVANTAGES)
        check_choice("importance", IMPORTANCE_LEVELS)
        check_choice("loss_agg", LOSS_AGGREGATIONS)
        check_choice("kl_estimator", KL_ESTIMATORS)
        for field in (
            "clip_ratio_low",
            "clip_ratio_high",
            "dual_clip_c",
            "kl_coef",
            "entropy_coef",
            "overlong_penalty",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"algorithm.{field}={getattr(self, field)} must be >= 0")
        if self.clip_ratio_low >= 1:
            raise ValueError(f"algorithm.clip_ratio_low={self.clip_ratio_low} must be < 1 (the lower bound is 1 - low)")
        if self.dual_clip_c != 0 and self.dual_clip_c <= 1:
            raise ValueError(f"algorithm.dual_clip_c={self.dual_clip_c} must be 0 (off) or > 1 (e.g. 3.0)")
        if self.token_sum_divisor < 0 and self.token_sum_divisor != MAX_RESPONSE_LEN:
            raise ValueError(
                f"algorithm.token_sum_divisor={self.token_sum_divisor} must be >= 0, "
                f"or {MAX_RESPONSE_LEN} for 'the maximum response length'"
            )
        for field in ("ppo_epochs", "mini_batches", "max_tries"):
            if getattr(self, field) < 1:
                raise ValueError(f"algorithm.{field}={getattr(self, field)} must be >= 1")
        if self.overlong_buffer < 0 and self.overlong_buffer != int(MAX_RESPONSE_LEN):
            raise ValueError(f"algorithm.overlong_buffer={self.overlong_buffer} must be >= 0 (0 = off)")

    def resolve(self, max_response_len: int) -> AlgorithmConfig:
        """Returns a copy with placeholders that depend on the rollout filled in."""
        if max_response_len < 1:
            raise ValueError(f"max_response_len={max_response_len} must be >= 1")
        out = self
        if out.token_sum_divisor == MAX_RESPONSE_LEN:
            out = dataclasses.replace(out, token_sum_divisor=float(max_response_len))
        if out.overlong_buffer == int(MAX_RESPONSE_LEN):
            out = dataclasses.replace(out, overlong_buffer=max(1, round(0.2 * max_response_len)))
        if out.overlong_buffer >= max_response_len:
            raise ValueError(
                f"algorithm.overlong_buffer={out.overlong_buffer} must be below the maximum response "
                f"length {max_response_len} (rollout.max_new_tokens); DAPO uses 20% of it "
                f"(algorithm.overlong_buffer=-1)"
            )
        return out
