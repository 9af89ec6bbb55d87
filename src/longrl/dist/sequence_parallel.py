"""``apply_sequence_parallel``: Ulysses over the text decoder and frame sharding of the vision tower,
applied once over a plain model (before FSDP2), so no forward call checks for distribution.

What changes under sp > 1 (every other step runs as on one rank, on every rank of the sp group):

* group forward (training, old and reference log-probs): the packed ``[prefix | r1 ... rn]`` is
  sharded by tokens (``longrl.dist.ulysses``); each rank runs the LM head on the predictor rows it
  holds, and the log-probs are combined so every rank holds all of them and computes the same loss;
* rollout prefill: sharded by tokens chunk by chunk. Decode, ``decode="gathered"`` (default): the
  prefix KV is gathered so every rank holds all of it and decodes as one rank would (the same
  tokens on every rank of the group); ``decode="sharded"``: each rank keeps the KV of its heads,
  attends with them, and one all-gather per layer rebuilds the attention output (1/sp of the KV
  memory and reads per rank). Which is faster is the GPU benchmark's to measure;
* vision tower: frames sharded by temporal patch groups, output all-gathered (``longrl.dist.vision``).

All ranks of an sp group must run the same prompts and responses, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from longrl.dist.ulysses import ATTRIBUTE, Ulysses, check_heads
from longrl.dist.vision import shard_vision_frames
from longrl.models.family import family_of


@dataclass
class SequenceParallelConfig:
    shard_vision: bool = True  # each sp rank encodes its share of the frames (exact); False: every rank encodes all
    # rollout decode: prefix KV gathered on every sp rank, or kept sharded by heads (1/sp of the KV per
    # rank, one all-gather per layer)
    decode: Literal["gathered", "sharded"] = "gathered"


def sp_group(group_or_mesh) -> dist.ProcessGroup:
    """The process group of a ProcessGroup, a 1-D DeviceMesh, or the "sp" dimension of a named mesh."""
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(group_or_mesh, DeviceMesh):
        return group_or_mesh
    mesh = group_or_mesh
    if mesh.ndim == 1:
        return mesh.get_group()
    if "sp" not in (mesh.mesh_dim_names or ()):
        raise ValueError(
            f"the device mesh has dimensions {mesh.mesh_dim_names}, none named 'sp'; "
            "pass mesh['sp'] or name the sequence-parallel dimension 'sp'"
        )
    return mesh["sp"].get_group()


def apply_sequence_parallel(model, group_or_mesh, cfg: SequenceParallelConfig | None = None):
    """Shard ``model`` (a Qwen2.5-VL) by sequence over ``group_or_mesh``; returns the model. A group
    of one rank leaves it as it is."""
    cfg = cfg or SequenceParallelConfig()
    group = sp_group(group_or_mesh)
    size = dist.get_world_size(group)
    if size == 1:
        return model
    family = family_of(model)
    text = family.text_config(model)
    check_heads(size, text.num_attention_heads, text.num_key_value_heads)
    setattr(model, ATTRIBUTE, Ulysses(group, text.num_attention_heads, text.num_key_value_heads, cfg.decode))
    tower = family.vision_tower(model)
    if cfg.shard_vision and tower is not None:
        shard_vision_frames(tower, group)
    return model


def average_gradients(model, group_or_mesh) -> None:
    """Average parameter gradients over the sp group (without FSDP2; FSDP2 over a mesh holding sp
    does this in its reduce-scatter). A parameter that some rank used and another did not (a rank
    without frames for its vision tower) counts as a zero gradient where unused."""
    group = sp_group(group_or_mesh)
    params = [p for p in model.parameters() if p.requires_grad]
    used = torch.tensor(
        [p.grad is not None for p in params], dtype=torch.int32, device=params[0].device if params else "cpu"
    )
    dist.all_reduce(used, group=group)
    size = dist.get_world_size(group)
    for p, n in zip(params, used.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, group=group)  # a sum: gloo has no average
        p.grad /= size
