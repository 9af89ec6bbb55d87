"""Advantage estimators of the GRPO family.

Rewards come grouped by prompt, in one of two forms:

* a dense tensor `[num_groups, n]` when every group has n samples, or
* a list of 1-D tensors (one per prompt) when groups differ in size, e.g. after dynamic sampling
  dropped some samples or a group was cut short.

The per-estimator functions return advantages in the same form as their input. `compute_advantages`
returns them flat, in sample order (group 0's samples, then group 1's, ...), which is the row order
of the `[B, T]` tensors the policy loss takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor

from longrl.rl.config import AlgorithmConfig

Rewards = Tensor | Sequence[Tensor]
# Element-wise sum of a list of floats over the data-parallel ranks (``longrl.dist.env.sum_floats``):
# the batch statistics of REINFORCE++ are then those of the global batch. None: this process's batch.
BatchSum = Callable[[list[float]], list[float]]


def _flatten(rewards: Rewards) -> tuple[Tensor, list[int]]:
    """Grouped rewards -> (flat [B] rewards, group sizes)."""
    if isinstance(rewards, Tensor):
        if rewards.dim() != 2:
            raise ValueError(
                f"grouped rewards must be [num_groups, n] or a list of 1-D tensors; "
                f"got a tensor of shape {tuple(rewards.shape)}"
            )
        groups = list(rewards.unbind(0))
    else:
        groups = [torch.as_tensor(g) for g in rewards]
        for i, g in enumerate(groups):
            if g.dim() != 1:
                raise ValueError(f"group {i} of the rewards has shape {tuple(g.shape)}; each group must be 1-D")
    if not groups:
        return torch.zeros(0), []
    flat = torch.cat(groups).detach()
    if not flat.is_floating_point():
        flat = flat.float()
    return flat, [g.numel() for g in groups]


def _regroup(flat: Tensor, sizes: list[int], like: Rewards) -> Rewards:
    """Flat [B] values -> the form of `like` (dense [G, n] tensor or list of 1-D tensors)."""
    if isinstance(like, Tensor):
        return flat.view(len(sizes), -1) if sizes else flat.view(0, like.shape[1])
    return list(flat.split(sizes))


def _group_centre(flat: Tensor, sizes: list[int], norm_by_std: bool, eps: float) -> Tensor:
    out = []
    for r in flat.split(sizes):
        centred = r - r.mean() if r.numel() else r
        # A group of one has no spread: its advantage is 0 and there is nothing to divide by.
        if norm_by_std and r.numel() > 1:
            centred = centred / (r.std() + eps)  # unbiased std, as in DeepSeekMath / TRL / verl
        out.append(centred)
    return torch.cat(out) if out else flat


def grpo_advantages(rewards: Rewards, norm_by_std: bool = True, eps: float = 1e-6) -> Rewards:
    """A_i = (r_i - mean(group)) / (std(group) + eps); without std normalization this is Dr.GRPO."""
    flat, sizes = _flatten(rewards)
    return _regroup(_group_centre(flat, sizes, norm_by_std, eps), sizes, rewards)


def drgrpo_advantages(rewards: Rewards) -> Rewards:
    """Dr.GRPO: A_i = r_i - mean(group), no division by the std."""
    return grpo_advantages(rewards, norm_by_std=False)


def rloo_advantages(rewards: Rewards) -> Rewards:
    """A_i = r_i - mean of the other samples of the group = n/(n-1) * (r_i - mean(group))."""
    flat, sizes = _flatten(rewards)
    out = []
    for r in flat.split(sizes):
        n = r.numel()
        out.append((r - (r.sum() - r) / (n - 1)) if n > 1 else torch.zeros_like(r))
    return _regroup(torch.cat(out) if out else flat, sizes, rewards)


def _whiten(values: Tensor, norm_by_std: bool, eps: float, batch_sum: BatchSum | None = None) -> Tensor:
    if batch_sum is None:
        centred = values - values.mean()
        if norm_by_std and values.numel() > 1:
            centred = centred / (values.std(unbiased=False) + eps)
        return centred
    # Over the global batch: two passes of all-reduced float64 sums (mean, then squared deviations),
    # the same statistics one process holding every rank's values computes.
    total, count = batch_sum([values.double().sum().item(), float(values.numel())])
    mean = total / max(count, 1.0)
    centred = values - mean
    if norm_by_std and count > 1:
        (squares,) = batch_sum([(values.double() - mean).square().sum().item()])
        centred = centred / (math.sqrt(squares / count) + eps)
    return centred


def _last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last True of each row of a [B, T] bool mask (0 for rows without any)."""
    T = mask.shape[1]
    return (T - 1 - mask.flip(-1).int().argmax(-1)).where(mask.any(-1), torch.zeros_like(mask[:, 0], dtype=torch.long))


