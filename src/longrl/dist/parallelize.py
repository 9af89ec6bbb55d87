"""``parallelize(model, mesh, cfg)``: sequence parallelism, then FSDP2, applied to a plain model.

torchtitan's layout: every decoder layer and every vision block is its own FSDP2 unit (gathered
for its forward, resharded after, gathered again for its backward), the vision tower's patch
embedding and merger form one unit, and the root unit holds the token embeddings, the final norm
and the LM head (gathered for a whole forward and backward).

longrl's group forward and rollout do not call ``nn.Module.forward`` everywhere: the group forward
runs each decoder layer as a function of its weights, and the LM head is read as a weight. So two
methods are registered as FSDP2 forward methods (``register_fsdp_forward_method``): each layer's
``longrl_group_layer`` (the group forward calls it) and the root's ``longrl_root_forward`` (every
log-prob computation enters through it, see ``root_forward``). Rollout reads the weights directly:
:func:`gathered` unshards every unit for the duration of ``generate`` and reshards after, so
rollout runs the very parameters the optimizer updates, with no second copy and no weight sync.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from types import MethodType
from typing import Literal, cast

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from longrl.config_utils import ConfigError
from longrl.dist.config import DistConfig
from longrl.models.decoder import decoder_layer
from longrl.models.family import family_of

ROOT_METHOD = "longrl_root_forward"
LAYER_METHOD = "longrl_group_layer"
_RESHARD_ATTR = "_longrl_reshard_after_forward"
log = logging.getLogger("longrl.dist")


def parallelize(model: nn.Module, mesh: DeviceMesh | None, cfg: DistConfig) -> nn.Module:
    """Apply the parallelisms of ``cfg`` to ``model`` in place and return it. Sequence parallelism
    comes first (it changes how attention and the vision tower run), FSDP2 after (it wraps what
    is there). A single process (``mesh`` None) gets the model back unchanged. Build the optimizer
    after this call: FSDP2 replaces the parameters with sharded DTensors."""
    if mesh is None:
        return model
    if cfg.cpu_offload and mesh.device_type != "cuda":
        raise ConfigError(
            "dist.cpu_offload=true offloads GPU training state to host memory; on CPU it already "
            "lives there: set dist.cpu_offload=false"
        )
    if cfg.sp > 1:
        apply_sp(model, mesh["sp"], cfg)
    if cfg.fsdp and mesh.size() > 1:
        apply_fsdp(model, fsdp_mesh(mesh), cfg)
    return model


def apply_sp(model: nn.Module, mesh: DeviceMesh, cfg: DistConfig) -> None:
    """Ulysses over the text decoder and the frame-sharded vision tower, over the sp ranks; a degree
    the model's heads cannot split is a config error naming ``dist.sp``."""
    from longrl.dist.sequence_parallel import SequenceParallelConfig, apply_sequence_parallel
    from longrl.dist.ulysses import check_heads

    text = family_of(model).text_config(model)
    try:
        check_heads(cfg.sp, text.num_attention_heads, text.num_key_value_heads)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    decode = cast(Literal["gathered", "sharded"], cfg.sp_decode)  # DistConfig.resolved checked it
    apply_sequence_parallel(model, mesh, SequenceParallelConfig(shard_vision=cfg.sp_shard_vision, decode=decode))
    if torch.distributed.get_rank() == 0:
        which = "the model" if any(p.requires_grad for p in model.parameters()) else "the frozen model"
        log.info(
            "sequence parallel over %d ranks for %s: packed groups and prefill sharded by tokens (Ulysses), "
            "vision frames %s, decode %s",
            cfg.sp,
            which,
            "sharded" if cfg.sp_shard_vision else "replicated",
            cfg.sp_decode,
        )


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh FSDP2 shards over: every rank (dp x sp flattened). Its gradient reduction then
    averages over the sp ranks too, which sequence parallelism's gradient convention needs (each sp
    rank holds the gradient of its tokens, scaled by sp), and over the dp ranks (whose losses are
    scaled by dp, ``longrl.dist.data_parallel``)."""
    dp, sp = mesh["dp"].size(), mesh["sp"].size()
    if sp == 1:
        return mesh["dp"]
    if dp == 1:
        return mesh["sp"]
    return mesh["dp", "sp"]._flatten("dp_sp")


def mixed_precision(model: nn.Module, device_type: str):
    """bf16 compute with fp32 master weights and fp32 gradient reduction when a trainable model was
    loaded in bf16 on a GPU (``model.dtype=auto``); otherwise the model's own dtype throughout (fp32
    on CPU, a model loaded in fp32, a frozen reference model)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = next(model.parameters()).dtype
    trainable = any(p.requires_grad for p in model.parameters())  # a frozen reference model keeps bf16 storage
    if device_type == "cuda" and trainable and dtype in (torch.bfloat16, torch.float16):
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, cfg: DistConfig) -> None:
    """FSDP2 ``fully_shard`` per vision block, the vision tower, per decoder layer, and the root."""
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    mp = mixed_precision(model, mesh.device_type)
    if mp.param_dtype is not None:
        model.to(torch.float32)  # the sharded parameters are the fp32 master weights
    common = dict(mesh=mesh, mp_policy=mp, offload_policy=CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy())

    def shard(module: nn.Module, reshard: bool) -> FSDPModule:
        sharded = fully_shard(module, reshard_after_forward=reshard, **common)  # ``module``, now an FSDPModule
        setattr(module, _RESHARD_ATTR, reshard)
        return sharded

    family = family_of(model)
    visual = family.vision_tower(model)
    if visual is not None:
        for block in visual.blocks:
            shard(block, cfg.reshard_after_forward)
        shard(visual, cfg.reshard_after_forward)  # patch embedding and merger
    for layer in family.decoder(model).layers:
        setattr(layer, LAYER_METHOD, MethodType(decoder_layer, layer))
        shard(layer, cfg.reshard_after_forward)
        register_fsdp_forward_method(layer, LAYER_METHOD)
    # The root keeps its parameters gathered from its forward through its backward (FSDP2's rule
    # for the root, whose embeddings and head are needed at both ends of the pass).
    setattr(model, ROOT_METHOD, MethodType(_call_with_module, model))
    root = shard(model, False)
    register_fsdp_forward_method(model, ROOT_METHOD)
    # One empty pass through the root makes it FSDP2's root (lazy init names the root as the first
    # unit to run forward; here a vision block or a layer could otherwise run first and claim it).
    getattr(model, ROOT_METHOD)(lambda module: None)
    root.reshard()


def _call_with_module(module: nn.Module, fn: Callable, *args, **kwargs):
    return fn(module, *args, **kwargs)


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, ROOT_METHOD)


def root_forward(model: nn.Module, fn: Callable, *args, **kwargs):
    """``fn(model, *args, **kwargs)``, entered through the FSDP2 root when ``model`` is sharded, so
    the root's parameters (embeddings, final norm, LM head) are gathered for it and its gradients
    are reduce-scattered after the backward."""
    method = getattr(model, ROOT_METHOD, None)
    if method is None:
        return fn(model, *args, **kwargs)
    with warnings.catch_warnings():  # log-probs are split views of one tensor; nothing edits them in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        return method(fn, *args, **kwargs)


def _units(model: nn.Module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(*models: nn.Module) -> Iterator[None]:
    """Every FSDP2 unit of ``models`` unsharded for the block and kept so across forwards (rollout,
    reference log-probs: no collective runs inside, so ranks may do different amounts of work),
    resharded on exit. A plain model passes through untouched."""
    units = [u for model in models for u in _units(model)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(getattr(unit, _RESHARD_ATTR), recurse=False)
