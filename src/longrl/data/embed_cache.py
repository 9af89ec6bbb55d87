"""On-disk cache of video and image embeddings (the vision tower's output), one safetensors file
per video or image.

An entry is keyed by what determines the embeddings:

* the file's content hash (sha256 of its bytes, so a renamed copy still hits and an edited file
  misses),
* the frame spec (sampling and resize settings, the tower's patch geometry; an image's are its
  own resize bounds, ``data.image_min_pixels``/``image_max_pixels``),
* the vision-weights fingerprint (:func:`vision_fingerprint`).

All three are also stored in the file's metadata, with the tensor's shape, dtype and sha256.
Every read checks them: an entry that does not match what the caller expects (a stale or
mismatched file, a truncated or corrupt one) is reported in the log and treated as missing, so
the caller recomputes and overwrites it. It is never silently used. Writes go to a temporary file
renamed into place, so a crash never leaves a half-written entry under a valid name.

When the vision tower trains (``model.train_vision=true``) embeddings change every step: the cache
is bypassed (with a message) and the tower runs once per group, with gradients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger("longrl.data.embed_cache")

FORMAT_VERSION = 1
# Towers with at most this many weights are hashed in full; larger ones by a strided sample.
FULL_HASH_MAX_ELEMENTS = 64 * 2**20
SAMPLE_PER_PARAM = 65536


# ----------------------------------------------------------------------------- identities


_content_hashes: dict[tuple[str, int, int], str] = {}


def video_content_hash(path: str | Path) -> str:
    """sha256 of the file's bytes; memoized per (path, size, mtime) so a step re-hashes nothing."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _content_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _content_hashes[memo] = digest.hexdigest()
    return _content_hashes[memo]


def frame_spec(data_cfg, model=None, *, image: bool = False) -> dict[str, Any]:
    """Everything besides the file and the weights that shapes the embeddings: the sampling and
    resize settings of ``data_cfg`` (as ``longrl.data.dataset.load_vision`` uses them, for a video
    or an ``image``) and the tower's patch geometry."""
    spec: dict[str, Any]
    if image:
        spec = {
            "image": True,
            "min_pixels": int(data_cfg.image_min_pixels),
            "max_pixels": int(data_cfg.image_max_pixels),
        }
    else:
        spec = {
            "num_frames": int(data_cfg.num_frames),
            "fps": 0.0 if data_cfg.num_frames > 0 else float(data_cfg.fps),
            "max_frames": int(data_cfg.max_frames),
            "min_pixels": int(data_cfg.min_pixels),
            "max_pixels": int(data_cfg.max_pixels),
        }
    if model is not None:
        vc = model.config.vision_config
        spec.update(
            patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size
        )
    audio = getattr(data_cfg, "audio", "none")
    if not image and audio != "none":  # the video's sound track joins the embeddings (omni models)
        from longrl.data import audio as audio_lib

        spec.update(
            audio=audio,
            audio_sampling_rate=audio_lib.SAMPLING_RATE,
            audio_mel_bins=audio_lib.NUM_MEL_BINS,
            audio_hop=audio_lib.HOP_LENGTH,
            audio_max_seconds=audio_lib.CHUNK_SECONDS,
        )
        if model is not None:  # TMRoPE's chunking decides how the two interleave
            spec.update(
                position_id_per_seconds=model.config.position_id_per_seconds,
                seconds_per_chunk=model.config.seconds_per_chunk,
            )
    return spec


