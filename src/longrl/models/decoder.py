"""The decoder layer, once: plain functions over a layer's own weight tensors.

gpt-fast style: a layer is two functions (before and after attention) whose arguments are the HF
modules' own weight tensors, read fresh at every call. No weight is copied, so rollout always runs
the weights the trainer just updated, and one compiled function serves every layer. Rollout's
prefill, its decode step (``longrl.rollout.ops``, which adds fused GPU kernels around the same
math) and the trainer's group forward (:func:`decoder_layer`) all run these functions.

The arithmetic mirrors transformers' Qwen2 / Qwen2.5-VL / Llama layers op for op (RMSNorm in fp32
then cast, rotate-half rotary, SiLU-gated MLP; q/k/v biases when the family has them), so fp32
results match transformers; :func:`unfusable_reason` names what they do not cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def pre_attention(h, ln_w, q_w, q_b, k_w, k_b, v_w, v_b, cos, sin, *, eps: float, num_heads: int, kv_heads: int):
    """h [B, L, H] -> rotary-embedded q [B, Hq, L, D], k and v [B, Hkv, L, D] (biases may be None)."""
    b, length, _ = h.shape
    x = rms_norm(h, ln_w, eps)
    q = F.linear(x, q_w, q_b).view(b, length, num_heads, -1).transpose(1, 2)
    k = F.linear(x, k_w, k_b).view(b, length, kv_heads, -1).transpose(1, 2)
    v = F.linear(x, v_w, v_b).view(b, length, kv_heads, -1).transpose(1, 2)
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, L, D]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q, k, v


def post_attention(h, attn, o_w, ln_w, gate_w, up_w, down_w, *, eps: float, act):
    """Residual after attention ``attn [B, L, Hq*D]``, then the gated MLP block."""
    h = h + F.linear(attn, o_w)
    x = rms_norm(h, ln_w, eps)
    return h + F.linear(act(F.linear(x, gate_w)) * F.linear(x, up_w), down_w)


# torch.compile of the two layer functions, built once and shared by every caller (rollout
# prefill, the trainer's group forward): the weights are arguments, so one graph serves all
# layers. Shapes are automatically dynamic: a second sequence length recompiles once with a
# symbolic length, and later lengths reuse that graph.
_compile = torch.compile  # tests swap in an aot_eager compile to check the plumbing on CPU
_compiled_layer_fns = None


def layer_functions(compiled: bool):
    """(pre_attention, post_attention), compiled or as plain functions."""
    global _compiled_layer_fns
    if not compiled:
        return pre_attention, post_attention
    if _compiled_layer_fns is None:
        _compiled_layer_fns = (_compile(pre_attention), _compile(post_attention))
    return _compiled_layer_fns


class AttentionWeights(NamedTuple):
    """:func:`pre_attention`'s weights, in its argument order (biases None when the family has none)."""

    ln: torch.Tensor
    q_w: torch.Tensor
    q_b: torch.Tensor | None
    k_w: torch.Tensor
    k_b: torch.Tensor | None
    v_w: torch.Tensor
    v_b: torch.Tensor | None


class MLPWeights(NamedTuple):
    """:func:`post_attention`'s weights, in its argument order."""

    o_w: torch.Tensor
    ln: torch.Tensor
    gate_w: torch.Tensor
    up_w: torch.Tensor
    down_w: torch.Tensor


@dataclass
class LayerWeights:
    """One decoder layer's parameters, as the module holds them right now (no copies)."""

    attn: AttentionWeights
    mlp: MLPWeights
    eps: float
    num_heads: int
    kv_heads: int


def layer_weights(layer) -> LayerWeights:
    """The weight layout of one transformers decoder layer (Qwen2, Qwen2.5-VL and Llama share it)."""
    a, m = layer.self_attn, layer.mlp
    return LayerWeights(
        attn=AttentionWeights(
            layer.input_layernorm.weight,
            a.q_proj.weight,
            a.q_proj.bias,
            a.k_proj.weight,
            a.k_proj.bias,
            a.v_proj.weight,
            a.v_proj.bias,
        ),
        mlp=MLPWeights(
            a.o_proj.weight,
            layer.post_attention_layernorm.weight,
            m.gate_proj.weight,
            m.up_proj.weight,
            m.down_proj.weight,
        ),
        eps=layer.input_layernorm.variance_epsilon,
        num_heads=a.q_proj.out_features // a.head_dim,
        kv_heads=a.k_proj.out_features // a.head_dim,
    )


def decoder_layer(layer, layout, fns, hidden, cos, sin):
    """One decoder layer over ``hidden [B, L, H]``, attention by ``layout`` (a
    :class:`longrl.models.attention.AttentionLayout`), layer math ``fns`` (:func:`layer_functions`).
    The trainer's group forward runs it per layer; under FSDP2 it is each layer's registered
    forward method (``longrl.dist.parallelize``), so the layer's weights are gathered for it."""
    pre, post = fns
    w = layer_weights(layer)
    q, k, v = pre(hidden, *w.attn, cos, sin, eps=w.eps, num_heads=w.num_heads, kv_heads=w.kv_heads)
    out = layout.attend(layer.self_attn, q, k, v, layer.self_attn.scaling)  # [B, L, Hq, D]
    return post(hidden, out.flatten(2), *w.mlp, eps=layer.post_attention_layernorm.variance_epsilon, act=F.silu)


def unfusable_reason(config, layers) -> str | None:
    """Why these layer functions cannot stand in for the decoder ``layers`` of text ``config``
    (None: they can). Rollout refuses such a model; the group forward falls back to transformers'
    own layers."""
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r}"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
        return "sliding-window layers"
    if getattr(config, "attention_dropout", 0.0):
        return "attention dropout"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return f"unknown layer {type(layer).__name__}"
        qkv_bias = [getattr(attn, n).bias is not None for n in ("q_proj", "k_proj", "v_proj")]
        if len(set(qkv_bias)) > 1:
            return "q/k/v biases on some projections only"
        if attn.o_proj.bias is not None or any(
            getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")
        ):
            return "biases on o_proj or the MLP"
    return None
