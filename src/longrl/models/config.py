"""Model configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TinyModelConfig:
    """Shape of the offline default: a real Qwen2.5-VL architecture, a few hundred K parameters."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_num_heads: int = 2
    tokens_per_second: int = 2
    vocab_size: int = 1024


@dataclass
class ModelConfig:
    # "tiny" builds the offline default; else a local checkpoint directory or a hub id.
    path: str = "tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    train_vision: bool = True
    gradient_checkpointing: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
