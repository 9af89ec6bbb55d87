"""Policy-gradient losses: PPO-clip (clip-higher, dual-clip), GSPO's sequence ratio, KL, entropy.

All [B, T] tensors are per response token; `mask` marks the real response tokens (padding may hold
anything, it never reaches the loss).

Gradient accumulation: when one mini-batch is split into micro-batches, pass the mini-batch's
total number of response tokens (token_mean) or of sequences (seq-mean modes) as `normalizer`;
the micro-batch losses then sum to the mini-batch loss, values and gradients alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from longrl.rl.config import LOSS_AGGREGATIONS, MAX_RESPONSE_LEN, AlgorithmConfig

# exp() of a log-ratio beyond this overflows float32 gradients; ratios this far from 1 are clipped
# (or dual-clipped) anyway.
MAX_LOG_RATIO = 20.0


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    normalizer: float | None = None,
    *,
    token_sum_divisor: float = 0.0,
) -> Tensor:
    """Reduces per-token `values` [B, T] over the response tokens to a scalar.

    token_mean:          sum of all tokens / number of tokens
    seq_mean_token_mean: mean over sequences of each sequence's token mean
    seq_mean_token_sum:  mean over sequences of each sequence's token sum (divided by
                         `token_sum_divisor` when > 0: Dr.GRPO's constant normalizer)

    `normalizer` replaces the count in the outer mean (tokens for token_mean, sequences otherwise);
    without it the count is taken from `mask` (sequences = rows with at least one response token).
    """
    valid = mask.bool()
    values = torch.where(valid, values, torch.zeros_like(values))
    if mode == "token_mean":
        count = normalizer if normalizer is not None else valid.sum().clamp(min=1)
        return values.sum() / count
    tokens_per_seq = valid.sum(-1)
    if mode == "seq_mean_token_mean":
        per_seq = values.sum(-1) / tokens_per_seq.clamp(min=1)
    elif mode == "seq_mean_token_sum":
        if token_sum_divisor == MAX_RESPONSE_LEN:
            raise ValueError(
                "algorithm.token_sum_divisor=-1 (the maximum response length) is unresolved: "
                "use cfg.resolve(max_response_len=<rollout max new tokens>) before the loss"
            )
        per_seq = values.sum(-1)
        if token_sum_divisor > 0:
            per_seq = per_seq / token_sum_divisor
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    count = normalizer if normalizer is not None else (tokens_per_seq > 0).sum().clamp(min=1)
    return per_seq.sum() / count


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 / k2 / k3)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp).square()
    if estimator == "k3":
        log_ratio = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        return log_ratio.exp() - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of k1, k2, k3")


def _entropy(logits: Tensor) -> Tensor:
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1)


def entropy_from_logits(logits: Tensor, chunk_size: int = 4096) -> Tensor:
    """Entropy of softmax(logits) over the last axis, in float32, `chunk_size` rows at a time.

    With gradients, each chunk is recomputed in backward, so peak memory holds one chunk's float32
    softmax instead of the whole [rows, vocab] one.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.shape[0] <= chunk_size:
        return _entropy(rows).view(logits.shape[:-1])
    parts = []
    for chunk in rows.split(chunk_size):
        parts.append(checkpoint(_entropy, chunk, use_reentrant=False) if chunk.requires_grad else _entropy(chunk))
    return torch.cat(parts).view(logits.shape[:-1])


