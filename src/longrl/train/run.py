"""The entry point behind ``longrl train sft|rl``: set the run up, train, save the model.

``longrl eval`` is :mod:`longrl.eval.run`, ``longrl cache-embeds`` is :mod:`longrl.cache_embeds`;
what they share with training (config, run directory, seed, device, rows, model) is
:mod:`longrl.infra.setup`."""

from __future__ import annotations

import logging
from pathlib import Path

from longrl.config import Config
from longrl.data.dataset import ExampleSet
from longrl.infra.guard import require_finite_weights
from longrl.infra.setup import load_run_model, read_split, setup_run
from longrl.models.adapter import save_pretrained

log = logging.getLogger("longrl.run")


def sft_stage(model, tokenizer, data: ExampleSet, cfg: Config, log_dir: Path) -> list[float]:
    """CoT-SFT over the usable rows of ``data``, logging and checkpointing in ``log_dir`` (resumed
    from there under ``trainer.resume=auto``); returns the losses of the steps it ran."""
    from longrl.train.sft import train_sft

    examples = data.valid()
    return train_sft(model, tokenizer, examples, cfg, log_dir, skipped_rows=data.num_skipped)


def run_training(stage: str, config_path, overrides) -> None:
    from longrl.dist import init_distributed, shutdown
    from longrl.train.rl import train_rl

    cfg, out, device = setup_run(config_path, overrides, stage=stage)
    env = init_distributed(cfg.dist, cfg.trainer.device)  # torchrun's ranks, or one process
    if env.world_size > 1:
        if stage != "rl":
            raise ValueError(
                f"longrl train {stage} runs in one process; start it without torchrun "
                f"(WORLD_SIZE={env.world_size}); only longrl train rl scales out"
            )
        device = env.device
    rows, bad_rows = read_split(cfg.data.train_path, cfg, "train_path")
    model, tokenizer = load_run_model(cfg, device, rows)
    if stage == "sft":
        sft_stage(
            model, tokenizer, ExampleSet(rows, cfg.data, progress=cfg.trainer.progress, bad_rows=bad_rows), cfg, out
        )
    else:
        embedder = None
        if cfg.data.embed_cache_dir:
            from longrl.data.embed_cache import EmbedCache, VideoEmbedder

            embedder = VideoEmbedder(model, cfg.data, EmbedCache(cfg.data.embed_cache_dir), cfg.model.train_vision)
        train_rl(
            model, tokenizer, ExampleSet(rows, cfg.data, preload=False, embedder=embedder, bad_rows=bad_rows), cfg, out
        )
    if env.world_size > 1:  # sharded weights: the last checkpoint (DCP, written by every rank) becomes the model
        from longrl.infra.checkpoint import CheckpointError, latest_complete
        from longrl.infra.export import export_hf

        if env.is_main:
            last = latest_complete(out / "checkpoints")
            if last is None:
                raise CheckpointError(f"{out / 'checkpoints'} holds no complete checkpoint to export the model from")
            export_hf(last, out / "model", overwrite=True)
        shutdown()
    else:
        require_finite_weights(model, f"the trained model ({out / 'model'})")
        save_pretrained(model, tokenizer, out / "model")
    if env.is_main:
        log.info("saved the trained model to %s", out / "model")
