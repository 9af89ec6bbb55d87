"""Reward settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class RewardConfig:
    # Registered names (multiple_choice, math, judge) or "path/to/file.py:function".
    functions: list[str] = field(default_factory=lambda: ["multiple_choice"])  # names or "file.py:fn"
    # One weight per function; the score is sum(weight * function score). Empty = 1/len(functions)
    # each (their mean), so a single function's score passes through unchanged.
    weights: list[float] = field(default_factory=list)  # one per function; empty = their mean
    # Inside multiple_choice and math: score = format_weight * format + accuracy_weight * accuracy.
    format_weight: float = 0.1  # weight of the format score (answer in the expected form)
    accuracy_weight: float = 0.9  # weight of the accuracy score (the answer is right)
    # Score of a function that raised (or a judge call that failed) on a sample.
    fallback_score: float = 0.0  # score of a sample whose reward function failed
    # Open-ended judge over an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
    judge_base_url: str = ""  # OpenAI-compatible endpoint of the judge; "" = no judge
    judge_model: str = ""  # model name sent to the judge endpoint
    # NAME of the environment variable that holds the key; the key itself never enters the config.
    judge_api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the judge key
    judge_max_concurrency: int = 8  # judge requests in flight at once
    judge_timeout_s: float = 30  # seconds per judge request
    judge_max_retries: int = 3  # extra attempts after the first, on timeouts / 429 / 5xx / connection errors
    judge_retry_backoff_s: float = 0.5  # first backoff; doubles every retry
    judge_cache_path: str = ""  # jsonl file of judged answers, reused across runs; "" = in memory only
    judge_max_failure_frac: float = 0.5  # stop the run when more of the judge's last samples fail; 1 = never
    judge_failure_window: int = 64  # samples (responses) the judge failure fraction is counted over

    def __post_init__(self) -> None:
        if not self.functions:
            raise ValueError("reward.functions is empty: name at least one reward (e.g. multiple_choice)")
        if self.weights and len(self.weights) != len(self.functions):
            raise ValueError(
                f"reward.weights has {len(self.weights)} values for {len(self.functions)} "
                f"functions {self.functions}: give one weight per function, or none"
            )
        if not _ENV_NAME.fullmatch(self.judge_api_key_env) or _looks_like_a_key(self.judge_api_key_env):
            # Never echo the value: it may be a pasted key.
            raise ValueError(
                "reward.judge_api_key_env must be the NAME of an environment variable that holds "
                "the judge key (e.g. OPENAI_API_KEY), not the key itself"
            )
        if self.judge_max_concurrency < 1:
            raise ValueError(f"reward.judge_max_concurrency={self.judge_max_concurrency} must be >= 1")
        if self.judge_timeout_s <= 0:
            raise ValueError(f"reward.judge_timeout_s={self.judge_timeout_s} must be > 0")
        if self.judge_max_retries < 0:
            raise ValueError(f"reward.judge_max_retries={self.judge_max_retries} must be >= 0")
        if not 0 <= self.judge_max_failure_frac <= 1:
            raise ValueError(f"reward.judge_max_failure_frac={self.judge_max_failure_frac} must be in [0, 1]")
        if self.judge_failure_window < 1:
            raise ValueError(f"reward.judge_failure_window={self.judge_failure_window} must be >= 1")

    def function_weights(self) -> list[float]:
        return list(self.weights) if self.weights else [1.0 / len(self.functions)] * len(self.functions)


def _looks_like_a_key(value: str) -> bool:
    """Long mixed-case / digit strings are keys, not variable names."""
    return len(value) >= 24 and any(c.isdigit() for c in value) and any(c.islower() for c in value)
