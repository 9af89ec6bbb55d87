"""Batch reward scoring: every configured function over every sample, failures isolated."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from longrl.rewards.config import RewardConfig
from longrl.rewards.registry import RewardFn, RewardInput, RewardResult, resolve_reward

logger = logging.getLogger("longrl.rewards")


class JudgeFailureError(RuntimeError):
    """The judge failed on more than ``reward.judge_max_failure_frac`` of its recent samples: the
    rewards would be mostly fallbacks, so the run stops instead of training on them."""


class RewardModel:
    """Scores responses: score = sum over functions of weight * function score.

    A function that raises (or returns something that is not a finite number or a dict with a
    finite "score") on a sample is logged with the sample id and scored `fallback_score` there;
    the other functions and samples are unaffected. Components are named "<function>" (its score)
    and "<function>/<component>" for the parts a dict result gives.

    Judge functions are watched over their last ``judge_failure_window`` samples: more than
    ``judge_max_failure_frac`` of them failed raises JudgeFailureError (1.0 never stops).
    ``pop_metrics`` gives the fallback fraction and judge failures since its last call.
    """

    def __init__(
        self,
        functions: list[tuple[str, RewardFn, float]],
        fallback_score: float = 0.0,
        *,
        judge_max_failure_frac: float = 1.0,
        judge_failure_window: int = 64,
    ):
        self.functions = functions
        self.fallback_score = fallback_score
        self.judge_max_failure_frac = judge_max_failure_frac
        self._failures: dict[str, int] = {name: 0 for name, _, _ in functions}
        self._lock = threading.Lock()  # failure counts are bumped from judge threads
        self._judge_failed: deque[bool] = deque(maxlen=judge_failure_window)  # recent judge samples
        self._last_judge_error = ""
        self._counts = {"samples": 0, "fallbacks": 0, "judge_failures": 0}  # since pop_metrics

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.functions]

    def __call__(self, inputs: list[RewardInput]) -> list[RewardResult]:
        results = [RewardResult(score=0.0) for _ in inputs]
        for name, fn, weight in self.functions:
            concurrency = int(getattr(fn, "max_concurrency", 1) or 1)
            if concurrency > 1 and len(inputs) > 1:
                with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"reward-{name}") as pool:
                    scored = list(pool.map(functools.partial(self._score_one, name, fn), inputs))
            else:
                scored = [self._score_one(name, fn, sample) for sample in inputs]
            for result, (score, components, error) in zip(results, scored):
                result.score += weight * score
                result.components.update(components)
                if error is not None:
                    result.error = error if result.error is None else f"{result.error}; {error}"
            if _is_judge(fn):
                self._watch_judge(name, [error for _, _, error in scored])
        self._counts["samples"] += len(inputs)
        self._counts["fallbacks"] += sum(r.error is not None for r in results)
        return results

    def pop_metrics(self) -> dict[str, float]:
        """Since the last call: the fraction of samples with a fallback score (any function failed)
        and the number of failed judge calls."""
        counts, self._counts = self._counts, {"samples": 0, "fallbacks": 0, "judge_failures": 0}
        return {
            "reward/fallback_frac": counts["fallbacks"] / max(counts["samples"], 1),
            "reward/judge_failures": counts["judge_failures"],
        }

    def _watch_judge(self, name: str, errors: list[str | None]) -> None:
        for error in errors:
            self._judge_failed.append(error is not None)
            if error is not None:
                self._counts["judge_failures"] += 1
                self._last_judge_error = error
        failed, window = sum(self._judge_failed), self._judge_failed.maxlen or 0  # maxlen is always set
        # More failures than the fraction allows of a full window: the window cannot come back under it.
        if failed > self.judge_max_failure_frac * window:
            last = " ".join(self._last_judge_error.split())[:300]  # one line; judge errors hold no key
            raise JudgeFailureError(
                f"reward {name!r}: the judge failed on {failed} of the last {len(self._judge_failed)} samples "
                f"(more than reward.judge_max_failure_frac={self.judge_max_failure_frac} of a "
                f"{window}-sample window); last error: {last}. Fix: check the endpoint at reward.judge_base_url "
                f"is up and reachable, or raise reward.judge_max_failure_frac (1.0 never stops)"
            )

    def _score_one(self, name: str, fn: RewardFn, sample: RewardInput) -> tuple[float, dict[str, float], str | None]:
        try:
            score, parts = _check_output(fn(sample))
        except Exception as error:  # noqa: BLE001 - one bad sample must never end the run
            with self._lock:
                self._failures[name] += 1
                count = self._failures[name]
            first = count == 1
            logger.warning(
                "reward %r failed on sample %s: %s: %s; scored %s (fallback)%s",
                name,
                sample.sample_id,
                type(error).__name__,
                error,
                self.fallback_score,
                "" if first else f" [{count} failures so far]",
                exc_info=first,
            )
            return self.fallback_score, {name: self.fallback_score}, f"{name}: {type(error).__name__}: {error}"
        components = {name: score, **{f"{name}/{key}": value for key, value in parts.items()}}
        return score, components, None


def _check_output(output) -> tuple[float, dict[str, float]]:
    if isinstance(output, dict):
        if "score" not in output:
            raise ValueError(f"a reward dict must hold the total under 'score'; got keys {sorted(output)}")
        parts = {key: _finite(value, key) for key, value in output.items() if key != "score"}
        return _finite(output["score"], "score"), parts
    return _finite(output, "score"), {}


def _finite(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"reward {what} must be a number; got {type(value).__name__} {value!r:.80}") from None
    if not math.isfinite(number):
        raise ValueError(f"reward {what} is {number}")
    return number


def build_reward(cfg: RewardConfig) -> RewardModel:
    """Resolves every function of `cfg` (bad names, files or settings fail here, not mid-run)."""
    functions: list[tuple[str, RewardFn, float]] = []
    for spec, weight in zip(cfg.functions, cfg.function_weights()):
        fn = resolve_reward(spec, cfg)
        functions.append((_component_name(spec, [name for name, _, _ in functions]), fn, weight))
    return RewardModel(
        functions,
        fallback_score=cfg.fallback_score,
        judge_max_failure_frac=cfg.judge_max_failure_frac,
        judge_failure_window=cfg.judge_failure_window,
    )


def _is_judge(fn: RewardFn) -> bool:
    from longrl.rewards.judge import JudgeReward

    return isinstance(fn, JudgeReward)


def _component_name(spec: str, taken: list[str]) -> str:
    """ "dir/file.py:my_reward" logs as "my_reward"; a repeated name gets a suffix."""
    name = spec.rpartition(":")[2] or spec
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate
