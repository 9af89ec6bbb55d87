"""One decode step through the decoder layers: weight GEMMs, cascade attention, fused glue.

A decode step is three kinds of work per layer: weight GEMMs with a few rows (memory-bound: the
weights stream once), the prefix part of the cascade attention, and many small elementwise and
reduction ops (norms, rotary, cache writes, the suffix attention and LSE merges, SiLU,
residuals). Under a CUDA graph every small op costs its launch latency, so on GPU the glue
between two GEMMs is one ``torch.compile``d function (a kernel or two), the GEMMs are cuBLAS,
and the prefix attention is a Triton split-KV kernel. Weights are arguments, never captured attributes, so each compiled function
serves every layer and every ``generate`` call. On CPU everything runs eagerly, op for op the
same arithmetic as transformers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from longrl.rollout.attention import attention_epilogue, prefix_partials
from longrl.rollout.decoder import TextDecoder, rms_norm, rotate_half
from longrl.rollout.sampling import SamplingParams, sample_tokens


def norm_in(h, delta, weight, *, eps: float):
    """Residual add of the previous block's output (if any), then RMSNorm: (h, normed)."""
    if delta is not None:
        h = h + delta
    return h, rms_norm(h, weight, eps)


def rotary_and_store(q, k, v, cos, sin, suffix_k, suffix_v, slot, *, num_heads: int, kv_heads: int):
    """Rotary on q/k [B, H*D] of one decode token, write k/v into suffix slot ``slot``; q [B, Hq, D]."""
    b = q.shape[0]
    q = q.view(b, num_heads, -1)
    k = k.view(b, kv_heads, -1)
    cos, sin = cos.view(b, 1, -1), sin.view(b, 1, -1)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    suffix_k.index_copy_(2, slot, k[:, :, None])
    suffix_v.index_copy_(2, slot, v.view(b, kv_heads, 1, -1))
    return q


def attend(q, prefix_parts, n, suffix_k, suffix_v, length, scale):
    """Merge the prefix partials with each row's suffix attention: [B, Hq*D] in q's dtype."""
    return attention_epilogue(q, prefix_parts, n, suffix_k, suffix_v, length, scale).flatten(1)


def silu_mul(gate, up, *, act):
    return act(gate) * up


def sample_step(logits, keys, index, vocab_hash, *, sampling):
    greedy, temperature, top_k, top_p = sampling
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    return sample_tokens(logits, params, keys, index, vocab_hash)


_GLUE = dict(norm_in=norm_in, rotary_and_store=rotary_and_store, attend=attend, silu_mul=silu_mul,
             sample_step=sample_step)


class DecodeOps:
    """The glue functions (compiled or eager), the GEMM and the prefix attention of a decode step."""

    _compiled: dict[str, Callable] = {}

    def __init__(self, compile: bool, gpu_kernels: bool):
        self.compiled = compile
        self.gpu_kernels = gpu_kernels
        if compile and not DecodeOps._compiled:
            DecodeOps._compiled.update({name: torch.compile(fn, dynamic=None) for name, fn in _GLUE.items()})
        glue = DecodeOps._compiled if compile else _GLUE
        for name in _GLUE:
            setattr(self, name, glue[name])
        self.linear = F.linear  # cuBLAS: a Triton weight-streaming GEMM measured slower (notes/rollout.md)
        if gpu_kernels:
            from longrl.rollout import kernels

            self.prefix = kernels.prefix_partials
        else:
            self.prefix = prefix_partials

    def fall_back_to_eager(self, error: Exception) -> None:
        warnings.warn(f"the compiled decode step failed ({type(error).__name__}: {error}); decoding with "
                      "eager PyTorch ops instead (set rollout compile=false / use_triton=false to choose)",
                      stacklevel=3)
        self.__init__(compile=False, gpu_kernels=False)

    def decode_layers(self, dec: TextDecoder, h, cos, sin, suffix_k, suffix_v, slot, length, prefixes, n: int,
                      window: int):
        """All layers for one token per row: h [B, H] -> (residual stream, last MLP output) [B, H]."""
        delta = None
        compiled = self.compiled
        for i, w in enumerate(dec.layers):
            ln1, q_w, q_b, k_w, k_b, v_w, v_b = w.attn
            o_w, ln2, gate_w, up_w, down_w = w.mlp
            h, x = self.norm_in(h, delta, ln1, eps=dec.eps)
            q = self.rotary_and_store(self.linear(x, q_w, q_b), self.linear(x, k_w, k_b), self.linear(x, v_w, v_b),
                                      cos, sin, suffix_k[i], suffix_v[i], slot, num_heads=dec.num_heads,
                                      kv_heads=dec.kv_heads)
            parts = [self.prefix(q[g * n:(g + 1) * n], *p.layer(i), dec.scale) for g, p in enumerate(prefixes)]
            sk, sv = suffix_k[i][:, :, :window], suffix_v[i][:, :, :window]
            if compiled:  # one compiled kernel set for every prefix split count and suffix window
                for o, l in (part for prompt_parts in parts for part in prompt_parts):
                    torch._dynamo.maybe_mark_dynamic(o, 1)
                    torch._dynamo.maybe_mark_dynamic(l, 1)
                torch._dynamo.maybe_mark_dynamic(sk, 2)
                torch._dynamo.maybe_mark_dynamic(sv, 2)
            attn = self.attend(q, parts, n, sk, sv, length, dec.scale)
            h, x = self.norm_in(h, self.linear(attn, o_w), ln2, eps=dec.eps)
            delta = self.linear(self.silu_mul(self.linear(x, gate_w), self.linear(x, up_w), act=dec.act), down_w)
        return h, delta

    def head(self, dec: TextDecoder, h, delta, keys, index, vocab_hash, params: SamplingParams):
        """Final residual + norm, LM head and one token per row with its log-prob (fp32 logits)."""
        _, x = self.norm_in(h, delta, dec.norm.weight, eps=dec.eps)
        logits = self.linear(x, dec.lm_head.weight)
        sampling = (params.is_greedy, params.temperature, params.top_k, params.top_p)
        return self.sample_step(logits, keys, index, vocab_hash, sampling=sampling)
