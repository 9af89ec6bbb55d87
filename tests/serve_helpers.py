"""A tiny saved model and a running ``longrl serve`` app for the serve, datagen and judge tests."""

from __future__ import annotations

from pathlib import Path

from longrl.models.adapter import load_model, save_pretrained
from longrl.models.config import ModelConfig
from longrl.serve.app import ServerThread, create_app, load_policy
from longrl.serve.config import ServeConfig

TEXTS = [
    "the red square enters first, then the blue circle moves to the top left corner.",
    "Score: 7",
    "<think> the cube left </think><answer>B</answer>",
    "A. red B. blue C. green D. yellow",
] * 4


def save_tiny(out_dir: Path) -> Path:
    model, tokenizer = load_model(ModelConfig(dtype="float32"), tokenizer_texts=TEXTS, seed=0)
    save_pretrained(model, tokenizer, out_dir)
    return out_dir


def serve_tiny(model_dir: Path, **overrides):
    """(ServerThread context manager, model, tokenizer, ServeConfig) for a saved model directory."""
    cfg = ServeConfig(model=str(model_dir), served_model_name="tiny", **overrides)
    model, tokenizer = load_policy(cfg)
    return ServerThread(create_app(model, tokenizer, cfg)), model, tokenizer, cfg


def teach(model, tokenizer, pairs: list[tuple[list[dict], str]], steps: int = 120, lr: float = 3e-3) -> float:
    """Fit ``model`` to answer each chat ``messages`` with its reply (full-batch AdamW); the last loss."""
    import torch
    import torch.nn.functional as F

    rows = []
    for messages, reply in pairs:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor(p_ids + t_ids), torch.tensor([-100] * len(p_ids) + t_ids)))
    width = max(len(ids) for ids, _ in rows)  # right-padded into one batch
    ids = torch.stack([F.pad(i, (0, width - len(i)), value=tokenizer.pad_token_id) for i, _ in rows])
    labels = torch.stack([F.pad(lab, (0, width - len(lab)), value=-100) for _, lab in rows])
    mask = torch.stack([torch.arange(width) < len(i) for i, _ in rows]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def split_rows(path):
    """The rows of one written split; a split the id hash left empty holds none (load_rows refuses
    an empty data file, since training on one is a mistake)."""
    from longrl.data.rows import RowError, load_rows

    try:
        return load_rows(path)
    except RowError as err:
        if "no usable row (0 skipped" in str(err):
            return []
        raise
