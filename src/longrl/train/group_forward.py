"""Group forward: one prompt prefix and its n responses in one packed sequence.

Layout ``[prefix | r1 | r2 | ... | rn]`` (batch 1). Response i attends to the whole prefix and to
its own causal past, never to another response; its M-RoPE positions continue from the end of the
prefix (every response starts at ``prompt.next_position``). So each response sees exactly what it
would see as the separate sequence ``[prefix | ri]``, while the prefix (the long video) runs
through the decoder once instead of n times.

Attention backends (:class:`GroupAttention`):

* ``"dense"``: SDPA with a boolean [T, T] mask. Works everywhere, costs (P + nR)^2; used on CPU
  (flex_attention has no CPU backward) and in tests.
* ``"hybrid"``: causal SDPA (flash) over the prefix rows, flex_attention (compiled, Triton; a block
  mask built from the layout, so fully masked 128x128 blocks are skipped) for the response rows
  only: the long causal part runs on the fastest kernel, the responses skip blocks. The fastest
  measured on GPU (notes/train.md), the default there for groups of at least DENSE_BELOW tokens.
* ``"split"``: no compiler needed: causal SDPA over the prefix, then the n responses as a batch,
  each attending to [prefix | own past] with a bottom-right-aligned causal mask (flash kernels).
  Same cost as hybrid's responses, but the prefix K/V are copied once per response per layer.

flex_attention over the whole group (one block mask for prefix and responses) measured slower than
hybrid (F=128: 1.462 against 1.311 s; F=512: 12.29 against 9.73 s; every layer checkpointed, H100;
notes/train.md) and left the code. ``split`` stays as the backend that needs no compiler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from longrl.dist.ulysses import sequence_parallel
from longrl.models.adapter import decoder_forward, prompt_embeds
from longrl.models.attention import AttentionLayout
from longrl.models.decoder import decoder_layer, layer_functions, unfusable_reason  # the layer math rollout runs too
from longrl.models.family import family_of
from longrl.models.inputs import Prompt

Backend = Literal["auto", "dense", "hybrid", "split"]
FLEX_BLOCK = 128
# Packed groups shorter than this use the dense mask on CUDA too: its [T, T] mask is small there, and
# inductor (torch 2.11) could not lower flex_attention's backward for a tiny model's short text groups
# (NoValidChoicesError on an H200, q [1, 4, 73, 64]; notes/gpu_latest.md, 2026-12-02).
DENSE_BELOW = 2048


@dataclass
class GroupPacking:
    """Where each piece of ``[prefix | r1 | ... | rn]`` lies in the packed sequence."""

    prefix_len: int
    response_lens: list[int]

    @property
    def total_len(self) -> int:
        return self.prefix_len + sum(self.response_lens)

    @cached_property
    def response_starts(self) -> list[int]:
        starts, at = [], self.prefix_len
        for n in self.response_lens:
            starts.append(at)
            at += n
        return starts

    def segment_ids(self, device: torch.device | str = "cpu", pad_to: int | None = None) -> torch.Tensor:
        """int32 [T]: 0 for prefix tokens, i+1 for tokens of response i, -1 for padding."""
        seg = torch.zeros(pad_to or self.total_len, dtype=torch.int32, device=device)
        seg[self.total_len :] = -1
        for i, (start, n) in enumerate(zip(self.response_starts, self.response_lens)):
            seg[start : start + n] = i + 1
        return seg

    def predictor_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """long [sum R_i]: packed position whose hidden state predicts each response token.

        Token 0 of every response is predicted by the last prefix position; token t > 0 by the
        response's own token t - 1."""
        parts = []
        for start, n in zip(self.response_starts, self.response_lens):
            parts.append(torch.tensor([self.prefix_len - 1]))
            parts.append(torch.arange(start, start + n - 1))
        return torch.cat(parts).to(device)

    def dense_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [T, T], True where query (row) may attend to key (column)."""
        seg = self.segment_ids(device)
        pos = torch.arange(self.total_len, device=device)
        causal = pos[None, :] <= pos[:, None]
        visible = (seg[None, :] == 0) | (seg[None, :] == seg[:, None])
        return causal & visible


def group_mask_mod(seg: torch.Tensor, q_start: int = 0):
    """flex_attention mask_mod of the group layout over segment ids ``seg`` (see GroupPacking);
    query index i stands for packed row ``q_start + i``."""

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + q_start
        kv_seg = seg[kv_idx]
        return (kv_idx <= q) & (kv_seg >= 0) & ((kv_seg == 0) | (kv_seg == seg[q]))

    return mask_mod


def group_block_counts(
    packing: GroupPacking, block: int = FLEX_BLOCK, device="cpu", q_start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (query block, key block): how many (q, kv) pairs the layout allows, and how many exist.
    Query blocks cover packed rows [q_start, T); key blocks cover [0, T).

    Row q of segment s may see keys [0, min(P, q+1)) and, if s > 0, [start_s, q+1): two intervals,
    so counts come from interval overlaps in O(T * blocks) without a [T, T] mask."""
    T, P = packing.total_len, packing.prefix_len
    nk, nq = -(-T // block), -(-(T - q_start) // block)
    q = torch.arange(q_start, T, device=device)
    seg = packing.segment_ids(device).long()[q_start:]
    starts = torch.tensor([P] + packing.response_starts, device=device)[seg]  # own segment start
    k0 = torch.arange(nk, device=device) * block
    k1 = (k0 + block).clamp(max=T)

    def overlap(lo, hi):  # intervals [lo, hi) per row vs every key block -> [rows, nk]
        return (torch.minimum(hi[:, None], k1[None]) - torch.maximum(lo[:, None], k0[None])).clamp(min=0)

    prefix_hi = torch.minimum(q + 1, torch.full_like(q, P))
    own_lo = torch.where(seg > 0, starts, q + 1)  # prefix rows: the first interval covers it all
    allowed = overlap(torch.zeros_like(q), prefix_hi) + overlap(own_lo, q + 1)
    allowed = F.pad(allowed, (0, 0, 0, nq * block - q.numel())).view(nq, block, nk).sum(1)
    rows = (torch.arange(1, nq + 1, device=device) * block).clamp(max=T - q_start) - torch.arange(
        nq, device=device
    ) * block
    total = rows[:, None] * (k1 - k0)[None, :]  # the last blocks may be short
    return allowed, total


def group_block_mask(packing: GroupPacking, device, block: int = FLEX_BLOCK, q_start: int = 0):
    """flex_attention BlockMask for query rows [q_start, T) over keys [0, T): fully visible blocks
    skip mask_mod, fully masked ones are skipped."""
    from torch.nn.attention.flex_attention import BlockMask

    allowed, total = group_block_counts(packing, block, device, q_start)
    full = allowed == total
    partial = (allowed > 0) & ~full

    def to_indices(sel: torch.Tensor):
        num = sel.sum(-1, dtype=torch.int32)
        # stable sort puts selected block columns first, in ascending order
        idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[None, None], idx[None, None]

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    T = packing.total_len
    # padded with -1 to whole blocks, so mask_mod never indexes past the end in a partial block
    nk, nq = -(-T // block), -(-(T - q_start) // block)
    seg = packing.segment_ids(device, pad_to=max(nk * block, q_start + nq * block))
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=group_mask_mod(seg, q_start),
        seq_lengths=(T - q_start, T),
    )


def hybrid_attention(packing: GroupPacking, block_mask, query, key, value, scaling) -> torch.Tensor:
    """Causal SDPA (flash) over the prefix rows, flex_attention for the response rows over all keys
    (block mask from ``group_block_mask(..., q_start=P)``). Inputs [1, H, T, D]; output [1, Hq, T, D]."""
    P = packing.prefix_len
    gqa = query.shape[1] != key.shape[1]
    prefix_out = F.scaled_dot_product_attention(
        query[:, :, :P], key[:, :, :P], value[:, :, :P], is_causal=True, scale=scaling, enable_gqa=gqa
    )
    resp_out = _flex_attention()(query[:, :, P:], key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)
    return _cat_rows(prefix_out, resp_out)


def _cat_rows(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate [1, H, L_i, D] pieces along L into a tensor stored as [1, T, H, D] (returned as its
    [1, H, T, D] view): the layer's ``transpose(1, 2).contiguous()`` is then free, one copy instead of two."""
    return torch.cat([p.transpose(1, 2) for p in parts], dim=1).transpose(1, 2)


_compiled_flex = None


def _flex_attention():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        # default (automatic) dynamic shapes: the first new shape recompiles once with symbolic
        # lengths, later groups reuse it; dynamic=False would recompile for every group's length
        # until the recompile limit, then fall back to the eager flex that materializes all scores
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


@dataclass
class GroupAttention(AttentionLayout):
    """The group layout as an :class:`AttentionLayout`; the mask is built once, shared by layers."""

    packing: GroupPacking
    backend: Backend = "auto"
    _cache: dict = field(default_factory=dict, repr=False)

    def resolved_backend(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        if device.type != "cuda" or self.packing.total_len < DENSE_BELOW:
            return "dense"
        return "hybrid"  # fastest measured on H100 (notes/train.md)

    def attend(self, module, query, key, value, scaling):
        backend = self.resolved_backend(query.device)
        if backend == "dense":
            if "dense" not in self._cache:
                self._cache["dense"] = self.packing.dense_mask(query.device)
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=self._cache["dense"],
                scale=scaling,
                enable_gqa=query.shape[1] != key.shape[1],
            )
        elif backend == "hybrid":
            if "hybrid_mask" not in self._cache:
                self._cache["hybrid_mask"] = group_block_mask(
                    self.packing, query.device, q_start=self.packing.prefix_len
                )
            out = hybrid_attention(self.packing, self._cache["hybrid_mask"], query, key, value, scaling)
        elif backend == "split":
            out = split_attention(self.packing, query, key, value, scaling)
        else:
            raise ValueError(f"unknown group attention backend {backend!r}; use auto, dense, hybrid or split")
        return out.transpose(1, 2).contiguous()


def split_attention(packing: GroupPacking, query, key, value, scaling) -> torch.Tensor:
    """The group layout from two dense attentions: causal over the prefix, and the responses
    (padded to one length, batched) over [prefix | own]. Inputs [1, H, T, D]; output [1, Hq, T, D]."""
    from torch.nn.attention.bias import causal_lower_right

    P, lens = packing.prefix_len, packing.response_lens
    n, longest = len(lens), max(lens)
    groups = query.shape[1] // key.shape[1]
    prefix_out = F.scaled_dot_product_attention(
        query[:, :, :P], key[:, :, :P], value[:, :, :P], is_causal=True, scale=scaling, enable_gqa=groups > 1
    )
    # response token j of response i sits at packed position start_i + j; pads repeat a real index
    # (their rows and keys come after every real token of the response, so no real query sees them)
    j = torch.arange(longest, device=query.device)
    starts = torch.tensor(packing.response_starts, device=query.device)
    index = starts[:, None] + torch.minimum(j[None], torch.tensor(lens, device=query.device)[:, None] - 1)

    def responses(x):  # [1, H, T, D] -> [n, H, longest, D]
        return x[0][:, index].transpose(0, 1)

    def with_prefix(x):  # [1, Hkv, T, D] -> [n, Hq, P + longest, D]
        x = torch.cat([x[:, :, :P].expand(n, -1, -1, -1), responses(x)], dim=2)
        return x.repeat_interleave(groups, dim=1) if groups > 1 else x

    resp_out = F.scaled_dot_product_attention(
        responses(query),
        with_prefix(key),
        with_prefix(value),
        attn_mask=causal_lower_right(longest, P + longest),
        scale=scaling,
    )
    real = j[None] < torch.tensor(lens, device=query.device)[:, None]  # [n, longest]
    resp_out = resp_out.transpose(1, 2)[real]  # [sum R, Hq, D], in packed order
    return _cat_rows(prefix_out, resp_out.permute(1, 0, 2)[None])


def pack_group(model, prompt: Prompt, responses: list[torch.Tensor], *, train_vision: bool = False):
    """Input embeddings [1, T, H], M-RoPE positions [3, 1, T] and packing of ``[prefix | r1 | ... | rn]``.

    With ``train_vision`` the vision tower re-encodes the video once, with gradients, for the
    whole group."""
    if not responses:
        raise ValueError("pack_group needs at least one response")
    for i, r in enumerate(responses):
        if r.ndim != 1 or r.numel() == 0:
            raise ValueError(f"response {i} must be a non-empty 1-D tensor of token ids, got shape {tuple(r.shape)}")
    device = prompt.input_ids.device
    prefix = prompt_embeds(model, prompt, grad_through_vision=train_vision)
    tokens = torch.cat([r.to(device) for r in responses])
    embeds = torch.cat([prefix, model.get_input_embeddings()(tokens)])
    positions = torch.cat([prompt.position_ids] + [prompt.response_positions(r.numel()) for r in responses], dim=1)
    packing = GroupPacking(len(prompt), [int(r.numel()) for r in responses])
    return embeds[None], positions[:, None], packing


# ---- the decoder layers of the group forward ------------------------------------------------------
#
# The group forward runs the text decoder's layers itself: each layer is two pure functions of
# (activations, weights) around the layout's attention -- models.decoder's pre_attention and
# post_attention, the same functions the rollout prefill runs (models.decoder.decoder_layer). On CUDA both are compiled once with
# torch.compile and serve all 36 layers (the weights are arguments, so one graph fits every layer):
# RMSNorm, q/k/v bias and rotary become one or two fused kernels, SwiGLU and the residual adds
# likewise, and the backward is fused too. Profiled eagerly these small ops were ~20% of the step
# (notes/train.md). The functions compute exactly what transformers' Qwen2.5-VL layer computes (same
# op order; the CPU tests check the group forward through them against transformers' own layers
# run per sequence, fp32, 1e-5).

LayerImpl = Literal["auto", "hf", "eager", "compiled"]


def resolved_layers(layers: LayerImpl, device: torch.device, text_model) -> str:
    if layers == "hf":
        return "hf"
    if layers not in ("auto", "eager", "compiled"):
        raise ValueError(f"unknown layer implementation {layers!r}; use auto, hf, eager or compiled")
    if unfusable_reason(text_model.config, text_model.layers) is not None:
        return "hf"
    if layers == "auto":
        return "compiled" if device.type == "cuda" else "eager"
    return layers


# ---- how many layers to checkpoint ------------------------------------------------------------------


def kept_layer_bytes(text_config, tokens: int, dtype_bytes: int) -> int:
    """Activations one non-checkpointed layer keeps for backward, over ``tokens`` packed tokens, as
    the compiled layer functions save them: the layer input, both RMSNorm outputs, q, k, v, the
    attention output, the post-attention residual, and the MLP's gate, up and SwiGLU product =
    7 d + 2 kv + 3 intermediate per token, +5% (46.1k bf16 values per token read off the saved
    tensors on an H100, `bench train`'s groups).

    An estimate only: in the F=512 GRPO step on an H200 (`bench step`, 8 responses of 128 tokens;
    torch 2.11, 2026-12-02) the first kept layer held 8.33 GiB at 66,622 tokens, 67.1k values per
    token, 1.33x this, while `bench train`'s 512-frame groups peaked as this predicts. So
    ``group_hidden`` measures the first kept layer and plans the later ones again when the estimate
    is short (:func:`replan_after_kept_layer`), rather than a larger constant that would keep fewer
    layers where the estimate is right."""
    d, inter = text_config.hidden_size, text_config.intermediate_size
    kv = text_config.num_key_value_heads * (d // text_config.num_attention_heads)
    return int(1.05 * tokens * dtype_bytes * (7 * d + 2 * kv + 3 * inter))


def plan_checkpointing(flagged: list[bool], kept: int, checkpointed: int, available: int) -> list[bool]:
    """Which layers to checkpoint: of the ``flagged`` ones, the first as few as fit ``available``
    bytes, when a kept layer costs ``kept`` bytes and a checkpointed one ``checkpointed`` (its
    input). One kept layer's worth stays free for backward: the kept layers are the last ones, so
    backward frees them before it recomputes a checkpointed layer (which then needs ``kept``), and
    a kept layer's own backward temporaries (gate/up, q/k/v gradients) are smaller than that.
    Unflagged layers always keep their activations."""
    n = sum(flagged)
    always = len(flagged) - n
    room = available - always * kept - n * checkpointed - kept
    keep = max(0, min(n, room // max(kept - checkpointed, 1)))
    out, to_checkpoint = [], n - keep
    for f in flagged:
        out.append(f and to_checkpoint > 0)
        to_checkpoint -= int(f)
    return out


@dataclass
class ActivationBudget:
    """The bytes the group forward's activations may take, and what was set aside for the rest of the update.

    Resident memory (both models' weights, the AdamW state, gradients already allocated, rollout
    leftovers still referenced) is already out of ``usable``; set aside from it: gradients that
    backward will still allocate, the LM head's chunk working set in backward (``head``), the final
    RMSNorm's saved tensors over every packed token (``final_norm``), and a ``margin``."""

    usable: int  # driver-free bytes + cached blocks the allocator can release whole
    missing_grads: int
    head: int
    final_norm: int
    margin: int

    @property
    def available(self) -> int:
        return self.usable - self.missing_grads - self.head - self.final_norm - self.margin


def activation_budget(
    *,
    driver_free: int,
    total: int,
    reserved: int,
    allocated: int,
    inactive_split: int,
    missing_grads: int,
    tokens: int,
    response_tokens: int,
    hidden_size: int,
    vocab: int,
    chunk_tokens: int = 1024,
) -> ActivationBudget:
    """:class:`ActivationBudget` from allocator numbers (``torch.cuda.mem_get_info`` and ``memory_stats``).

    Cached blocks count as usable only when the allocator can release them whole: a free piece of a
    segment that still holds live tensors (``inactive_split``) is left out, since a large activation
    rarely fits it (the F=512 step on an H200 ran out of memory asking for a 262 MiB [T, d] tensor
    while the planner had counted such pieces as free). The LM head's backward recomputes one chunk
    of [chunk, vocab] logits and, with the entropy, holds about six fp32 and one bf16 copy of it
    (logits, softmax, their product, and the gradients of each); the final RMSNorm keeps its fp32
    input and its bf16 normalized output for all ``tokens`` rows."""
    cached_whole = max(0, reserved - allocated - inactive_split)
    head = min(response_tokens, chunk_tokens) * vocab * (6 * 4 + 2)
    final_norm = tokens * hidden_size * (4 + 2)
    margin = 2 * 2**30 + total // 20
    return ActivationBudget(driver_free + cached_whole, missing_grads, head, final_norm, margin)


def _activation_budget(model, device: torch.device, tokens: int, response_tokens: int) -> ActivationBudget:
    driver_free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad and p.grad is None)
    cfg = family_of(model).text_config(model)
    return activation_budget(
        driver_free=driver_free,
        total=total,
        reserved=torch.cuda.memory_reserved(device),
        allocated=torch.cuda.memory_allocated(device),
        inactive_split=stats.get("inactive_split_bytes.all.current", 0),
        missing_grads=grads,
        tokens=tokens,
        response_tokens=response_tokens,
        hidden_size=cfg.hidden_size,
        vocab=cfg.vocab_size,
    )


def replan_after_kept_layer(
    flags: list[bool], flagged: list[bool], index: int, measured: int, estimate: int, checkpointed: int, room: int
) -> list[bool]:
    """The plan, corrected once layer ``index`` (kept) has run: when it kept more than ``estimate``
    (``measured`` bytes), the layers after it are planned again with the measured size over the
    ``room`` left (the same rule as :func:`plan_checkpointing`, so one kept layer's worth stays
    free for backward). Layers already run keep their choice; a smaller measured size changes
    nothing (every later layer is kept already: checkpointed layers come first)."""
    if measured <= estimate or index + 1 >= len(flags):
        return flags
    return flags[: index + 1] + plan_checkpointing(flagged[index + 1 :], measured, checkpointed, room)


def flagged_layers(model) -> list[bool]:
    """Per decoder layer: flagged by (transformers') gradient checkpointing, and in effect now
    (training mode, grad enabled)."""
    on = model.training and torch.is_grad_enabled()
    return [
        bool(getattr(layer, "gradient_checkpointing", False)) and on for layer in family_of(model).decoder(model).layers
    ]


def checkpoint_flags(model, tokens: int, response_tokens: int, device: torch.device, elem: int) -> list[bool]:
    """Per decoder layer: recompute it in backward? Layers flagged by (transformers') gradient
    checkpointing, in training mode with grad enabled; on CUDA with adaptive checkpointing (the
    default) only as many of them as the free memory needs. The plan's numbers are left in the text
    model's ``longrl_checkpoint_plan`` (bytes), for ``group_hidden`` to correct and benches to report.
    ``elem``: bytes per activation element (the packed embeddings' dtype)."""
    family = family_of(model)
    text = family.decoder(model)
    flagged = flagged_layers(model)
    text.longrl_checkpoint_plan = None
    if not any(flagged) or device.type != "cuda" or not getattr(text, "longrl_adaptive_checkpointing", True):
        return flagged
    cfg = family.text_config(model)
    kept = kept_layer_bytes(cfg, tokens, elem)
    budget = _activation_budget(model, device, tokens, response_tokens)
    flags = plan_checkpointing(flagged, kept, tokens * cfg.hidden_size * elem, budget.available)
    allocated = torch.cuda.memory_allocated(device)
    text.longrl_checkpoint_plan = dict(
        flagged=flagged,
        allocated=allocated,
        limit=allocated + budget.available,
        kept_estimate=kept,
        checkpointed_bytes=tokens * cfg.hidden_size * elem,
        budget=dataclasses.asdict(budget),
        available=budget.available,
        planned_checkpointed=sum(flags),
        kept_measured=None,
        replanned=False,
    )
    return flags


def group_hidden(
    model,
    prompt: Prompt,
    responses: list[torch.Tensor],
    *,
    train_vision: bool = False,
    backend: Backend = "auto",
    layers: LayerImpl = "auto",
    stats: dict | None = None,
) -> tuple[torch.Tensor, GroupPacking]:
    """Final hidden states [T, H] of the packed group, and its packing. Under sequence parallelism
    (``longrl.dist``) the rows this rank holds: ``sequence_parallel(model).local_rows`` maps
    packed rows to them.

    ``layers``: "compiled" (longrl's fused layer functions under torch.compile; the CUDA default),
    "eager" (the same functions uncompiled; the CPU default), "hf" (transformers' own layers).
    ``stats``, if given, receives the layer implementation and the number of checkpointed layers."""
    embeds, positions, packing = pack_group(model, prompt, responses, train_vision=train_vision)
    sp = sequence_parallel(model)
    layout = sp.wrap(GroupAttention(packing, backend), packing.total_len)
    embeds, positions = sp.shard(embeds, dim=1), sp.shard(positions, dim=2)
    family = family_of(model)
    text = family.decoder(model)
    impl = resolved_layers(layers, embeds.device, text)
    if impl == "hf":
        hidden = decoder_forward(model, embeds, positions, attention=layout)[0]
        flags = flagged_layers(model)
    else:
        fns = layer_functions(impl == "compiled")
        cos, sin = family.rotary(text.rotary_emb, embeds, positions)
        flags = checkpoint_flags(
            model, embeds.shape[1], sum(packing.response_lens), embeds.device, embeds.element_size()
        )
        hidden = embeds
        plan = getattr(text, "longrl_checkpoint_plan", None) if any(flags) else None
        for i, layer in enumerate(text.layers):
            ckpt = flags[i]
            # under FSDP2 the layer's registered forward method (longrl.dist.parallelize) gathers its weights
            fsdp_step = getattr(layer, "longrl_group_layer", None)
            step = partial(fsdp_step, layout, fns) if fsdp_step else partial(decoder_layer, layer, layout, fns)
            before = torch.cuda.memory_allocated(embeds.device) if plan is not None and not ckpt else 0
            hidden = checkpoint(step, hidden, cos, sin, use_reentrant=False) if ckpt else step(hidden, cos, sin)
            if plan is not None and not ckpt and plan["kept_measured"] is None:
                # the first kept layer: what it really keeps (its saved tensors and its output)
                now = torch.cuda.memory_allocated(embeds.device)
                plan["kept_measured"] = now - before
                new = replan_after_kept_layer(
                    flags,
                    plan["flagged"],
                    i,
                    now - before,
                    plan["kept_estimate"],
                    plan["checkpointed_bytes"],
                    plan["limit"] - now,
                )
                plan["replanned"] = new != flags
                flags = new
        if plan is not None:
            plan["checkpointed"] = sum(flags)
        hidden = text.norm(hidden)[0]
    if stats is not None:
        stats.update(layers=impl, checkpointed_layers=sum(flags))
    return hidden, packing


def enable_gradient_checkpointing(model, layers: int | None = None, *, adaptive: bool = True) -> None:
    """Non-reentrant activation checkpointing on the text decoder layers (it composes with the
    group layout: the layout object is an ordinary argument of every layer). With ``layers``, only
    the first ``layers`` layers may recompute their activations; the rest keep them (faster, more memory).

    ``adaptive`` (the default; also what a model flagged by transformers' own
    ``gradient_checkpointing_enable`` gets): on CUDA the group forward checkpoints only as many of
    the flagged layers as the free memory needs, the first ones; ``adaptive=False`` checkpoints
    exactly the flagged layers."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    text = family_of(model).decoder(model)
    for i, layer in enumerate(text.layers):
        layer.gradient_checkpointing = layers is None or i < layers
    text.longrl_adaptive_checkpointing = adaptive
