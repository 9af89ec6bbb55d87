"""The Qwen2.5-VL text decoder as plain functions over the model's own parameters.

gpt-fast style: one loop over layers, each layer two functions (before and after attention)
whose arguments are the HF modules' own weight tensors, read fresh at every ``generate`` call.
No weight is copied, so rollout always runs the weights the trainer just updated, and the same
compiled function serves every layer. The arithmetic mirrors transformers' modules op for op
(RMSNorm in fp32 then cast, rotate-half rotary, SiLU-gated MLP), so fp32 results match HF.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from longrl.dist.ulysses import sequence_parallel


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def pre_attention(h, ln_w, q_w, q_b, k_w, k_b, v_w, v_b, cos, sin, *, eps: float, num_heads: int, kv_heads: int):
    """h [B, L, H] -> rotary-embedded q [B, Hq, L, D], k and v [B, Hkv, L, D]."""
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


@dataclass
class LayerWeights:
    """One decoder layer's parameters, as the module holds them right now (no copies)."""

    attn: tuple[torch.Tensor, ...]  # input_layernorm, q w/b, k w/b, v w/b
    mlp: tuple[torch.Tensor, ...]  # o_proj, post_attention_layernorm, gate, up, down


class TextDecoder:
    """A view of a Qwen2.5-VL model's text decoder for generation."""

    def __init__(self, model):
        lm = model.model.language_model
        cfg = model.config.text_config
        self.model = model
        self.embed = lm.embed_tokens
        self.rotary = lm.rotary_emb
        self.norm = lm.norm
        self.lm_head = model.lm_head
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.num_layers = cfg.num_hidden_layers
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.act = F.silu if cfg.hidden_act == "silu" else ACT2FN[cfg.hidden_act]
        self.max_positions = cfg.max_position_embeddings
        self.video_token_id = model.config.video_token_id
        self.image_token_id = model.config.image_token_id
        self.layers = [self._weights(layer) for layer in lm.layers]
        self.sp = sequence_parallel(model)  # prefill sharded by tokens under sequence parallelism
        # heads one rank attends with in decode (fewer under sequence parallelism's sharded decode)
        self.decode_heads, self.decode_kv_heads = self.sp.decode_heads(self.num_heads, self.kv_heads)

    @staticmethod
    def _weights(layer) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        return LayerWeights(
            attn=(
                layer.input_layernorm.weight,
                a.q_proj.weight,
                a.q_proj.bias,
                a.k_proj.weight,
                a.k_proj.bias,
                a.v_proj.weight,
                a.v_proj.bias,
            ),
            mlp=(
                a.o_proj.weight,
                layer.post_attention_layernorm.weight,
                m.gate_proj.weight,
                m.up_proj.weight,
                m.down_proj.weight,
            ),
        )

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rope(self, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, L, D] for M-RoPE ``position_ids [3, B, L]``, by the model's own rotary module."""
        return self.rotary(h, position_ids)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head of hidden states [..., H] -> fp32 logits."""
        return self.lm_head(self.norm(h)).float()
