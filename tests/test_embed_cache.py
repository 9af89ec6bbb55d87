"""The on-disk video-embedding cache: round trip, staleness and corruption detection, fingerprints,
and its use in a run (hit without decoding, recompute on change, bypass when the tower trains)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from longrl.config import DataConfig
from longrl.data import dataset
from longrl.data.embed_cache import (
    EmbedCache,
    VideoEmbedder,
    frame_spec,
    precompute_embeds,
    video_content_hash,
    vision_fingerprint,
)
from longrl.data.rows import Row
from longrl.models.adapter import build_prompt, load_model
from longrl.models.config import ModelConfig
from longrl.models.qwen2_5_vl import encode_video

SPEC = {"num_frames": 8, "fps": 0.0, "max_frames": 768, "min_pixels": 3136, "max_pixels": 200704}


def test_key_depends_on_every_part():
    k = EmbedCache.key("abc", SPEC, "fp1")
    assert k == EmbedCache.key("abc", dict(reversed(SPEC.items())), "fp1")  # order-free spec
    assert (
        len(
            {
                k,
                EmbedCache.key("abd", SPEC, "fp1"),
                EmbedCache.key("abc", {**SPEC, "num_frames": 16}, "fp1"),
                EmbedCache.key("abc", SPEC, "fp2"),
            }
        )
        == 4
    )


def test_put_get_round_trip_atomic(tmp_path):
    cache = EmbedCache(tmp_path)
    key = EmbedCache.key("abc", SPEC, "fp")
    assert cache.get(key) is None
    embeds = torch.randn(12, 8).to(torch.bfloat16)
    ident = EmbedCache.identity("abc", SPEC, "fp")
    cache.put(key, embeds, {**ident, "grid_thw": [[4, 2, 6]], "second_per_grid": 0.5})
    entry = cache.get_entry(key, expect=ident)
    assert torch.equal(entry.embeds, embeds) and entry.embeds.dtype == torch.bfloat16
    assert entry.meta["grid_thw"] == [[4, 2, 6]] and entry.meta["second_per_grid"] == 0.5
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.safetensors"]  # no temp left


def test_stale_truncated_and_corrupt_entries_are_refused(tmp_path, caplog):
    cache = EmbedCache(tmp_path)
    ident = EmbedCache.identity("abc", SPEC, "fp-new")
    key = EmbedCache.key("abc", SPEC, "fp-new")
    embeds = torch.randn(64, 16)
    caplog.set_level(logging.WARNING, logger="longrl.data.embed_cache")

    cache.put(key, embeds, EmbedCache.identity("abc", SPEC, "fp-old"))  # e.g. a file copied in by hand
    assert cache.get(key, expect=ident) is None
    assert "stale" in caplog.text and "vision_fingerprint" in caplog.text and "fp-old" in caplog.text

    cache.put(key, embeds, ident)
    assert torch.equal(cache.get(key, expect=ident), embeds)
    raw = cache.path(key).read_bytes()
    cache.path(key).write_bytes(raw[:-100])  # truncated
    caplog.clear()
    assert cache.get(key, expect=ident) is None and "unreadable" in caplog.text

    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # one byte of tensor data
    cache.path(key).write_bytes(bytes(flipped))
    caplog.clear()
    assert cache.get(key, expect=ident) is None and "sha256" in caplog.text

    other = EmbedCache.key("zzz", SPEC, "fp-new")
    cache.path(other).parent.mkdir(exist_ok=True)
    cache.path(other).write_bytes(raw)  # a valid file under the wrong name
    caplog.clear()
    assert cache.get(other) is None and "written for key" in caplog.text


@pytest.fixture(scope="module")
def tiny_model():
    cfg = ModelConfig(dtype="float32", train_vision=False)
    return load_model(cfg, tokenizer_texts=["which colour moved first, red or blue?"] * 4)


def test_vision_fingerprint_full_and_sampled(tiny_model):
    model, _ = tiny_model
    for full in (True, False):
        fp = vision_fingerprint(model, full=full)
        assert fp == vision_fingerprint(model, full=full) and len(fp) == 64
        weight = model.model.visual.blocks[0].mlp.down_proj.weight
        with torch.no_grad():
            weight[3, 5] += 1e-3  # a single weight: the full hash sees it; the sampled one via the sums
            changed = vision_fingerprint(model, full=full)
            weight[3, 5] -= 1e-3
        assert changed != fp
        with torch.no_grad():
            model.model.language_model.layers[0].mlp.down_proj.weight[0, 0] += 1.0  # not the tower
            assert vision_fingerprint(model, full=full) == fp
            model.model.language_model.layers[0].mlp.down_proj.weight[0, 0] -= 1.0
    assert vision_fingerprint(model, full=True) != vision_fingerprint(model, full=False)


def _write_video(path, seed):
    from longrl.data.video import write_video

    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), fps=4.0)


def test_run_hits_without_decoding_and_recomputes_on_change(tiny_model, tmp_path, monkeypatch, caplog):
    model, tok = tiny_model
    video = tmp_path / "a.mp4"
    _write_video(video, 0)
    data_cfg = DataConfig(num_frames=4, min_pixels=56 * 56, max_pixels=56 * 56)
    rows = [
        Row("r1", str(video), "q?", ["x", "y"], "A"),
        Row("r2", str(video), "q2?", ["x", "y"], "B"),
        Row("r3", str(tmp_path / "missing.mp4"), "q?", ["x", "y"], "A"),
    ]
    cache = EmbedCache(tmp_path / "cache")

    stats = precompute_embeds(model, rows, data_cfg, cache)
    assert (stats.files, stats.computed, stats.hits, stats.skipped) == (2, 1, 0, ["r3"])
    fresh_vision = dataset.load_vision(rows[0], data_cfg)
    fresh = encode_video(model, fresh_vision)

    decodes = []
    real_load_vision = dataset.load_vision
    monkeypatch.setattr(dataset, "load_vision", lambda *a: decodes.append(a) or real_load_vision(*a))
    embedder = VideoEmbedder(model, data_cfg, cache)
    vision, embeds = embedder(rows[1])
    assert decodes == [] and embedder.stats == {"hits": 1, "computed": 0}
    assert torch.allclose(embeds, fresh, atol=1e-6)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q?"}]}]
    from_cache = build_prompt(model, tok, messages, vision, video_embeds=embeds)
    from_video = build_prompt(model, tok, messages, fresh_vision)
    assert torch.equal(from_cache.input_ids, from_video.input_ids)
    assert torch.equal(from_cache.position_ids, from_video.position_ids)
    assert from_cache.next_position == from_video.next_position

    # retrained tower: new fingerprint, so the old entry is not used; the video is re-encoded
    with torch.no_grad():
        model.model.visual.merger.mlp[0].weight.mul_(1.5)
    try:
        changed = VideoEmbedder(model, data_cfg, cache)
        _, embeds2 = changed(rows[0])
        assert changed.stats == {"hits": 0, "computed": 1} and len(decodes) == 1
        assert torch.allclose(embeds2, encode_video(model, fresh_vision), atol=1e-6)
        assert not torch.allclose(embeds2, fresh, atol=1e-3)
    finally:
        with torch.no_grad():
            model.model.visual.merger.mlp[0].weight.div_(1.5)

    # another frame spec is another entry
    assert (
        precompute_embeds(model, rows[:1], DataConfig(num_frames=8, min_pixels=3136, max_pixels=3136), cache).computed
        == 1
    )
    assert frame_spec(data_cfg, model)["merge_size"] == 2

    # a trainable tower bypasses the cache, saying so once
    caplog.set_level(logging.INFO, logger="longrl.data.embed_cache")
    training = VideoEmbedder(model, data_cfg, cache, train_vision=True)
    vision3, embeds3 = training(rows[0])
    training(rows[1])
    assert embeds3 is None and vision3.pixel_values.numel() > 0
    assert caplog.text.count("bypassed") == 1
    assert video_content_hash(video) == video_content_hash(str(video))
