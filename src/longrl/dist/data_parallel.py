"""What the RL update needs to run data parallel under FSDP2.

FSDP2 all-gathers each unit's parameters in every forward and reduce-scatters its gradients in
every backward, so every dp rank must run the same number of mini-batches and group forwards in
the same order, or the collectives of one rank wait for ones the other never starts. A rank with
less work pads with repeats of its first micro-batch whose loss is scaled by 0 (they add nothing
to the gradients). The loss of a real micro-batch is divided by the normalizer of the *global*
mini-batch (all ranks' tokens or sequences) and scaled by the dp size, because FSDP averages the
ranks' gradients: the sum over ranks is then exactly the single-process gradient of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from longrl.dist import env


def pad_batches(batches: list[list[int]]) -> list[list[int]]:
    """``batches`` with empty ones appended up to the largest count over the dp ranks."""
    return batches + [[] for _ in range(env.max_int(len(batches)) - len(batches))]


def pad_micro_batches(items: list[Any], filler: Any, runs_vision: Callable[[Any], bool]) -> list[tuple[Any, float]]:
    """``(item, loss_scale)`` pairs: this rank's ``items`` with scale dp_size, then ``filler`` with
    scale 0 up to the largest count over the dp ranks. ``runs_vision(item)``: whether the item's
    forward runs the vision tower (its FSDP units then gather too), which must agree across ranks
    at every position, or the ranks' collectives would not pair up."""
    scale = float(env.current().dp_size)
    layouts = env.all_gather_ints([int(runs_vision(item)) for item in items])
    count = max(len(layout) for layout in layouts)
    padded = [layout + [int(runs_vision(filler))] * (count - len(layout)) for layout in layouts]
    if any(len(set(column)) > 1 for column in zip(*padded)):
        raise ValueError(
            "data parallel training of the vision tower (model.train_vision=true) needs every prompt of a step "
            "to have a video, or none; this step mixes video and text-only rows across ranks. Set "
            "model.train_vision=false, or keep video and text-only rows in separate runs"
        )
    return [(item, scale) for item in items] + [(filler, 0.0)] * (count - len(items))


def global_lengths(lengths: Sequence[int]) -> list[int]:
    """Every dp rank's response lengths of the current mini-batch, flat."""
    return [n for part in env.all_gather_ints(list(lengths)) for n in part]


def mean_over_ranks(sums: dict[str, float], count: int) -> dict[str, float]:
    """Each metric's ``sums`` over all dp ranks divided by the ranks' total ``count``: the mean
    over every micro-batch of the step, as one process running them all would report it."""
    keys = sorted(sums)
    totals = env.sum_floats([float(sums[k]) for k in keys] + [float(count)])
    return {k: v / max(totals[-1], 1.0) for k, v in zip(keys, totals)}


def local_value(value: torch.Tensor) -> torch.Tensor:
    """A DTensor result (e.g. ``clip_grad_norm_`` over sharded gradients) as a plain tensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def batch_sum() -> Callable[[list[float]], list[float]] | None:
    """The sum over the dp ranks that batch-normalising estimators (REINFORCE++'s whitening) take,
    so their statistics are the global batch's; None in one process (its own batch, as before)."""
    return env.sum_floats if env.current().dp_size > 1 else None


def global_mean(values: torch.Tensor) -> float:
    """The mean of every dp rank's ``values`` (ragged), as one process holding all of them reports it."""
    if env.current().dp_size == 1:
        return values.mean().item()
    total, count = env.sum_floats([values.double().sum().item(), float(values.numel())])
    return total / max(count, 1.0)
