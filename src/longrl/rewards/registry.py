"""Reward function registry and the types every reward function shares.

One signature for every reward function:

    fn(sample: RewardInput) -> float | dict[str, float]

A dict gives named components (e.g. format, accuracy) plus the total under "score".
Functions that need settings register a factory instead: `make(cfg: RewardConfig) -> fn`.
A function with an integer attribute `max_concurrency` > 1 (the judge) is called from that many
threads at once; every other function runs in the caller's thread, one sample at a time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longrl.rewards.config import RewardConfig


@dataclass
class RewardInput:
    sample_id: str
    response: str  # the model's full response text
    answer: str  # the reference answer (a letter, option text, a number, free text)
    options: list[str] | None = None  # multiple-choice options, in letter order; None for a free-text row
    question: str = ""
    row: dict = field(default_factory=dict)  # the dataset row, for user functions that need more

    @property
    def answer_text(self) -> str:
        """The reference as text: the correct option's text when `answer` is its letter, else `answer`."""
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        index = letters.find(self.answer.strip()) if len(self.answer.strip()) == 1 else -1
        return self.options[index] if self.options and 0 <= index < len(self.options) else self.answer


@dataclass
class RewardResult:
    score: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set when a function failed and the fallback score was used


RewardFn = Callable[[RewardInput], "float | dict[str, float]"]


@dataclass(frozen=True)
class _Entry:
    fn: Callable
    factory: bool


_REGISTRY: dict[str, _Entry] = {}
_BUILTIN_MODULES = ("longrl.rewards.multiple_choice", "longrl.rewards.math", "longrl.rewards.judge")


def register_reward(name: str, *, factory: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: `@register_reward("name")` on fn(sample) -> float | dict, or
    `@register_reward("name", factory=True)` on make(cfg: RewardConfig) -> fn."""

    def decorate(fn: Callable) -> Callable:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing.fn) != _qualified(fn):
            raise ValueError(
                f"reward {name!r} is already registered by {_qualified(existing.fn)}; "
                f"pick another name for {_qualified(fn)}"
            )
        _REGISTRY[name] = _Entry(fn, factory)
        return fn

    return decorate


def registered_rewards() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def resolve_reward(spec: str, cfg: RewardConfig) -> RewardFn:
    """A registered name or "path/to/file.py:function" (or "package.module:function") -> fn."""
    _load_builtins()
    entry = _REGISTRY.get(spec)
    if entry is not None:
        return entry.fn(cfg) if entry.factory else entry.fn
    if ":" in spec:
        from longrl.rewards.user import load_user_function

        return load_user_function(spec)
    raise ValueError(
        f"reward function {spec!r} is neither registered (known: {', '.join(sorted(_REGISTRY))}) "
        f"nor of the form 'path/to/file.py:function'"
    )


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
