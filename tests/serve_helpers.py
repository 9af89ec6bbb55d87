"""A tiny saved model and a running ``longrl serve`` app for the serve, datagen and judge tests."""

from __future__ import annotations

from pathlib import Path

from longrl.models.config import ModelConfig
from longrl.models.qwen2_5_vl import load_model, save_pretrained
from longrl.serve import ServeConfig, create_app
from longrl.serve.app import ServerThread, load_policy

TEXTS = ["the red square enters first, then the blue circle moves to the top left corner.",
         "Score: 7", "<think> the cube left </think><answer>B</answer>", "A. red B. blue C. green D. yellow"] * 4


def save_tiny(out_dir: Path) -> Path:
    model, tokenizer = load_model(ModelConfig(dtype="float32"), tokenizer_texts=TEXTS, seed=0)
    save_pretrained(model, tokenizer, out_dir)
    return out_dir


def serve_tiny(model_dir: Path, **overrides):
    """(ServerThread context manager, model, tokenizer, ServeConfig) for a saved model directory."""
    cfg = ServeConfig(model=str(model_dir), served_model_name="tiny", **overrides)
    model, tokenizer = load_policy(cfg)
    return ServerThread(create_app(model, tokenizer, cfg)), model, tokenizer, cfg