def importance_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str) -> Tensor:
    """Per-token log importance ratio [B, T] (0 at padding).

    token:    log pi(y_t) - log pi_old(y_t)
    sequence: GSPO-token: log pi(y_t) - sg[log pi(y_t)] + sg[log s_i], where
              log s_i = mean over the response of the token log-ratios. Its value is s_i on every
              token and its gradient is s_i * grad log pi(y_t); with sequence advantages and the
              seq_mean_token_mean aggregation this is exactly GSPO's sequence-level gradient.
              The order matters in float32: logp - logp is exactly 0, so the value is log s_i to the
              last bit; adding log s_i to logp first rounds the sum to a float32 step of |logp|
              (an error up to 1.9e-6 at |logp| = 50) before logp is taken away again.
    """
    valid = mask.bool()
    token_log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    if level == "token":
        log_ratio = token_log_ratio
    elif level == "sequence":
        seq_log_ratio = token_log_ratio.sum(-1) / valid.sum(-1).clamp(min=1)
        log_ratio = (logp - logp.detach()) + seq_log_ratio.detach().unsqueeze(-1)
        log_ratio = torch.where(valid, log_ratio, torch.zeros_like(log_ratio))
    else:
        raise ValueError(f"unknown importance level {level!r}; choose token or sequence")
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: AlgorithmConfig,
    *,
    normalizer: float | None = None,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy-gradient loss (to minimize) and its metrics.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence) or [B, T] (per token).
    The ratio r is clipped to [1 - clip_ratio_low, 1 + clip_ratio_high]; with dual_clip_c = c > 1
    the loss of a token with negative advantage is also capped at -c * A. The KL term (kl_coef > 0
    and not kl_in_reward; needs `ref_logp`) and the entropy bonus (entropy_coef > 0; needs
    `entropy` [B, T]) are aggregated like the policy term and added to the returned loss.

    Metrics are over this call's response tokens: clip_frac_low / clip_frac_high (tokens where the
    lower / upper clip removed the gradient), dual_clip_frac, approx_kl (k3 estimate of
    KL(pi_old || pi)), ratio_mean, pg_loss, kl_loss, entropy, loss.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [B, T] shape"
        )
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [B] or [B, T] with [B, T] = {tuple(logp.shape)}"
        )
    valid = mask.bool()
    adv = advantages.detach().to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(logp)

    log_ratio = importance_log_ratio(logp, old_logp, mask, cfg.importance)
    ratio = log_ratio.exp()
    low, high = 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(low, high)
    token_loss = torch.maximum(unclipped, clipped)
    if cfg.dual_clip_c > 0:
        capped = torch.minimum(token_loss, -adv * cfg.dual_clip_c)
        dual_active = (adv < 0) & (capped < token_loss)
        token_loss = torch.where(adv < 0, capped, token_loss)
    else:
        dual_active = torch.zeros_like(valid)

    agg: dict[str, Any] = dict(mode=cfg.loss_agg, normalizer=normalizer, token_sum_divisor=cfg.token_sum_divisor)
    pg_loss = aggregate(token_loss, mask, **agg)
    loss = pg_loss
    terms: dict[str, Tensor] = {"pg_loss": pg_loss}

    if cfg.kl_coef > 0 and not cfg.kl_in_reward:
        if ref_logp is None:
            raise ValueError(
                "algorithm.kl_coef > 0 with kl_in_reward=False adds a KL loss term: pass "
                "ref_logp (the reference model's log-probs), or set kl_coef=0"
            )
        kl_loss = aggregate(kl_penalty(logp, ref_logp.detach(), cfg.kl_estimator), mask, **agg)
        loss = loss + cfg.kl_coef * kl_loss
        terms["kl_loss"] = kl_loss
    if cfg.entropy_coef > 0:
        if entropy is None:
            raise ValueError(
                "algorithm.entropy_coef > 0 needs entropy [B, T] (entropy_from_logits of the "
                "response logits), or set entropy_coef=0"
            )
        entropy_term = aggregate(entropy, mask, **agg)
        loss = loss - cfg.entropy_coef * entropy_term
        terms["entropy"] = entropy_term
    terms["loss"] = loss

    with torch.no_grad():
        count = valid.sum().clamp(min=1)

        def token_mean(values: Tensor) -> Tensor:
            return torch.where(valid, values.to(logp.dtype), 0.0).sum() / count

        token_log_ratio = torch.where(valid, logp - old_logp, 0.0).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        terms.update(
            clip_frac_low=token_mean((adv < 0) & (ratio < low)),
            clip_frac_high=token_mean((adv > 0) & (ratio > high)),
            dual_clip_frac=token_mean(dual_active),
            approx_kl=token_mean(token_log_ratio.exp() - 1 - token_log_ratio),
            ratio_mean=token_mean(ratio),
        )
        # one device-to-host copy for all metrics
        values = torch.stack([t.detach().float() for t in terms.values()]).tolist()
    return loss, dict(zip(terms, values))
