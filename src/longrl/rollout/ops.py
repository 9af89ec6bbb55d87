"""One decode step through the decoder layers: weight GEMMs, cascade attention, fused glue.

A decode step is three kinds of work per layer: weight GEMMs with a few rows (memory-bound: the
weights stream once), the cascade attention, and small elementwise and reduction ops (norms,
rotary, cache writes, LSE merges, SiLU, residuals). Under a CUDA graph every launch costs its
latency plus a ~1 us gap, so on GPU a layer is 9 launches: RMSNorm, one packed q/k/v GEMM, the
fused attention kernel (rotary, suffix-cache write, prefix and suffix attention), the merge
kernel, o_proj, residual + RMSNorm, one packed gate/up GEMM, SiLU * up, down_proj. The GEMMs are
cuBLAS; the norms and SiLU are ``torch.compile``d glue. Weights are arguments, never captured
attributes, so each compiled function serves every layer and every ``generate`` call. On CPU
everything runs eagerly, op for op the same arithmetic as transformers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from longrl.models.decoder import rms_norm, rotate_half
from longrl.rollout.attention import attention_epilogue, prefix_partials
from longrl.rollout.decoder import TextDecoder
from longrl.rollout.prefill import PrefixKV
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


_GLUE: dict[str, Callable[..., Any]] = dict(
    norm_in=norm_in, rotary_and_store=rotary_and_store, attend=attend, silu_mul=silu_mul, sample_step=sample_step
)


@dataclass
class DecodeLayer:
    """The weights one decoder layer's decode step reads.

    Packed (GPU default): ``qkv`` is one (weight, bias) pair, [q; k; v] stacked on the output
    axis, and ``mlp_in`` one [gate; up] weight, so each layer runs 4 GEMMs instead of 7 (k and v
    alone are 1 MB GEMMs that cost their launch latency, not their bytes). The packed tensors are
    copies made once per ``generate`` call from the live parameters (so rollout still runs the
    weights the trainer just updated; no separate engine, no sync step); they cost transient
    memory: (Hq + 2 Hkv) * D * H + 2 * I * H elements per layer, 3.6 GB for the 3B model in bf16,
    freed when ``generate`` returns. Unpacked: the module's own tensors, one GEMM each.
    """

    ln1: torch.Tensor
    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]
    o_w: torch.Tensor
    ln2: torch.Tensor
    mlp_in: list[torch.Tensor]
    down_w: torch.Tensor


def decode_weights(dec: TextDecoder, pack: bool) -> list[DecodeLayer]:
    """Each layer's decode weights; ``pack`` packs q/k/v into one GEMM and gate/up into another.
    (Gate and up as two GEMMs on two CUDA streams measured 35.5 against the packed GEMM's 34.6 us
    per layer on an H100, and that variant left the code: notes/rollout.md.)"""
    layers = []
    with torch.no_grad():
        for w in dec.layers:
            ln1, q_w, q_b, k_w, k_b, v_w, v_b = w.attn
            o_w, ln2, gate_w, up_w, down_w = w.mlp
            if pack:
                # q/k/v biases come all or none (models.decoder.unfusable_reason)
                bias = None if q_b is None or k_b is None or v_b is None else torch.cat([q_b, k_b, v_b])
                qkv = [(torch.cat([q_w, k_w, v_w]), bias)]
            else:
                qkv = [(q_w, q_b), (k_w, k_b), (v_w, v_b)]
            mlp_in = [torch.cat([gate_w, up_w])] if pack else [gate_w, up_w]
            layers.append(DecodeLayer(ln1, qkv, o_w, ln2, mlp_in, down_w))
    return layers


class DecodeOps:
    """The glue functions (compiled or eager), the GEMMs and the attention of a decode step.

    ``gpu_kernels`` (CUDA with Triton) selects the fused attention of ``kernels.py``: rotary,
    suffix-cache write, prefix and suffix attention and their merge in two launches per layer,
    the suffix length read from the device step counter (one graph for every step). Otherwise
    rotary and cache write are one glue function, the prefix partials come from
    ``attention.prefix_partials`` and the suffix attention and merges are another glue function
    over a ``window`` of suffix slots.
    """

    _compiled: dict[str, Callable] = {}
    # the glue functions of ``_GLUE``, compiled or eager (set per instance in ``__init__``)
    norm_in: Callable[..., Any]
    rotary_and_store: Callable[..., Any]
    attend: Callable[..., Any]
    silu_mul: Callable[..., Any]
    sample_step: Callable[..., Any]

    def __init__(
        self,
        compile: bool,
        gpu_kernels: bool,
        pack: bool = False,
    ):
        self.compiled = compile
        self.gpu_kernels = gpu_kernels
        self.pack = pack
        self.layers: list[DecodeLayer] | None = None
        if compile and not DecodeOps._compiled:
            DecodeOps._compiled.update({name: torch.compile(fn, dynamic=None) for name, fn in _GLUE.items()})
        glue = DecodeOps._compiled if compile else _GLUE
        for name in _GLUE:
            setattr(self, name, glue[name])
        self.linear = F.linear  # cuBLAS: a Triton weight-streaming GEMM measured slower (notes/rollout.md)
        if gpu_kernels:
            from longrl.rollout import kernels

            self.kernels = kernels

    @property
    def fixed_window(self) -> bool:
        """True when one step serves every suffix length (the fused kernel reads it on device)."""
        return self.gpu_kernels

    def prepare(self, dec: TextDecoder) -> None:
        """Take the layers' weights (packing them if asked): once per ``generate`` call."""
        if self.layers is None:
            self.layers = decode_weights(dec, self.pack)

    def packed_bytes(self) -> int:
        packed = [
            t
            for lw in self.layers or []
            for t in (*(lw.qkv[0] if len(lw.qkv) == 1 else ()), *(lw.mlp_in if len(lw.mlp_in) == 1 else ()))
        ]
        return sum(t.numel() * t.element_size() for t in packed if t is not None)

    def plan(self, dec: TextDecoder, prefix_lens: list[int], n: int):
        if not self.gpu_kernels:
            return None
        return self.kernels.attention_plan(
            prefix_lens, n, dec.decode_heads, dec.decode_kv_heads, dec.head_dim, dec.device
        )

    def fall_back_to_eager(self, error: Exception) -> None:
        warnings.warn(
            f"the compiled decode step failed ({type(error).__name__}: {error}); decoding with "
            "eager PyTorch ops instead (set rollout compile=false / use_triton=false to choose)",
            stacklevel=3,
        )
        layers = self.layers
        type(self).__init__(
            self,
            compile=False,
            gpu_kernels=False,
            pack=self.pack,
        )
        self.layers = layers

    def _qkv(self, dec: TextDecoder, x, lw: DecodeLayer):
        outs = [self.linear(x, w, b) for w, b in lw.qkv]
        if len(outs) == 3:
            return outs
        q_size, kv_size = dec.num_heads * dec.head_dim, dec.kv_heads * dec.head_dim
        return outs[0].split([q_size, kv_size, kv_size], dim=1)  # views of the packed output

    def _mlp(self, dec: TextDecoder, x, lw: DecodeLayer):
        if len(lw.mlp_in) == 1:
            gate_up = self.linear(x, lw.mlp_in[0])
            gate, up = gate_up.split(gate_up.shape[1] // 2, dim=1)
        else:
            gate, up = (self.linear(x, w) for w in lw.mlp_in)
        return self.linear(self.silu_mul(gate, up, act=dec.act), lw.down_w)

    def decode_layers(self, batch, h, window: int):
        """All layers for one token per row of ``batch`` (a DecodeBatch): h [B, H] -> (residual
        stream, last MLP output) [B, H]. ``window``: suffix slots read (unfused path only)."""
        dec, n, t = batch.dec, batch.n, batch.step
        suffix_k, suffix_v = batch.suffix_k, batch.suffix_v
        prefixes: list[PrefixKV] = batch.prefixes  # typed: prefix_partials takes each one's (k, v) unpacked
        delta = None
        layers = self.layers
        assert layers is not None, "prepare() takes the layers' weights first"
        if self.gpu_kernels:
            for i, lw in enumerate(layers):
                h, x = self.norm_in(h, delta, lw.ln1, eps=dec.eps)
                q, k, v = dec.sp.decode_qkv(*self._qkv(dec, x, lw), dec.head_dim)
                attn = self.kernels.decode_attention(
                    batch.plan,
                    q,
                    k,
                    v,
                    batch.cos,
                    batch.sin,
                    t,
                    [p.layer(i) for p in prefixes],
                    suffix_k[i],
                    suffix_v[i],
                    dec.scale,
                )
                attn = dec.sp.decode_output(attn)
                h, x = self.norm_in(h, self.linear(attn, lw.o_w), lw.ln2, eps=dec.eps)
                delta = self._mlp(dec, x, lw)
            return h, delta
        slot, length = t.view(1), t + 1
        cos, sin = (c.index_select(1, slot).repeat_interleave(n, 0) for c in (batch.cos, batch.sin))  # [B, 1, D]
        compiled = self.compiled
        for i, lw in enumerate(layers):
            h, x = self.norm_in(h, delta, lw.ln1, eps=dec.eps)
            q, k, v = self._qkv(dec, x, lw)
            q = self.rotary_and_store(
                *dec.sp.decode_qkv(q, k, v, dec.head_dim),
                cos,
                sin,
                suffix_k[i],
                suffix_v[i],
                slot,
                num_heads=dec.decode_heads,
                kv_heads=dec.decode_kv_heads,
            )
            parts = [prefix_partials(q[g * n : (g + 1) * n], *p.layer(i), dec.scale) for g, p in enumerate(prefixes)]
            sk, sv = suffix_k[i][:, :, :window], suffix_v[i][:, :, :window]
            if compiled:  # one compiled kernel set for every prefix split count and suffix window
                for o, l in (part for prompt_parts in parts for part in prompt_parts):
                    torch._dynamo.maybe_mark_dynamic(o, 1)
                    torch._dynamo.maybe_mark_dynamic(l, 1)
                torch._dynamo.maybe_mark_dynamic(sk, 2)
                torch._dynamo.maybe_mark_dynamic(sv, 2)
            attn = dec.sp.decode_output(self.attend(q, parts, n, sk, sv, length, dec.scale))
            h, x = self.norm_in(h, self.linear(attn, lw.o_w), lw.ln2, eps=dec.eps)
            delta = self._mlp(dec, x, lw)
        return h, delta

    def head(self, dec: TextDecoder, h, delta, keys, index, vocab_hash, params: SamplingParams):
        """Final residual + norm, LM head and one token per row with its log-prob (fp32 logits)."""
        _, x = self.norm_in(h, delta, dec.norm.weight, eps=dec.eps)
        logits = self.linear(x, dec.lm_head.weight)
        if self.gpu_kernels and params.top_k == 0 and params.top_p == 1.0:
            return self.kernels.sample(logits, keys, index, vocab_hash, params.temperature, params.is_greedy)
        sampling = (params.is_greedy, params.temperature, params.top_k, params.top_p)
        return self.sample_step(logits, keys, index, vocab_hash, sampling=sampling)
