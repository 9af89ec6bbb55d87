"""Model configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from longrl import config_utils


@dataclass
class TinyModelConfig:
    """Shape of the offline default: a real architecture of ``family``, a few hundred K parameters."""

    family: Literal["qwen2_5_vl", "qwen2_5_omni", "qwen2", "llama"] = "qwen2_5_vl"  # qwen2, llama: text only
    hidden_size: int = 128  # text decoder width
    intermediate_size: int = 384  # text MLP width
    num_layers: int = 4  # text decoder layers
    num_heads: int = 4  # query heads (hidden_size must divide by it)
    num_kv_heads: int = 2  # key/value heads (num_heads must divide by it)
    vision_hidden_size: int = 64  # vision tower width
    vision_depth: int = 2  # vision tower blocks
    vision_num_heads: int = 2  # vision attention heads (vision_hidden_size must divide by it)
    tokens_per_second: int = 2  # M-RoPE temporal positions per second of video
    vocab_size: int = 1024  # the in-process tokenizer's vocabulary

    def __post_init__(self) -> None:
        config_utils.at_least(self, 1, *(f.name for f in dataclasses.fields(self) if f.name != "family"))
        for whole, part in (
            ("hidden_size", "num_heads"),
            ("num_heads", "num_kv_heads"),
            ("vision_hidden_size", "vision_num_heads"),
        ):
            if getattr(self, whole) % getattr(self, part):
                raise config_utils.FieldError(
                    f"{{p}}{whole}={getattr(self, whole)} must be a multiple of {{p}}{part}={getattr(self, part)}"
                )


@dataclass
class ModelConfig:
    # "tiny" builds the offline default; else a local checkpoint directory or a hub id.
    path: str = "tiny"  # tiny | a model directory (a run's OUT/model, `longrl export --out`) | a hub id
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # the attention transformers loads the model with
    train_vision: bool = True  # False freezes the vision tower (then video embeddings can be cached)
    gradient_checkpointing: bool = False  # recompute layer activations in the backward pass (less memory)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # shape of the tiny model (path=tiny)

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise config_utils.FieldError("{p}path is empty: use tiny, a model directory or a hub id")
