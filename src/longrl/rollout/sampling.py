"""Sampling parameters, samples, and a counter-based sampler.

Randomness is a pure function of ``(seed, row, step, token)``: each vocabulary entry gets a
uniform number from an integer hash, and the token is drawn by the Gumbel-max trick
(``argmax(logits / T + Gumbel)`` is an exact sample of ``softmax(logits / T)``). So a sample does
not depend on how rows are batched, which prompts share a batch, or when finished rows are
dropped, CPU and GPU draw the same numbers, and the whole step is capturable in a CUDA graph
(no generator state). ``row`` is the sample's global index ``prompt_index * n + sample_index``:
``generate([p] * 4, n=1)`` and ``generate([p], n=4)`` draw identical samples.

Reported log-probs are ``log_softmax(logits / T)`` of the sampled token over the full vocabulary,
before top-k / top-p truncation: the distribution the trainer recomputes teacher-forced. (With
truncation on, the token was drawn from the renormalised truncated distribution, whose log-prob
is higher by ``-log(kept mass)``; importance ratios use the untruncated one, as verl and OpenRLHF
do.) Greedy decoding reports ``log_softmax(logits)`` (T = 1) of the argmax token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from longrl.rollout.config import RolloutConfig

_M32 = 0xFFFFFFFF


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()  # a stop token ends its sample and is kept in it
    seed: int | None = None  # None draws one from torch's global generator
    greedy: bool = False

    @classmethod
    def from_config(cls, config: RolloutConfig, *, seed: int | None = None, stop_token_ids=()) -> SamplingParams:
        """The sampling part of a run's ``rollout`` config (n, temperature, top_p, top_k,
        max_new_tokens), so a loop does not copy it field by field."""
        return cls(
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            max_new_tokens=config.max_new_tokens,
            seed=seed,
            stop_token_ids=tuple(stop_token_ids),
        )

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def validate(self, vocab_size: int) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        bad = [t for t in self.stop_token_ids if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"SamplingParams.stop_token_ids {bad} are outside the vocabulary [0, {vocab_size})")


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (the stop token is the last entry) or "length"


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (values in [0, 2^32) held in int64; no product overflows 2^63)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def row_keys(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per sample row, from the run's seed and the row's global index."""
    base = hash32(torch.tensor(seed & _M32, dtype=torch.long, device=rows.device))
    return hash32(base ^ (rows.long() & _M32))


def uniform_noise(keys: torch.Tensor, step: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) floats [rows, vocab] for decode step ``step`` (a 0-d long tensor)."""
    k = hash32(keys ^ (step & _M32))  # [rows]
    bits = hash32(hash32(k[:, None] ^ vocab_ids[None, :]))  # vocab_ids are pre-hashed
    return (bits.float() + 0.5) * (1.0 / 2**32)


def hashed_vocab(vocab_size: int, device: torch.device) -> torch.Tensor:
    return hash32(torch.arange(vocab_size, device=device, dtype=torch.long) + 0x9E3779B1)


def truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (on the renormalised top-k distribution), as transformers orders them."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # exclusive: the most likely token is always kept
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    keys: torch.Tensor,
    step: torch.Tensor,
    vocab_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from fp32 ``logits [rows, vocab]``; returns (tokens, log-probs)."""
    logits = logits.float()
    if params.is_greedy:
        tokens = logits.argmax(-1)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
        return tokens, logprobs
    scaled = logits / params.temperature
    logprobs_all = scaled.log_softmax(-1)
    allowed = truncate(scaled, params.top_k, params.top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(keys, step, vocab_ids)))
    tokens = (allowed + gumbel).argmax(-1)
    return tokens, logprobs_all.gather(-1, tokens[:, None])[:, 0]
