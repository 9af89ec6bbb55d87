"""DAPO's dynamic sampling and soft overlong punishment.

Dynamic sampling: a group whose samples all got the same reward has zero advantage everywhere and
only dilutes the batch, so it is dropped and more prompts are generated until the batch holds
`target_groups` informative groups, or `max_tries` generation rounds were spent. The trainer drives
it:

    filler = BatchFiller(target_groups=batch_prompts, max_tries=cfg.max_tries)
    while not filler.done:
        groups = generate_and_score(next_prompts())
        filler.add(groups, rewards=[g.rewards for g in groups])
    batch = filler.take()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger("longrl.rl")


def keep_informative_groups(rewards_per_group: Tensor | Sequence[Tensor], atol: float = 1e-6) -> Tensor:
    """Bool [G]: True for groups whose rewards are not all equal (within `atol`).

    `rewards_per_group` is a dense [G, n] tensor or a list of 1-D tensors (ragged groups).
    """
    groups = list(rewards_per_group.unbind(0)) if isinstance(rewards_per_group, Tensor) else rewards_per_group
    keep = [bool(g.numel() > 1 and (torch.as_tensor(g).max() - torch.as_tensor(g).min()) > atol) for g in groups]
    return torch.tensor(keep, dtype=torch.bool)


class BatchFiller:
    """Collects informative groups over several generation rounds (DAPO dynamic sampling).

    Each `add` call is one try (one generation round). `done` once `target_groups` groups are held
    or `max_tries` rounds were added. `take` returns exactly `target_groups` groups when enough
    were found (the surplus is discarded, as in DAPO), else every group it holds, and resets the
    filler for the next step.
    """

    def __init__(self, target_groups: int, max_tries: int):
        if target_groups < 1 or max_tries < 1:
            raise ValueError(
                f"BatchFiller needs target_groups >= 1 and max_tries >= 1; got {target_groups} and {max_tries}"
            )
        self.target_groups = target_groups
        self.max_tries = max_tries
        self._reset()

    def _reset(self) -> None:
        self.groups: list[Any] = []
        self.tries = 0
        self.num_generated = 0  # groups seen this step
        self.num_dropped = 0  # of which uninformative

    def add(self, groups: Sequence[Any], rewards: Tensor | Sequence[Tensor] | None = None) -> None:
        """One generation round. With `rewards` (one row/tensor per group), groups whose rewards are
        all equal are dropped here; without, `groups` are taken as already filtered."""
        self.tries += 1
        self.num_generated += len(groups)
        if rewards is not None:
            keep = keep_informative_groups(rewards)
            if keep.numel() != len(groups):
                raise ValueError(f"BatchFiller.add got {len(groups)} groups but rewards for {keep.numel()}")
            kept = [g for g, k in zip(groups, keep.tolist()) if k]
        else:
            kept = list(groups)
        self.num_dropped += len(groups) - len(kept)
        self.groups.extend(kept)

    @property
    def done(self) -> bool:
        return len(self.groups) >= self.target_groups or self.tries >= self.max_tries

    def take(self) -> list[Any]:
        if not self.done:
            raise RuntimeError(
                f"BatchFiller.take() before done: {len(self.groups)}/{self.target_groups} "
                f"groups after {self.tries}/{self.max_tries} tries; keep calling add()"
            )
        batch = self.groups[: self.target_groups]
        message = "dynamic sampling: %d/%d informative groups after %d tries (%d generated, %d dropped as all-equal)"
        args = (len(batch), self.target_groups, self.tries, self.num_generated, self.num_dropped)
        if len(batch) < self.target_groups:
            logger.warning(message + "; training on a smaller batch", *args)
        else:
            logger.info(message, *args)
        self._reset()
        return batch


def overlong_penalty(lengths: Tensor | Sequence[int], max_len: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment as a penalty to SUBTRACT from the reward: float [B] in [0, penalty].

    0 up to max_len - buffer tokens, then rising linearly to `penalty` at max_len, and `penalty`
    beyond (DAPO's R_length is minus this). buffer = 0 turns it off (all zeros).
    """
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    if buffer == 0:
        return torch.zeros_like(lengths)
    if not 0 < buffer < max_len:
        raise ValueError(
            f"algorithm.overlong_buffer={buffer} must be below the maximum response length "
            f"{max_len} (DAPO uses 20% of it: try {max(1, max_len // 5)}), or 0 to turn it off"
        )
    start = max_len - buffer
    return ((lengths - start).clamp(min=0) / buffer).clamp(max=1.0) * penalty
