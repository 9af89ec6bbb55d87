"""Frame-sharded vision tower: each sp rank encodes its share of the frames, then one all-gather.

Qwen2.5-VL's vision attention never crosses a temporal patch group (two frames): the full-attention
blocks attend within ``cu_seqlens`` = one group's h*w patches, the window blocks within windows of
one group, and the rotary positions and the 2x2 merger are per group. So the tower run on any
consecutive run of temporal groups (its grid ``[t', h, w]``) computes exactly those groups' rows of
the whole video's output. The ranks split the groups into consecutive runs of about equal patch
counts, encode them, and an all-gather (its backward a reduce-scatter: a rank's frames receive the
gradient every rank's tokens sent them) rebuilds the whole [V, hidden] output on every rank.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from transformers.modeling_outputs import BaseModelOutputWithPooling

from longrl.dist.ulysses import all_gather_autograd

_SHARDS_ATTR = "longrl_frame_shards"  # a frame-sharded tower's FrameShards


@dataclass
class FrameShare:
    """One rank's consecutive temporal groups: input patch rows, merged output rows, their grid."""

    patch_rows: tuple[int, int]  # [start, end) of the tower's input rows (pixel patches)
    merged_rows: tuple[int, int]  # [start, end) of its output rows (merged tokens)
    grid_thw: list[list[int]]  # [t', h, w] per video piece, as the tower takes it (empty: no frames)


def split_frames(grid_thw: list[list[int]], ranks: int, merge: int) -> list[FrameShare]:
    """Consecutive temporal groups of every video (in order) split over ``ranks``, each rank about
    ``1/ranks`` of the patches; a rank gets no frames only when there are fewer groups than ranks."""
    units = [(v, h, w) for v, (t, h, w) in enumerate(grid_thw) for _ in range(t)]  # one per temporal group
    total = sum(h * w for _, h, w in units)
    owner, at = [], 0
    for _, h, w in units:
        owner.append(min(ranks - 1, at * ranks // total))
        at += h * w
    shares, patch, merged = [], 0, 0
    for r in range(ranks):
        grid: list[list[int]] = []
        start_patch, start_merged = patch, merged
        for (v, h, w), o in zip(units, owner):
            if o != r:
                continue
            if grid and grid[-1][3] == v:
                grid[-1][0] += 1
            else:
                grid.append([1, h, w, v])
            patch += h * w
            merged += h * w // (merge * merge)
        shares.append(FrameShare((start_patch, patch), (start_merged, merged), [g[:3] for g in grid]))
    return shares


@dataclass
class FrameShards:
    """The sp group a frame-sharded tower spreads its frames over."""

    group: dist.ProcessGroup

    def __post_init__(self):
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)

    def __deepcopy__(self, memo):  # a copied model (the reference policy) shares the group
        return self


def gather_rows(local: torch.Tensor, shares: list[FrameShare], group: dist.ProcessGroup) -> torch.Tensor:
    """Every rank's output rows, in order; differentiable (backward: a reduce-scatter, then each
    rank keeps its own rows' gradient)."""
    counts = [s.merged_rows[1] - s.merged_rows[0] for s in shares]
    longest = max(counts)
    padded = torch.cat([local, local.new_zeros(longest - local.shape[0], *local.shape[1:])])
    full = funcol.wait_tensor(all_gather_autograd(padded.contiguous(), 0, group))
    return torch.cat([full[r * longest : r * longest + n] for r, n in enumerate(counts)])


def frame_sharded_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
    """The vision tower's forward over this rank's frames, gathered: ``pooler_output`` holds the
    merged embeddings of every frame (as the unsharded tower returns them); ``last_hidden_state``
    (per-patch, window-ordered) is not gathered and is None."""
    shards: FrameShards = getattr(self, _SHARDS_ATTR)
    shares = split_frames(grid_thw.tolist(), shards.size, self.spatial_merge_size)
    if not all(s.grid_thw for s in shares):
        # Fewer temporal groups than ranks: every rank encodes all frames (the same result), so that
        # every rank runs the tower's blocks (under FSDP2 each block's forward is a collective).
        return type(self).forward(self, hidden_states, grid_thw, **kwargs)
    mine = shares[shards.rank]
    start, end = mine.patch_rows
    grid = torch.tensor(mine.grid_thw, dtype=grid_thw.dtype, device=grid_thw.device)
    local = type(self).forward(self, hidden_states[start:end], grid, **kwargs).pooler_output
    gathered = gather_rows(local, shares, shards.group)
    # transformers annotates the field FloatTensor (the legacy CPU float32 class); any float tensor is meant
    return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=gathered)  # type: ignore[arg-type]


def shard_vision_frames(visual: torch.nn.Module, group: dist.ProcessGroup) -> None:
    """Make ``visual`` (a Qwen2.5-VL vision tower) encode its frames sharded over ``group``. Its
    parameters and state dict are untouched (FSDP2 can shard it as before); a deep copy stays
    sharded over the same group."""
    setattr(visual, _SHARDS_ATTR, FrameShards(group))  # nn.Module's __setattr__ is typed for tensors and modules only
    visual.forward = types.MethodType(frame_sharded_forward, visual)
