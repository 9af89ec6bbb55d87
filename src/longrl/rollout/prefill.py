"""Chunked prefill: one prompt's prefix KV, written once, with bounded peak memory.

The prompt runs through the decoder ``chunk`` tokens at a time; each chunk's queries attend to
every key written so far plus the chunk itself causally. Peak activation memory is set by the
chunk (the MLP's [chunk, intermediate] and one layer's attention), not by the prompt length; the
KV store itself is the one copy of the prefix that all n samples read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from longrl.models.decoder import layer_functions
from longrl.rollout.attention import prefill_attention
from longrl.rollout.decoder import TextDecoder


@dataclass
class PrefixKV:
    """One prompt's KV for every layer: k/v [layers, Hkv, P, D]."""

    k: torch.Tensor
    v: torch.Tensor

    def __len__(self) -> int:
        return self.k.shape[2]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]


def prefill(
    dec: TextDecoder,
    embed: Callable[[int, int], torch.Tensor],
    position_ids: torch.Tensor,
    chunk: int,
    compiled: bool = False,
) -> tuple[PrefixKV, torch.Tensor]:
    """Run a prompt at M-RoPE ``position_ids [3, L]``; ``embed(start, end)`` gives the input
    embeddings [end - start, H] of a chunk. Returns the prefix KV and the final
    hidden state [H] of the last prompt token (it predicts the first response token).
    ``compiled``: the layer functions under torch.compile (the GPU default; the same graphs as
    the trainer's group forward).

    Under sequence parallelism (``dec.sp``, ``longrl.dist.ulysses``) a step covers ``chunk`` tokens
    per rank: each rank runs its share of them outside attention and all of them for its heads
    inside; the KV store holds this rank's heads, and at the end every rank gets all of them (or
    keeps its own, for the sharded decode)."""
    pre_attention, post_attention = layer_functions(compiled)
    sp = dec.sp
    length = position_ids.shape[1]
    position_ids = position_ids.to(dec.device)
    shape = (dec.num_layers, sp.local_kv_heads(dec.kv_heads), length, dec.head_dim)
    k_store = torch.empty(shape, device=dec.device, dtype=dec.dtype)
    v_store = torch.empty(shape, device=dec.device, dtype=dec.dtype)
    h = None
    for start in range(0, length, chunk * sp.size):
        end = min(length, start + chunk * sp.size)
        h = sp.shard(embed(start, end).to(dec.dtype)[None], dim=1)
        cos, sin = dec.rope(h, sp.shard(position_ids[:, None, start:end], dim=2))
        for i, w in enumerate(dec.layers):
            q, k, v = pre_attention(h, *w.attn, cos, sin, eps=dec.eps, num_heads=dec.num_heads, kv_heads=dec.kv_heads)
            q, k, v = sp.heads(q, k, v, end - start)
            k_store[i, :, start:end] = k[0]
            v_store[i, :, start:end] = v[0]
            attn = prefill_attention(q, k_store[i, None, :, :end], v_store[i, None, :, :end], dec.scale)
            attn = sp.tokens(attn, seq_dim=2, head_dim=1)
            h = post_attention(h, attn.transpose(1, 2).reshape(1, h.shape[1], -1), *w.mlp, eps=dec.eps, act=dec.act)
    assert h is not None, "a prompt has at least one token"
    # the last prompt token's hidden state, from the rank that holds it
    rows, owned = sp.local_rows(torch.tensor([end - start - 1], device=dec.device), end - start)
    last = sp.combine(h[0].index_select(0, rows), owned)[0]
    prefix = PrefixKV(sp.gather_kv(k_store), sp.gather_kv(v_store))
    return prefix, last
