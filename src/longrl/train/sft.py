"""Chain-of-thought SFT: next-token loss on the reasoning + answer tokens only."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from longrl.data.dataset import Example
from longrl.data.prompt import messages_for, target_text
from longrl.models.qwen2_5_vl import prompt_token_ids
from longrl.train.optim import build_optimizer, build_scheduler


def sft_batch(model, tokenizer, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded [prompt | target <|im_end|>] sequences; ``loss_mask`` marks target tokens."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    seqs, masks = [], []
    for ex in examples:
        prompt = prompt_token_ids(model, tokenizer, messages_for(ex.row), ex.vision)
        target = tokenizer(target_text(ex.row), add_special_tokens=False)["input_ids"] + [eos]
        seqs.append(torch.cat([prompt, torch.tensor(target)]))
        masks.append(torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(target), dtype=torch.bool)]))
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, : len(s)] = s
        attention_mask[i, : len(s)] = 1
        loss_mask[i, : len(s)] = m
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
             "mm_token_type_ids": (input_ids == model.config.video_token_id).int() * 2}
    videos = [ex.vision for ex in examples if ex.vision is not None]
    if videos:
        batch["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
        batch["video_grid_thw"] = torch.cat([v.grid_thw for v in videos])
        batch["second_per_grid_ts"] = torch.tensor([v.second_per_grid for v in videos])
    return batch


def sft_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over target tokens (fp32), and their count.

    The LM head runs only at positions that predict a target token, so no [tokens, vocab]
    tensor is built for the (long) prompt."""
    device = model.device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "loss_mask"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    loss_mask = batch["loss_mask"].to(device)
    predict_from = loss_mask[:, 1:]  # hidden state t predicts token t+1
    h = hidden[:, :-1][predict_from]
    targets = inputs["input_ids"][:, 1:][predict_from]
    logits = model.lm_head(h).float()
    return F.cross_entropy(logits, targets), int(targets.numel())


def sft_steps(num_examples: int, cfg) -> int:
    """Optimizer steps of an SFT run over ``num_examples`` (``cfg`` an SFTConfig)."""
    return max(1, math.ceil(cfg.epochs * math.ceil(num_examples / cfg.batch_size)))


def run_sft(
    model,
    tokenizer,
    examples: list[Example],
    cfg,
    *,
    seed: int = 0,
    log: Callable[[int, dict], None] | None = None,
) -> list[float]:
    """Train for ``cfg.epochs`` (an SFTConfig) over ``examples``; returns the per-step losses."""
    if not examples:
        raise ValueError("SFT needs at least one example; check data.train_path and data.bad_sample")
    total = sft_steps(len(examples), cfg)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(total):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch_ids, order = order[: cfg.batch_size], order[cfg.batch_size :]
        loss, tokens = sft_loss(model, sft_batch(model, tokenizer, [examples[i] for i in batch_ids]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log is not None:
            log(step, {"sft/loss": loss.item(), "sft/grad_norm": float(grad_norm),
                       "sft/lr": scheduler.get_last_lr()[0], "sft/tokens": tokens})
    model.eval()
    return losses
