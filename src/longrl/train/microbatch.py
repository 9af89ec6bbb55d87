"""Token-budget micro-batching (dynamic batch) and the helpers gradient accumulation needs.

A mini-batch of groups is split into micro-batches whose packed token counts stay under a budget;
each micro-batch's loss is normalized by the token count of the WHOLE mini-batch (pass it as
``normalizer`` to ``longrl.rl.losses.policy_loss``), so the accumulated gradient equals the
gradient of the unsplit mini-batch's token mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def split_by_token_budget(items: Sequence[Any], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Partition ``items`` (by index) into micro-batches of total ``sizes`` at most ``budget``.

    First-fit decreasing: the largest item goes first into the first micro-batch with room; an
    item larger than the budget gets a micro-batch of its own. Deterministic; indices within a
    micro-batch are ascending and micro-batches are ordered by their first index."""
    if len(items) != len(sizes):
        raise ValueError(f"got {len(items)} items but {len(sizes)} sizes")
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for b, load in enumerate(loads):
            if load + sizes[i] <= budget:
                bins[b].append(i)
                loads[b] += sizes[i]
                break
        else:
            bins.append([i])
            loads.append(sizes[i])
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


def split_group(prefix_len: int, response_lens: Sequence[int], budget: int) -> list[list[int]]:
    """Split one group's responses into sub-groups whose packed length ``prefix_len + sum(R_i)``
    fits ``budget``; each sub-group runs its own group forward (the prefix once per sub-group).
    A single response always forms a sub-group, even if it alone exceeds the budget."""
    room = max(budget - prefix_len, 1)
    return split_by_token_budget(list(response_lens), list(response_lens), room)


def pad_ragged(values: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n ragged tensors [R_i] -> (padded [n, max R], mask [n, max R] bool), as the losses take."""
    if not values:
        raise ValueError("pad_ragged needs at least one tensor")
    longest = max(v.numel() for v in values)
    padded = values[0].new_full((len(values), longest), pad_value)
    mask = torch.zeros(len(values), longest, dtype=torch.bool, device=values[0].device)
    for i, v in enumerate(values):
        padded[i, : v.numel()] = v
        mask[i, : v.numel()] = True
    return padded, mask


def accumulation_normalizer(loss_agg: str, response_lens: Sequence[int]) -> float:
    """What one mini-batch's loss divides by, to pass as every micro-batch's ``normalizer``:
    its total response tokens for ``token_mean``, its number of non-empty responses otherwise."""
    if loss_agg == "token_mean":
        return float(sum(response_lens))
    return float(sum(1 for n in response_lens if n > 0))
