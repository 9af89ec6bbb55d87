"""The vision tower's attention as a few batched SDPA calls instead of one call per window.

transformers' Qwen2.5-VL vision attention, without flash-attn's varlen kernel, splits the packed
patches at ``cu_seqlens`` and runs one SDPA per piece: a 512-frame 448x448 video is 256 temporal
patches x 16 windows of 64 patches, so 4,096 tiny attention calls (plus their splits and the
concatenation) in each of the 28 windowed layers, and 256 in each of the 4 full-attention layers
(one per temporal patch). The pieces come in runs of equal length (every window of a frame grid
that the window size divides has the same size), so each run is one [count, heads, length, dim]
SDPA call: the same attention over the same pieces, in a few launches.

:func:`use_batched_vision_attention` installs that forward in the tower's attention modules
(``encode_video`` does, before it runs the tower); the arithmetic is transformers' own op for op
(qkv, fp32 rotary, SDPA per piece, proj), only batched. :func:`transformers_vision_attention`
takes it out for a ``with`` block.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def equal_runs(lengths: list[int]) -> list[tuple[int, int]]:
    """(length, count) of consecutive equal lengths, zero lengths dropped: [64, 64, 0, 64, 32] ->
    [(64, 3), (32, 1)]."""
    runs: list[tuple[int, int]] = []
    for n in lengths:
        if n == 0:
            continue
        if runs and runs[-1][0] == n:
            runs[-1] = (n, runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    return runs


def _forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings=None, **kwargs):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # [S, H, D] each
    outs, start = [], 0
    for length, count in equal_runs((cu_seqlens[1:] - cu_seqlens[:-1]).tolist()):
        rows = slice(start, start + length * count)
        # [count, H, L, D]: the run's windows side by side
        q_run, k_run, v_run = (x[rows].reshape(count, length, *x.shape[1:]).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q_run, k_run, v_run, dropout_p=0.0, scale=self.scaling, is_causal=False)
        outs.append(out.transpose(1, 2).reshape(length * count, *q.shape[1:]))
        start += length * count
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return self.proj(out.reshape(seq, -1).contiguous())


def _attention_modules(visual) -> list[torch.nn.Module]:
    return [
        block.attn
        for block in getattr(visual, "blocks", [])
        if all(hasattr(block.attn, a) for a in ("qkv", "proj", "num_heads", "scaling"))
    ]


def use_batched_vision_attention(visual) -> None:
    """From now on ``visual``'s attention modules run :func:`_forward` (batched SDPA per run of equal
    pieces); idempotent. For good, not for a block: a tower trained under activation checkpointing
    recomputes its blocks in backward, after the forward has returned, and must run the same code
    then. A tower whose attention implementation is flash-attn (varlen already) is left alone."""
    impl = str(getattr(getattr(visual, "config", None), "_attn_implementation", "") or "")
    if "flash" in impl:
        return
    for m in _attention_modules(visual):
        if "forward" not in m.__dict__:
            m.forward = types.MethodType(_forward, m)


@contextmanager
def transformers_vision_attention(visual):
    """Within the block, ``visual`` runs transformers' own attention (one call per piece), as plain
    transformers code does (the naive baseline of ``bench step``); the batched forward comes back
    after. Not for a block whose backward runs after it under activation checkpointing."""
    swapped = [(m, m.__dict__.pop("forward")) for m in _attention_modules(visual) if "forward" in m.__dict__]
    try:
        yield
    finally:
        for m, forward in swapped:
            m.forward = forward