def reinforce_pp_advantages(
    rewards: Rewards,
    *,
    mask: Tensor | None = None,
    token_kl: Tensor | None = None,
    kl_coef: float = 0.0,
    norm_by_std: bool = True,
    subtract_group_mean: bool = False,
    eps: float = 1e-6,
    batch_sum: BatchSum | None = None,
) -> Rewards | Tensor:
    """REINFORCE++: advantages whitened over the whole batch rather than per group.

    With `mask` [B, T] (response tokens; rows in flat sample order), as verl computes it
    (compute_reinforce_plus_plus_outcome_advantage): the token rewards are -kl_coef * kl_t on every response token (`token_kl` [B, T]; no KL
    when None) plus r_i on the last one; the advantage of a token is its return-to-go (gamma = 1),
    whitened over all response tokens of the batch. Returns [B, T] with zeros at padding. Without
    KL every token of sample i carries r_i, so the batch mean and std weigh each sample by its
    length; folding in KL with kl_coef -> 0 tends to exactly this, with no jump.

    Without `mask`: every sample counts once, A_i = (r_i - mean(batch)) / (std(batch) + eps), in
    the form of `rewards` (the token-level result when all responses have the same length).

    `subtract_group_mean` gives "REINFORCE++-baseline": the group mean is removed from r_i first.
    The batch std is the population std (as in OpenRLHF's masked whitening; verl's masked_whiten
    uses Bessel's correction, which scales every advantage by sqrt((N - 1) / N) over N tokens).

    `batch_sum` (data parallel: a sum over the ranks) makes "the batch" the global batch: each rank
    passes its share of the samples and gets their advantages under the global mean and std.
    """
    flat, sizes = _flatten(rewards)
    if subtract_group_mean:
        flat = _group_centre(flat, sizes, norm_by_std=False, eps=eps)
    if mask is None:
        if token_kl is not None:
            raise ValueError("token-level REINFORCE++ needs the response mask [B, T] along with token_kl")
        return _regroup(_whiten(flat, norm_by_std, eps, batch_sum), sizes, rewards)

    if mask.dim() != 2 or mask.shape[0] != flat.numel() or (token_kl is not None and token_kl.shape != mask.shape):
        raise ValueError(
            f"token-level REINFORCE++ needs mask (and token_kl) of shape [B, T] with "
            f"B = {flat.numel()} samples; got mask {tuple(mask.shape)}, "
            f"token_kl {None if token_kl is None else tuple(token_kl.shape)}"
        )
    valid = mask.bool()
    flat = flat.to(valid.device)
    token_rewards = torch.zeros(valid.shape, dtype=flat.dtype, device=valid.device)
    if token_kl is not None:
        token_rewards = torch.where(valid, -kl_coef * token_kl.detach().to(flat.dtype), token_rewards)
    rows = torch.arange(valid.shape[0], device=valid.device)
    token_rewards[rows, _last_valid_index(valid)] += torch.where(valid.any(-1), flat, torch.zeros_like(flat))
    returns = token_rewards.flip(-1).cumsum(-1).flip(-1)
    whitened = _whiten(returns[valid], norm_by_std, eps, batch_sum)
    advantages = torch.zeros_like(returns)
    advantages[valid] = whitened
    return advantages


def compute_advantages(
    cfg: AlgorithmConfig,
    rewards: Rewards,
    *,
    token_kl: Tensor | None = None,
    mask: Tensor | None = None,
    batch_sum: BatchSum | None = None,
) -> Tensor:
    """Advantages for `cfg.advantage`, flat in sample order: [B], or [B, T] for token-level ones.

    `token_kl` [B, T] (from `kl_penalty(logp, ref_logp, cfg.kl_estimator)`, rows in flat sample
    order) and `mask` [B, T] are needed when `cfg.kl_in_reward` and `cfg.kl_coef > 0`. REINFORCE++
    folds the KL per token; the group estimators subtract kl_coef * sum_t kl_t from each sample's
    reward (the sequence-level penalty of RLOO).

    REINFORCE++ is token-level whenever `mask` is given, KL or not (the trainer always passes it),
    so its advantages move continuously as kl_coef goes to 0 or kl_in_reward is switched off.

    `batch_sum`: see :func:`reinforce_pp_advantages` (the group estimators never look past a group).
    """
    flat, sizes = _flatten(rewards)
    if not sizes:
        return flat
    fold_kl = cfg.kl_in_reward and cfg.kl_coef > 0
    if fold_kl and (token_kl is None or mask is None):
        raise ValueError(
            "algorithm.kl_in_reward with kl_coef > 0 needs token_kl and mask: pass "
            "token_kl=kl_penalty(logp, ref_logp, cfg.kl_estimator) and the response mask"
        )
    groups = list(flat.split(sizes))

    if cfg.advantage == "reinforce_pp":
        if mask is not None:
            return cast(
                Tensor,
                reinforce_pp_advantages(
                    groups,
                    mask=mask,
                    token_kl=token_kl if fold_kl else None,
                    kl_coef=cfg.kl_coef,
                    norm_by_std=cfg.norm_adv_by_std,
                    batch_sum=batch_sum,
                ),
            )
        return torch.cat(
            cast(list[Tensor], reinforce_pp_advantages(groups, norm_by_std=cfg.norm_adv_by_std, batch_sum=batch_sum))
        )

    if fold_kl:
        assert token_kl is not None and mask is not None  # checked above
        if token_kl.shape[0] != flat.numel():
            raise ValueError(f"token_kl has {token_kl.shape[0]} rows but there are {flat.numel()} rewards")
        seq_kl = torch.where(mask.bool(), token_kl.detach(), torch.zeros_like(token_kl)).sum(-1)
        groups = list((flat - cfg.kl_coef * seq_kl.to(flat.dtype)).split(sizes))
    if cfg.advantage == "grpo":
        return torch.cat(
            cast(list[Tensor], grpo_advantages(groups, norm_by_std=cfg.norm_adv_by_std))
        )  # a list in, a list out
    if cfg.advantage == "drgrpo":
        return torch.cat(cast(list[Tensor], drgrpo_advantages(groups)))  # a list in, a list out
    if cfg.advantage == "rloo":
        return torch.cat(cast(list[Tensor], rloo_advantages(groups)))  # a list in, a list out
    raise ValueError(f"unknown advantage estimator {cfg.advantage!r}")
