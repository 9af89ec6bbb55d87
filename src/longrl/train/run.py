"""Config-driven entry points behind ``longrl train``, ``longrl eval`` and ``longrl cache-embeds``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from longrl.config import Config, load_config, save_config
from longrl.data.dataset import ExampleSet
from longrl.data.prompt import corpus_texts
from longrl.data.rows import Row, read_rows
from longrl.eval.evaluate import evaluate, markdown_table, write_report
from longrl.models.qwen2_5_vl import check_model_path, load_model, save_pretrained
from longrl.train.guard import require_finite_weights
from longrl.train.run_dir import claim_run_dir

log = logging.getLogger("longrl.run")


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


def _rows(path: str, cfg: Config, what: str) -> tuple[list[Row], int]:
    """The usable rows of ``path`` and how many ``data.bad_sample=skip`` left out."""
    if not path:
        raise ValueError(f"data.{what} is empty: point it at a .jsonl or .parquet file of rows")
    rows, skipped = read_rows(path, media_root=cfg.data.media_root or None, bad_sample=cfg.data.bad_sample)
    return rows, len(skipped)


def _model(cfg: Config, device, rows):
    texts = corpus_texts(rows) if cfg.model.path == "tiny" else None
    return load_model(cfg.model, device, tokenizer_texts=texts, seed=cfg.trainer.seed)


def sft_stage(model, tokenizer, data: ExampleSet, cfg: Config, log_dir: Path) -> list[float]:
    """CoT-SFT over the usable rows of ``data``, logging and checkpointing in ``log_dir`` (resumed
    from there under ``trainer.resume=auto``); returns the losses of the steps it ran."""
    from longrl.train.sft import train_sft

    examples = data.valid()
    return train_sft(model, tokenizer, examples, cfg, log_dir, skipped_rows=data.num_skipped)


def run_training(stage: str, config_path, overrides) -> None:
    from longrl.train.rl import train_rl

    from longrl.dist import init_distributed, shutdown

    cfg, out, device = setup_run(config_path, overrides, stage=stage)
    env = init_distributed(cfg.dist, cfg.trainer.device)  # torchrun's ranks, or one process
    if env.world_size > 1:
        if stage != "rl":
            raise ValueError(f"longrl train {stage} runs in one process; start it without torchrun "
                             f"(WORLD_SIZE={env.world_size}); only longrl train rl scales out")
        device = env.device
    rows, bad_rows = _rows(cfg.data.train_path, cfg, "train_path")
    model, tokenizer = _model(cfg, device, rows)
    if stage == "sft":
        sft_stage(model, tokenizer, ExampleSet(rows, cfg.data, progress=cfg.trainer.progress, bad_rows=bad_rows),
                  cfg, out)
    else:
        embedder = None
        if cfg.data.embed_cache_dir:
            from longrl.data.embed_cache import EmbedCache, VideoEmbedder

            embedder = VideoEmbedder(model, cfg.data, EmbedCache(cfg.data.embed_cache_dir), cfg.model.train_vision)
        train_rl(model, tokenizer, ExampleSet(rows, cfg.data, preload=False, embedder=embedder, bad_rows=bad_rows),
                 cfg, out)
    if env.world_size > 1:  # sharded weights: the last checkpoint (DCP, written by every rank) becomes the model
        from longrl.train.checkpoint import latest_complete
        from longrl.train.export import export_hf

        if env.is_main:
            export_hf(latest_complete(out / "checkpoints"), out / "model", overwrite=True)
        shutdown()
    else:
        require_finite_weights(model, f"the trained model ({out / 'model'})")
        save_pretrained(model, tokenizer, out / "model")
    if env.is_main:
        log.info("saved the trained model to %s", out / "model")


def run_eval(config_path, overrides, out_dir=None) -> dict:
    cfg, out, device = setup_run(config_path, overrides)
    rows, bad_rows = _rows(cfg.data.test_path, cfg, "test_path")
    if cfg.eval.max_rows:
        rows = rows[: cfg.eval.max_rows]
    model, tokenizer = _model(cfg, device, rows)
    data = ExampleSet(rows, cfg.data, preload=False, bad_rows=bad_rows)
    report = evaluate(model, tokenizer, data.valid(), max_new_tokens=cfg.eval.max_new_tokens,
                      batch_prompts=cfg.eval.batch_prompts, progress=cfg.trainer.progress)
    report["skipped_rows"] = data.num_skipped
    write_report(report, out_dir or out / "eval")
    print(markdown_table(report))
    return report


def run_cache_embeds(config_path, overrides) -> dict:
    from longrl.data.embed_cache import EmbedCache, precompute_embeds

    cfg, out, device = setup_run(config_path, overrides)
    if not cfg.data.embed_cache_dir:
        raise ValueError("data.embed_cache_dir is empty: say where the embeddings go, e.g. data.embed_cache_dir=cache/")
    rows = []
    for path, what in ((cfg.data.train_path, "train_path"), (cfg.data.test_path, "test_path")):
        if path:
            rows += _rows(path, cfg, what)[0]
    model, _ = _model(cfg, device, rows)
    stats = precompute_embeds(model, rows, cfg.data, EmbedCache(cfg.data.embed_cache_dir))
    print(stats)
    return stats
