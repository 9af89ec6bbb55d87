"""longrl's attention hook into transformers.

The decoder layers of transformers models call an attention function looked up by name. We
register ``"longrl"``: when the attention mask handed to a layer is an :class:`AttentionLayout`
(the packed group layout of training, a cascade KV cache of rollout, ...), the layout computes
attention itself; anything else falls through to plain SDPA. So one module serves
``generate``, ordinary forwards and longrl's own layouts, with the same weights.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_NAME = "longrl"


class AttentionLayout:
    """Base for attention patterns longrl computes itself.

    ``attend`` receives the projected, rotary-embedded ``query [B, Hq, L, D]`` and
    ``key``/``value [B, Hkv, L, D]`` of one layer (``module.layer_idx`` tells which) and returns
    the attention output as ``[B, L, Hq, D]`` (the layout transformers' attention functions use).
    """

    def attend(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        raise NotImplementedError


def _longrl_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    if isinstance(attention_mask, AttentionLayout):
        return attention_mask.attend(module, query, key, value, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


AttentionInterface.register(ATTN_NAME, _longrl_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


def use_longrl_attention(text_config) -> None:
    """Route the text decoder's attention through longrl (the vision tower keeps its own)."""
    text_config._attn_implementation = ATTN_NAME
