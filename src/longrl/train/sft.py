"""Chain-of-thought SFT: next-token loss on the reasoning + answer tokens only.

Run safety as in the RL loop: a NaN/inf loss or gradient skips the update and
``trainer.max_nonfinite_steps`` of them in a row stop the run (:mod:`longrl.infra.guard`);
checkpoints every ``trainer.save_every`` steps and at the end (:mod:`longrl.infra.checkpoint`);
``trainer.resume`` (:mod:`longrl.infra.run_dir`) continues exactly: model, optimizer, scheduler,
RNGs and the position in the data order.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from longrl.data.dataset import Example
from longrl.data.prompt import messages_for, target_text
from longrl.infra.checkpoint import Checkpointer
from longrl.infra.guard import NonFiniteGuard, require_finite_weights
from longrl.infra.hf_files import ProcessorSpec
from longrl.infra.metrics import MetricsLogger
from longrl.infra.run_dir import claim_run_dir
from longrl.models.adapter import end_of_turn_id, prompt_token_ids
from longrl.models.family import family_of
from longrl.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("longrl.sft")


def sft_batch(model, tokenizer, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded [prompt | target end-of-turn] sequences; ``loss_mask`` marks target tokens."""
    eos = end_of_turn_id(tokenizer)
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
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
    }
    visions = [ex.vision for ex in examples if ex.vision is not None]
    batch.update(family_of(model).media_forward_inputs(model, input_ids, visions))
    return batch


def sft_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over target tokens (fp32), and their count.

    The LM head runs only at positions that predict a target token, so no [tokens, vocab]
    tensor is built for the (long) prompt."""
    device = model.device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "loss_mask"}
    hidden = family_of(model).forward_hidden(model, inputs)
    loss_mask = batch["loss_mask"].to(device)
    predict_from = loss_mask[:, 1:]  # hidden state t predicts token t+1
    h = hidden[:, :-1][predict_from]
    targets = inputs["input_ids"][:, 1:][predict_from]
    logits = model.lm_head(h).float()
    return F.cross_entropy(logits, targets), int(targets.numel())


def sft_steps(num_examples: int, cfg) -> int:
    """Optimizer steps of an SFT run over ``num_examples`` (``cfg`` an SFTConfig)."""
    return max(1, math.ceil(cfg.epochs * math.ceil(num_examples / cfg.batch_size)))


class BatchOrder:
    """Batches of example indices cut from a stream of seeded shuffles (a batch may span two
    passes); its state is part of a checkpoint, so a resumed run sees the same batches."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size = size
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.pending: list[int] = []  # the current shuffle's indices not yet used

    def next_batch(self) -> list[int]:
        if len(self.pending) < self.batch_size:
            fresh = list(range(self.size))
            self.rng.shuffle(fresh)
            self.pending += fresh
        batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
        return batch

    def state_dict(self) -> dict:
        version, state, gauss = self.rng.getstate()
        return {
            "rng_version": version,
            "rng_state": torch.tensor(state, dtype=torch.int64),
            "rng_gauss": gauss,
            "pending": torch.tensor(self.pending, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate((state["rng_version"], tuple(state["rng_state"].tolist()), state["rng_gauss"]))
        self.pending = state["pending"].tolist()


def train_sft(
    model, tokenizer, examples: list[Example], cfg, run_dir: str | Path, *, skipped_rows: int = 0
) -> list[float]:
    """Train for ``cfg.sft.epochs`` over ``examples`` (``cfg`` a Config), logging and
    checkpointing in ``run_dir`` and resuming from it; returns the losses of the steps run here.
    ``skipped_rows`` (bad rows left out of ``examples``) is logged as ``data/skipped_rows``."""
    if not examples:
        raise ValueError("SFT needs at least one example; check data.train_path and data.bad_sample")
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, cfg.trainer.resume, "sft")
    total = sft_steps(len(examples), cfg.sft)
    optimizer = build_optimizer(model, cfg.sft.optim)
    scheduler = build_scheduler(optimizer, cfg.sft.optim, total)
    order = BatchOrder(len(examples), cfg.sft.batch_size, seed=cfg.trainer.seed)
    checkpointer = Checkpointer(
        run_dir,
        keep_last=cfg.trainer.keep_last,
        tokenizer=tokenizer,
        processor=ProcessorSpec.from_model(model, cfg.data.min_pixels, cfg.data.max_pixels),
    )
    guard = NonFiniteGuard(cfg.trainer.max_nonfinite_steps, checkpointer)
    start = 0
    if cfg.trainer.resume == "auto":
        state = checkpointer.load_latest(model=model, optimizer=optimizer, scheduler=scheduler)
        if state is not None:
            start = int(state["step"])
            order.load_state_dict(state["order"])
            guard.load_state_dict(state["guard"])
            log.info("resumed SFT from step %d of %d", start, total)
    logger = MetricsLogger(
        run_dir,
        total_steps=total,
        log_every=cfg.trainer.log_every,
        tensorboard=cfg.trainer.tensorboard,
        desc="sft",
        start_step=start,
        progress=False,
    )
    losses = []
    model.train()
    try:
        for step in range(start, total):
            loss, tokens = sft_loss(model, sft_batch(model, tokenizer, [examples[i] for i in order.next_batch()]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.sft.optim.grad_clip)
            if guard.check(loss, grad_norm, step=step + 1):
                optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            logger.log(
                step + 1,
                {
                    "sft/loss": loss.item(),
                    "sft/grad_norm": float(grad_norm),
                    "sft/lr": scheduler.get_last_lr()[0],
                    "sft/tokens": tokens,
                    "sft/skipped_updates": guard.skipped,
                    "data/skipped_rows": skipped_rows,
                },
            )
            if step + 1 == total or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0):
                require_finite_weights(model, f"checkpoint step_{step + 1}")
                checkpointer.save(
                    step + 1,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"order": order.state_dict(), "guard": guard.state_dict()},
                )
    finally:
        logger.close()
    model.eval()
    return losses
