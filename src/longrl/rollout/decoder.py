"""A loaded model's text decoder as rollout reads it: the layers' weight tensors (no copies) and
the pieces around them (embeddings, rotary, final norm, LM head), for any supported family.

The layer math itself is ``longrl.models.decoder``'s, shared with the trainer's group forward.
Weights are read fresh at every ``generate`` call, so rollout always runs the weights the trainer
just updated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from longrl.dist.ulysses import sequence_parallel
from longrl.models.decoder import LayerWeights, layer_weights
from longrl.models.family import family_of


class TextDecoder:
    """A view of a model's text decoder for generation."""

    def __init__(self, model):
        family = family_of(model)
        lm = family.decoder(model)
        cfg = family.text_config(model)
        family.check_supported(model)  # the layer functions below must cover this model's layers
        self.model = model
        self.family = family
        self.embed = lm.embed_tokens
        self.rotary = lm.rotary_emb
        self.norm = lm.norm
        self.lm_head = model.lm_head
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.num_layers = cfg.num_hidden_layers
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.act = F.silu if cfg.hidden_act == "silu" else ACT2FN[cfg.hidden_act]
        self.max_positions = cfg.max_position_embeddings
        self.media_token_ids = [t for t in family.media_token_ids(model) if t is not None]  # image, video
        self.layers: list[LayerWeights] = [layer_weights(layer) for layer in lm.layers]
        self.sp = sequence_parallel(model)  # prefill sharded by tokens under sequence parallelism
        # heads one rank attends with in decode (fewer under sequence parallelism's sharded decode)
        self.decode_heads, self.decode_kv_heads = self.sp.decode_heads(self.num_heads, self.kv_heads)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rope(self, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, L, D] for positions ``[3, B, L]``, by the model's own rotary module."""
        return self.family.rotary(self.rotary, h, position_ids)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head of hidden states [..., H] -> fp32 logits."""
        return self.lm_head(self.norm(h)).float()
