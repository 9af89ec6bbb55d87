"""The entry point behind ``longrl cache-embeds``: the vision tower's video and image embeddings of every
train and test row, written to ``data.embed_cache_dir`` (:mod:`longrl.data.embed_cache`)."""

from __future__ import annotations

from longrl.data.embed_cache import EmbedCache, PrecomputeStats, precompute_embeds
from longrl.infra.setup import load_run_model, read_split, setup_run


def run_cache_embeds(config_path, overrides) -> PrecomputeStats:
    cfg, out, device = setup_run(config_path, overrides)
    if not cfg.data.embed_cache_dir:
        raise ValueError("data.embed_cache_dir is empty: say where the embeddings go, e.g. data.embed_cache_dir=cache/")
    rows = []
    for path, what in ((cfg.data.train_path, "train_path"), (cfg.data.test_path, "test_path")):
        if path:
            rows += read_split(path, cfg, what)[0]
    model, _ = load_run_model(cfg, device, rows)
    stats = precompute_embeds(model, rows, cfg.data, EmbedCache(cfg.data.embed_cache_dir))
    print(stats)
    return stats
