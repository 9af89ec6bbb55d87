"""What every config-driven command does first: resolve the config, create ``trainer.out_dir``,
seed, pick the device, read rows and load the model. Used by ``longrl train``
(:mod:`longrl.train.run`), ``longrl eval`` (:mod:`longrl.eval.run`, :mod:`longrl.eval.benchmark`),
``longrl cache-embeds`` (:mod:`longrl.cache_embeds`) and the quickstart."""

from __future__ import annotations

from pathlib import Path

import torch

from longrl.config import Config, load_config, save_config
from longrl.data.prompt import corpus_texts
from longrl.data.rows import Row, read_rows
from longrl.infra.run_dir import claim_run_dir
from longrl.models.adapter import check_model_path, load_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_run(config_path, overrides, *, stage: str | None = None) -> tuple[Config, Path, torch.device]:
    """Resolve the config, create ``trainer.out_dir`` with the config saved in it, seed, pick the device.
    ``stage`` ("sft"/"rl"): a training run; ``trainer.resume`` is applied to the directory first, so
    a refused one is left untouched."""
    cfg = load_config(config_path, overrides)
    check_model_path(cfg.model.path)  # before any rows, videos or weights load
    out = Path(cfg.trainer.out_dir)
    if stage is not None:
        claim_run_dir(out, cfg.trainer.resume, stage)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.trainer.seed)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    return cfg, out, resolve_device(cfg.trainer.device)


def read_split(path: str, cfg: Config, what: str) -> tuple[list[Row], int]:
    """The usable rows of ``path`` and how many ``data.bad_sample=skip`` left out."""
    if not path:
        raise ValueError(f"data.{what} is empty: point it at a .jsonl or .parquet file of rows")
    rows, skipped = read_rows(path, media_root=cfg.data.media_root or None, bad_sample=cfg.data.bad_sample)
    return rows, len(skipped)


def load_run_model(cfg: Config, device, rows):
    """The model and tokenizer of `model.path` (the tiny model trains its tokenizer on `rows`)."""
    texts = corpus_texts(rows) if cfg.model.path == "tiny" else None
    return load_model(cfg.model, device, tokenizer_texts=texts, seed=cfg.trainer.seed)
