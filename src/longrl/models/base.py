"""What longrl needs to know about one model architecture: :class:`ModelFamily`.

Every phase reaches a model's parts through its family (``longrl.models.family.family_of``): the
decoder stack whose layers the one layer implementation runs (``longrl.models.decoder``), its text
config, how its rotary module takes positions, its vision tower if it has one, how a prompt's
positions and media embeddings are built, and the tiny offline config. A family is one module
(``qwen2_5_vl.py``, ``causal_lm.py``); adding one is a new module and its tests.

Positions are [3, L] everywhere (Qwen2.5-VL's M-RoPE rows: time, height, width). A 1-D rotary
family keeps its positions in all three rows and reads the first.
"""

from __future__ import annotations

from typing import Any

import torch

from longrl.config_utils import ConfigError
from longrl.models.attention import use_longrl_attention
from longrl.models.decoder import unfusable_reason
from longrl.models.inputs import VisionInputs
from longrl.models.tokenizer import train_tokenizer


def tiny_text_fields(tiny: Any, tokenizer: Any, **rope: Any) -> dict[str, Any]:
    """The text decoder's config fields of a tiny model (``model.tiny``) with the in-process
    tokenizer's special tokens; ``rope`` adds rotary parameters (M-RoPE's sections)."""

    def ids(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))  # one token in, one id out

    return dict(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, **rope},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )


class ModelFamily:
    name: str  # the family's name, as `model.tiny.family` spells it
    model_types: tuple[str, ...]  # config.json `model_type`s it serves
    mrope: bool = False  # 3-D positions into the rotary module (else its first row)

    def model_class(self) -> Any:
        """The transformers class a checkpoint of this family loads as."""
        raise NotImplementedError

    def from_pretrained(self, path: str, **kwargs: Any) -> Any:
        """Load the checkpoint at ``path`` (a directory or hub id) as :meth:`model_class`; a family
        whose checkpoints hold more than longrl trains (Qwen2.5-Omni's talker) loads its part."""
        return self.model_class().from_pretrained(path, **kwargs)

    def tiny_config(self, tiny: Any, tokenizer: Any) -> Any:
        """The transformers config of the tiny offline model (``model.path=tiny``)."""
        raise NotImplementedError

    def tiny_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        """The tiny model's tokenizer, trained in-process on the run's text."""
        return train_tokenizer(texts, vocab_size=vocab_size)

    def decoder(self, model: Any) -> Any:
        """The text decoder stack: ``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``."""
        return model.model

    def text_config(self, model: Any) -> Any:
        return model.config

    def rotary_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Positions [3, B, L] as the family's transformers modules take them: all three M-RoPE rows,
        or the first row ([B, L]) for a 1-D rotary family."""
        return position_ids if self.mrope else position_ids[0]

    def rotary(self, rotary_emb: Any, h: torch.Tensor, position_ids: torch.Tensor):
        """cos/sin [B, L, D] for positions [3, B, L] by the model's own rotary module."""
        return rotary_emb(h, self.rotary_positions(position_ids))

    def vision_tower(self, model: Any) -> Any:
        return None

    def audio_tower(self, model: Any) -> Any:
        """The audio encoder of an omni family (frozen with the vision tower, part of the embedding
        cache's fingerprint), or None."""
        return None

    def media_token_ids(self, model: Any) -> tuple[int | None, ...]:
        """Placeholder token ids (image, video, then audio for omni families); None where the
        family takes no such input. A prompt's media embeddings fill these tokens in order."""
        return None, None

    def media_mask(self, model: Any, input_ids: torch.Tensor) -> torch.Tensor:
        """Where ``input_ids`` (any shape) hold a media placeholder (image, video or audio), as bool."""
        ids = [t for t in self.media_token_ids(model) if t is not None]
        return torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype, device=input_ids.device))

    def media_forward_inputs(self, model: Any, input_ids: torch.Tensor, visions: list[VisionInputs]) -> dict:
        """The keyword arguments transformers' own forward of this family takes for the media of
        a batch ``input_ids`` [B, L] (``visions`` in row order), besides the ids: SFT runs it."""
        if visions:
            raise ValueError(f"{self.name} models take text only; this batch has a video or image")
        return {}

    def forward_hidden(self, model: Any, inputs: dict) -> torch.Tensor:
        """Final hidden states [B, L, H] of transformers' own forward of a batch (``input_ids``,
        ``attention_mask`` and :meth:`media_forward_inputs`'s media): SFT runs it."""
        return model.model(**inputs, use_cache=False).last_hidden_state

    def expand_placeholders(self, model: Any, text: str, vision: VisionInputs | None) -> str:
        """The chat-rendered prompt with each media placeholder expanded to one token per embedding."""
        if vision is not None:
            raise ValueError(f"{self.name} models take text only; this row has a video or image")
        return text

    def positions(self, model: Any, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
        """Positions [3, L] of one prompt."""
        if vision is not None:
            raise ValueError(f"{self.name} models take text only; this row has a video or image")
        return torch.arange(len(input_ids)).view(1, -1).expand(3, -1).clone()

    def encode_video(self, model: Any, vision: VisionInputs) -> torch.Tensor:
        raise ValueError(f"{self.name} models have no vision tower")

    def prepare(self, model: Any) -> None:
        """After loading: route the text decoder's attention through longrl (``models.attention``)."""
        use_longrl_attention(self.text_config(model))

    def check_supported(self, model: Any) -> None:
        """A clear error when this checkpoint uses an option longrl's decoder layer does not implement."""
        reason = unfusable_reason(self.text_config(model), self.decoder(model).layers)
        if reason is not None:
            raise ConfigError(
                f"this {self.name} checkpoint uses {reason}, which longrl's decoder does not implement; "
                "choose a checkpoint without it"
            )
