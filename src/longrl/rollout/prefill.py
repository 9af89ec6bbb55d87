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

from longrl.rollout.attention import prefill_attention
from longrl.rollout.decoder import TextDecoder, layer_functions


@dataclass
class PrefixKV:
    """One prompt's KV for every layer: k/v [layers, Hkv, P, D]."""

    k: torch.Tensor
    v: torch.Tensor

    def __len__(self) -> int:
        return self.k.shape[2]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]


def prefill(dec: TextDecoder, embed: Callable[[int, int], torch.Tensor], position_ids: torch.Tensor,
            chunk: int, compiled: bool = False) -> tuple[PrefixKV, torch.Tensor]:
    """Run a prompt at M-RoPE ``position_ids [3, L]``; ``embed(start, end)`` gives the input
    embeddings [end - start, H] of a chunk. Returns the prefix KV and the final
    hidden state [H] of the last prompt token (it predicts the first response token).
    ``compiled``: the layer functions under torch.compile (the GPU default; the same graphs as
    the trainer's group forward)."""
    pre_attention, post_attention = layer_functions(compiled)
    length = position_ids.shape[1]
    position_ids = position_ids.to(dec.device)
    shape = (dec.num_layers, dec.kv_heads, length, dec.head_dim)
    prefix = PrefixKV(torch.empty(shape, device=dec.device, dtype=dec.dtype),
                      torch.empty(shape, device=dec.device, dtype=dec.dtype))
    h = None
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        h = embed(start, end).to(dec.dtype)[None]
        cos, sin = dec.rope(h, position_ids[:, None, start:end])
        for i, w in enumerate(dec.layers):
            q, k, v = pre_attention(h, *w.attn, cos, sin, eps=dec.eps, num_heads=dec.num_heads,
                                    kv_heads=dec.kv_heads)
            prefix.k[i, :, start:end] = k[0]
            prefix.v[i, :, start:end] = v[0]
            attn = prefill_attention(q, prefix.k[i, None, :, :end], prefix.v[i, None, :, :end], dec.scale)
            h = post_attention(h, attn.transpose(1, 2).reshape(1, end - start, -1), *w.mlp, eps=dec.eps,
                               act=dec.act)
    return prefix, h[0, -1]