@torch.no_grad()
def vision_fingerprint(model, *, full: bool | None = None) -> str:
    """A hash of the vision tower's weights (names, shapes, dtypes and values).

    Towers up to ``FULL_HASH_MAX_ELEMENTS`` weights (and ``full=True``) hash every value. Larger
    ones (the 3B's tower has 670M) hash, per parameter, ``SAMPLE_PER_PARAM`` evenly strided values
    plus the float64 sum and sum of squares of all of them: any retrained, fine-tuned or other
    checkpoint changes it, yet it costs milliseconds on the GPU. (A change confined to unsampled
    elements that preserves both sums would go unnoticed; pass ``full=True`` to rule that out.)"""
    from longrl.models.family import family_of

    family = family_of(model)
    params = sorted(family.vision_tower(model).state_dict().items())
    audio = family.audio_tower(model)
    if audio is not None:  # an omni model's embeddings hold its audio tower's output too
        params += sorted((f"audio.{k}", v) for k, v in audio.state_dict().items())
    if full is None:
        full = sum(p.numel() for _, p in params) <= FULL_HASH_MAX_ELEMENTS
    digest = hashlib.sha256(f"longrl-vision-v{FORMAT_VERSION}-{'full' if full else 'sampled'}".encode())
    for name, p in params:
        digest.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if full:
            values = flat
        else:
            step = max(1, flat.numel() // SAMPLE_PER_PARAM)
            wide = flat.double()
            sums = torch.stack([wide.sum(), wide.square().sum()])
            values = torch.cat([flat[::step].double(), sums])
        # float32 holds bf16/fp16/fp32 values exactly; the sampled path is already float64
        digest.update((values if values.dtype == torch.float64 else values.float()).cpu().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the cache


@dataclass
class CacheEntry:
    embeds: torch.Tensor  # [V, hidden]
    meta: dict[str, Any]  # what `put` stored: identity, grid_thw, second_per_grid, ...


def _tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()


class EmbedCache:
    """A directory of ``<key[:2]>/<key>.safetensors`` entries (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def identity(content_hash: str, frame_spec: dict, vision_fingerprint: str) -> dict[str, str]:
        return {
            "format": str(FORMAT_VERSION),
            "content_hash": content_hash,
            "frame_spec": json.dumps(frame_spec, sort_keys=True),
            "vision_fingerprint": vision_fingerprint,
        }

    @classmethod
    def key(cls, content_hash: str, frame_spec: dict, vision_fingerprint: str) -> str:
        ident = cls.identity(content_hash, frame_spec, vision_fingerprint)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def put(self, key: str, tensor: torch.Tensor, meta: dict[str, Any]) -> Path:
        """Write ``tensor`` with ``meta`` (JSON-able values) atomically under ``key``."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = tensor.detach().contiguous().cpu()
        stored = {k: json.dumps(v) for k, v in meta.items()}
        stored.update(
            key=key, shape=json.dumps(list(tensor.shape)), dtype=str(tensor.dtype), sha256=_tensor_sha256(tensor)
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embeds": tensor}, tmp, metadata=stored)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def get_entry(self, key: str, expect: dict[str, Any] | None = None) -> CacheEntry | None:
        """The entry under ``key``, or None when absent or unusable (reason logged).

        ``expect`` maps meta fields to the values the caller needs (e.g. the identity); any
        difference makes the entry stale."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = f.metadata() or {}
                embeds = f.get_tensor("embeds")
        except Exception as err:  # truncated / corrupt file: safetensors cannot parse it
            log.warning("embedding cache entry %s is unreadable (%s); recomputing it", path, err)
            return None
        problem = None
        if stored.get("key") != key:
            problem = f"it was written for key {stored.get('key')!r}"
        elif stored.get("shape") != json.dumps(list(embeds.shape)) or stored.get("dtype") != str(embeds.dtype):
            problem = "its tensor does not match its recorded shape/dtype"
        elif stored.get("sha256") != _tensor_sha256(embeds):
            problem = "its tensor bytes do not match their recorded sha256 (corrupt file)"
        else:
            meta = {k: json.loads(v) for k, v in stored.items() if k not in ("key", "shape", "dtype", "sha256")}
            for field_name, want in (expect or {}).items():
                if meta.get(field_name) != want:
                    problem = f"its {field_name} is {meta.get(field_name)!r}, expected {want!r}"
                    break
        if problem:
            log.warning("embedding cache entry %s is stale: %s; recomputing it", path, problem)
            return None
        return CacheEntry(embeds, meta)

    def get(self, key: str, expect: dict[str, Any] | None = None) -> torch.Tensor | None:
        entry = self.get_entry(key, expect)
        return None if entry is None else entry.embeds


# ----------------------------------------------------------------------------- use in a run


@dataclass
class VideoEmbedder:
    """A row's video or image -> (VisionInputs, embeddings) for one run: the cache when it can,
    else the tower.

    ``cache`` None, or ``train_vision``, means no cache (the latter says so once). On a cache hit
    the file is neither decoded nor preprocessed: the returned VisionInputs hold the grid and
    timing (for M-RoPE positions) and empty pixels."""

    model: Any
    data_cfg: Any
    cache: EmbedCache | None = None
    train_vision: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"hits": 0, "computed": 0})
    _fingerprint: str | None = None
    _warned: bool = False

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # the tower is frozen whenever the cache is in use
            self._fingerprint = vision_fingerprint(self.model)
        return self._fingerprint

    def lookup(self, path: str | Path, *, image: bool = False) -> tuple[str, dict[str, str]]:
        """(key, identity) of the entry of the video (or ``image``) at ``path``."""
        spec = frame_spec(self.data_cfg, self.model, image=image)
        parts = (video_content_hash(path), spec, self.fingerprint())
        return EmbedCache.key(*parts), EmbedCache.identity(*parts)

    def __call__(self, row) -> tuple[Any, torch.Tensor | None]:
        """(VisionInputs, embeddings [V, hidden] or None when the tower trains) of ``row``'s video
        or image. Raises ``longrl.data.video.VideoError`` (``ImageError``) for a bad file, like
        ``load_vision``."""
        from longrl.data.dataset import load_vision
        from longrl.data.video import ImageError, VideoError
        from longrl.dist.ulysses import sequence_parallel
        from longrl.models.family import family_of
        from longrl.models.inputs import AudioInputs, VisionInputs

        if self.train_vision or self.cache is None:
            if self.train_vision and self.cache is not None and not self._warned:
                log.info(
                    "model.train_vision=true: the embedding cache (%s) is bypassed; the vision tower "
                    "runs once per group with gradients",
                    self.cache.root,
                )
                self._warned = True
            return load_vision(row, self.data_cfg), None
        media = media_path(row)
        if not Path(media).is_file():  # a missing file is a bad sample, like a corrupt one
            error = ImageError if row.image else VideoError
            raise error(media, "file not found", "check the path in the dataset row and data.media_root")
        key, ident = self.lookup(media, image=bool(row.image))
        entry = self.cache.get_entry(key, expect=ident)
        # Under sequence parallelism the tower's forward is a collective of the sp group: its ranks
        # encode together unless every one of them found the entry (another rank may write it between lookups).
        if not sequence_parallel(self.model).all_true(entry is not None):
            entry = None
        if entry is not None:
            self.stats["hits"] += 1
            patch_dim = (
                3 * self.model.config.vision_config.temporal_patch_size * self.model.config.vision_config.patch_size**2
            )
            vision = VisionInputs(
                torch.empty(0, patch_dim), torch.tensor(entry.meta["grid_thw"]), entry.meta["second_per_grid"]
            )
            if entry.meta.get("audio_frames") is not None:  # the layout needs the audio's length only
                vision.audio = AudioInputs(torch.empty(0, entry.meta["audio_frames"]), entry.meta["audio_in_video"])
            return vision, entry.embeds
        loaded = load_vision(row, self.data_cfg)
        assert loaded is not None  # the row has a video or image (looked up above)
        vision = loaded
        with torch.no_grad():
            embeds = family_of(self.model).encode_video(self.model, vision)
        self.cache.put(
            key,
            embeds,
            {
                **ident,
                "grid_thw": vision.grid_thw.tolist(),
                "second_per_grid": vision.second_per_grid,
                "audio_frames": None if vision.audio is None else int(vision.audio.features.shape[-1]),
                "audio_in_video": None if vision.audio is None else vision.audio.in_video,
                "media": str(media),
            },
        )
        self.stats["computed"] += 1
        return vision, embeds


def media_path(row) -> str:
    """The row's video or image file (a row has at most one)."""
    return str(row.video or row.image)


@dataclass
class PrecomputeStats:
    files: int = 0  # distinct videos and images
    hits: int = 0  # already cached and valid
    computed: int = 0  # encoded now (new or stale entries)
    skipped: list[str] = field(default_factory=list)  # row ids with a missing / corrupt video or image
    seconds: float = 0.0


def precompute_embeds(model, rows, data_cfg, cache: EmbedCache, *, progress: bool = False) -> PrecomputeStats:
    """Fill ``cache`` with the embeddings of every row's video or image (``longrl cache-embeds``).

    Rows sharing a file are encoded once. A bad file is skipped and listed under
    ``data.bad_sample=skip``, and raises under ``error``."""
    from longrl.data.video import VideoError

    start = time.perf_counter()
    embedder = VideoEmbedder(model, data_cfg, cache)
    stats = PrecomputeStats()
    seen: set[str] = set()
    todo = [r for r in rows if r.video or r.image]
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="cache video and image embeddings")
    for row in todo:
        try:
            if media_path(row) in seen:
                continue
            seen.add(media_path(row))
            stats.files += 1
            embedder(row)
        except (VideoError, FileNotFoundError) as err:
            if data_cfg.bad_sample == "error":
                raise
            stats.skipped.append(row.id)
            log.warning("skipping row %s: %s", row.id, err)
    stats.hits, stats.computed = embedder.stats["hits"], embedder.stats["computed"]
    stats.seconds = time.perf_counter() - start
    return stats
