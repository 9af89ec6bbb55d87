"""Stage (a): split a video into clips with PyAV, in one decoding pass.

Fixed mode cuts every ``clip_seconds``; scene mode also cuts where the picture changes (mean
absolute difference of consecutive frames, on a 32x32 thumbnail, above ``scene_threshold``), never
closer than ``min_clip_seconds`` to the clip's start. Each clip is written as its own mp4 (all its
frames, at the source rate) into a temporary name and renamed, so a kill never leaves a half clip
that a resumed run would trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longrl.data.video import VideoError, write_video
from longrl.datagen.config import SplitConfig


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    ys, xs = np.linspace(0, h - 1, 32).astype(int), np.linspace(0, w - 1, 32).astype(int)
    return rgb[ys][:, xs].astype(np.float32)


def split_video(path: str | Path, out_dir: Path, cfg: SplitConfig) -> list[dict]:
    """Clips of ``path`` as ``{"index", "start", "end", "path"}`` (seconds); raises VideoError."""
    import av

    if cfg.mode not in ("fixed", "scene"):
        raise ValueError(f"split.mode={cfg.mode!r}: use fixed or scene")
    if cfg.clip_seconds <= 0:
        raise ValueError(f"split.clip_seconds must be > 0, got {cfg.clip_seconds}")
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found", "check the videos path")
    out_dir.mkdir(parents=True, exist_ok=True)
    clips: list[dict] = []
    frames: list[np.ndarray] = []
    start = 0.0
    prev = None

    def flush(end: float, fps: float) -> None:
        if not frames:
            return
        target = out_dir / f"clip_{len(clips):04d}.mp4"
        tmp = target.with_suffix(".tmp.mp4")
        write_video(tmp, np.stack(frames), fps=fps)
        os.replace(tmp, target)
        clips.append({"index": len(clips), "start": round(start, 3), "end": round(end, 3), "path": str(target)})
        frames.clear()

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream", "remove it from the videos")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            count = 0
            for frame in container.decode(stream):
                t = count / rate  # frame index time: robust to missing pts
                count += 1
                rgb = frame.to_ndarray(format="rgb24")
                thumb = _thumb(rgb)
                cut = t - start >= cfg.clip_seconds - 1e-9
                if cfg.mode == "scene" and prev is not None and t - start >= cfg.min_clip_seconds:
                    cut = cut or float(np.abs(thumb - prev).mean()) > cfg.scene_threshold
                if cut and frames:
                    flush(t, rate)
                    start = t
                frames.append(rgb)
                prev = thumb
            flush(count / rate, rate)
    except av.error.FFmpegError as error:
        raise VideoError(path, f"decoding failed ({error})", "re-encode or remove it") from None
    if not clips:
        raise VideoError(path, "contains no frames", "re-encode or remove it")
    return clips
