"""A tiny Qwen2.5-VL and a training step that draws from every global RNG, for checkpoint tests."""

from __future__ import annotations

import random

import numpy as np
import torch

from longrl.config import OptimConfig
from longrl.models.adapter import load_model
from longrl.models.config import ModelConfig, TinyModelConfig
from longrl.train.optim import build_optimizer, build_scheduler

TEXTS = ["red enters top-left at 0.5s. blue moves right, then green leaves. <think>a</think><answer>B</answer>"] * 8
SMALL = TinyModelConfig(
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vision_hidden_size=32,
    vision_depth=1,
    vision_num_heads=2,
    vocab_size=300,
)


def tiny(seed: int = 0):
    model, tokenizer = load_model(ModelConfig(dtype="float32", tiny=SMALL), tokenizer_texts=TEXTS, seed=seed)
    return model, tokenizer


def optimizer_and_scheduler(model, total_steps: int = 10):
    cfg = OptimConfig(lr=1e-2, weight_decay=0.01, warmup_steps=2, min_lr_ratio=0.1)
    optimizer = build_optimizer(model, cfg)
    return optimizer, build_scheduler(optimizer, cfg, total_steps)


def train_step(model, optimizer, scheduler) -> float:
    """One update on random tokens; Python, NumPy and torch RNGs all shape the result."""
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (2, 12))
    scale = 1.0 + random.random() + float(np.random.rand())
    loss = model(input_ids=ids, labels=ids).loss * scale
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()])
