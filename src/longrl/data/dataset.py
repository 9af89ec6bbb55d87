"""From dataset rows to model-ready examples: decode, sample, preprocess; skip what is broken.

A long run never dies for one bad file: under ``data.bad_sample=skip`` a missing, corrupt or
truncated video is logged with its path, counted, and left out (as are rows that do not fit the
schema, when the file is read: ``longrl.data.rows.read_rows``); under ``error`` it stops the run
with that message.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longrl.data.image import decode_image
from longrl.data.rows import Row
from longrl.data.video import VideoError, decode_video
from longrl.data.vision_preprocess import preprocess_image, preprocess_video
from longrl.models.inputs import AudioInputs, VisionInputs

if TYPE_CHECKING:
    import torch

log = logging.getLogger("longrl.data")

MAX_DRAWS = 10  # an RL step draws this many times for usable rows before the run stops


@dataclass
class Example:
    row: Row
    vision: VisionInputs | None  # preprocessed video or image (None for text-only rows)
    video_embeds: torch.Tensor | None = None  # the video's or image's, from the embedding cache when one is in use


def load_vision(row: Row, cfg) -> VisionInputs | None:
    """Decode and preprocess the row's video or image per ``cfg`` (a DataConfig), with the video's
    audio under ``data.audio``. Raises VideoError (ImageError for an image, AudioError for a video
    with no or a broken sound track)."""
    if row.image:
        image = decode_image(row.image)
        return preprocess_image(image, min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels)
    if not row.video:
        return None
    video = decode_video(
        row.video,
        num_frames=cfg.num_frames,
        fps=0.0 if cfg.num_frames > 0 else cfg.fps,
        max_frames=cfg.max_frames,
    )
    vision = preprocess_video(
        video.frames, sample_fps=video.sample_fps, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )
    if getattr(cfg, "audio", "none") != "none":  # the same file's sound track (AudioError, a VideoError, if none)
        from longrl.data.audio import audio_features

        vision.audio = AudioInputs(audio_features(row.video), in_video=cfg.audio == "in_video")
    return vision


class ExampleSet:
    """Rows with their preprocessed videos: decoded up front and kept (``preload``, for small data),
    or decoded on demand and dropped after use (long videos: host memory stays bounded)."""

    def __init__(
        self, rows: list[Row], cfg, *, preload: bool = True, progress: bool = False, embedder=None, bad_rows: int = 0
    ):
        self.rows = rows
        self.cfg = cfg
        self.embedder = embedder  # a longrl.data.embed_cache.VideoEmbedder: cached embeddings
        self.keep = preload
        self.bad_rows = bad_rows  # rows the data file's reader already skipped (schema problems)
        self.skipped: list[str] = []  # ids of rows whose video is bad
        self._cache: dict[int, Example] = {}
        self._bad: set[int] = set()
        if preload:
            indices = range(len(rows))
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc="decode videos", leave=False)
            for i in indices:
                self.get(i)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_skipped(self) -> int:
        """Rows left out so far: bad rows of the file and rows with a bad video."""
        return self.bad_rows + len(self.skipped)

    def get(self, index: int) -> Example | None:
        """The example at ``index``, or None when its video is bad and the policy is ``skip``."""
        if index in self._cache:
            return self._cache[index]
        if index in self._bad:
            return None
        row = self.rows[index]
        try:
            if self.embedder is not None and (row.video or row.image):
                example = Example(row, *self.embedder(row))
            else:
                example = Example(row, load_vision(row, self.cfg))
        except VideoError as err:
            if self.cfg.bad_sample == "error":
                raise
            self._bad.add(index)
            self.skipped.append(row.id)
            log.warning("skipping row %s: %s (%d skipped so far)", row.id, err, len(self.skipped))
            return None
        if self.keep:
            self._cache[index] = example
        return example

    def valid(self) -> list[Example]:
        return [e for e in (self.get(i) for i in range(len(self.rows))) if e is not None]

    def head(self, count: int) -> ExampleSet:
        """The first ``count`` rows as a set of their own, sharing what is already decoded."""
        part = ExampleSet(self.rows[:count], self.cfg, preload=False, embedder=self.embedder)
        part.keep = self.keep
        part._cache = {i: e for i, e in self._cache.items() if i < count}
        part._bad = {i for i in self._bad if i < count}
        return part


def draw_examples(
    data: ExampleSet, sampler: PromptSampler, count: int, agree_max: Callable[[int], int] = int
) -> list[Example]:
    """``count`` usable examples (this rank's share) from the sampler's next rows; rows with a bad
    video are replaced by further draws, up to MAX_DRAWS rounds (then as many as were found; none at
    all stops the run). ``agree_max`` takes the largest value over the data-parallel ranks: every
    rank draws the same rounds of the same size, so the sampler positions stay equal (a rank that
    needs fewer replacements than another drops the surplus of its share)."""
    examples: list[Example] = []
    for _ in range(MAX_DRAWS):
        need = agree_max(count - len(examples))
        if need == 0:
            return examples
        drawn = [e for e in (data.get(i) for i in sampler.next_indices(need * sampler.world)) if e is not None]
        examples += drawn[: count - len(examples)]
    if agree_max(0 if examples else 1):
        raise ValueError(
            f"{MAX_DRAWS} draws of rows found no usable one ({len(data.skipped)} of "
            f"{len(data)} rows have a bad video, see the warnings above). Fix: repair or remove those "
            "videos, or check data.train_path and data.media_root"
        )
    return examples


class PromptSampler:
    """Seeded shuffled passes over the examples; its position is part of a checkpoint.

    Under data parallelism every rank walks the same order and keeps its share of each draw
    (``rank``, ``rank + world``, ...), so the state is the same on every rank and independent of
    the world size: a resume at another world size neither repeats nor skips a prompt."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size = size
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.cursor = 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        return order

    def next_indices(self, count: int) -> list[int]:
        """This rank's share of the next ``count`` draws (all of them in one process)."""
        out: list[int] = []
        while len(out) < count:
            if self.cursor == self.size:
                self.epoch += 1
                self.cursor = 0
                self._order = self._shuffle()
            out.append(self._order[self.cursor])
            self.cursor += 1
        return out[self.rank :: self.world]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._shuffle()
