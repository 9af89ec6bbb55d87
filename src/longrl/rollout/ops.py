"""The decode step's pure-tensor pieces, and their compiled versions for the GPU.

A decode step is three kinds of work per layer: weight GEMMs (cuBLAS), the prefix flash calls,
and many small elementwise/reduction ops (norms, rotary, LSE merges, the suffix attention,
SiLU, residuals). Under a CUDA graph the small ops cost their launch latency each, so they are
fused by ``torch.compile`` into a few kernels per layer. Weights are arguments, not captured
module attributes, so one compiled function serves all layers (and every generate call).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from longrl.rollout.attention import attention_epilogue
from longrl.rollout.decoder import post_attention, pre_attention, rms_norm
from longrl.rollout.sampling import SamplingParams, sample_tokens


def attend_then_mlp(h, q, prefix_parts, n, suffix_k, suffix_v, length, scale, *mlp_weights, eps, act):
    """Merge the cascade partials, then o_proj, residual and the MLP block: h [B, 1, H] -> [B, 1, H]."""
    attn = attention_epilogue(q, prefix_parts, n, suffix_k, suffix_v, length, scale)
    return post_attention(h, attn.reshape(h.shape[0], 1, -1), *mlp_weights, eps=eps, act=act)


def head_and_sample(h, norm_w, head_w, keys, index, vocab_hash, *, eps, sampling):
    """Final norm, LM head (fp32 logits) and one sampled token per row, with its log-prob."""
    logits = F.linear(rms_norm(h, norm_w, eps), head_w).float()
    greedy, temperature, top_k, top_p = sampling
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    return sample_tokens(logits, params, keys, index, vocab_hash)


class DecodeOps:
    """``pre`` / ``post`` / ``head`` of a decode step, eager or compiled (shared per process)."""

    _compiled: dict[str, Callable] = {}

    def __init__(self, compile: bool):
        self.compiled = compile
        if compile:
            c = DecodeOps._compiled
            if not c:
                c.update(pre=torch.compile(pre_attention, dynamic=None),
                         post=torch.compile(attend_then_mlp, dynamic=None),
                         head=torch.compile(head_and_sample, dynamic=None))
            self.pre, self.post, self.head = c["pre"], c["post"], c["head"]
        else:
            self.pre, self.post, self.head = pre_attention, attend_then_mlp, head_and_sample

    def fall_back_to_eager(self, error: Exception) -> None:
        warnings.warn(f"torch.compile of the decode step failed ({type(error).__name__}: {error}); "
                      "decoding eagerly. Set rollout compile=false to silence this.", stacklevel=3)
        self.__init__(compile=False)
