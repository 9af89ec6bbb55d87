"""Video decoding and frame sampling (PyAV), and mp4 writing for synthetic data.

Frame sampling follows transformers' Qwen2VLVideoProcessor.sample_frames exactly (uniform over
the whole video for a frame count; `fps` frames per second capped by max_frames otherwise), so
a model sees the same frames here as with the official processor. Decoding is one forward pass
with no seeking; only the sampled frames are converted to RGB and kept, so an hour-long video
costs memory for the sampled frames alone.

PyAV is imported inside the functions that decode or encode, so frame-index sampling also works
on machines without PyAV.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

TEMPORAL_PATCH_SIZE = 2  # Qwen2.5-VL groups frames in pairs; frame counts are rounded to this
TRUNCATION_TOLERANCE = 0.02  # a video may hold this fraction (+ 2 frames) less than it declares


class VideoError(Exception):
    """A video (or image, :class:`ImageError`) that cannot be used. The message names the path,
    the cause and a fix."""

    kind = "video"

    def __init__(self, path: str | Path, cause: str, hint: str = "") -> None:
        self.path = str(path)
        self.cause = cause
        message = f"{self.kind} {self.path}: {cause}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class ImageError(VideoError):
    kind = "image"


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    timestamps: list[float]  # seconds of each sampled frame
    sample_fps: float  # effective sampling rate of the returned frames (per second of video time)
    duration: float  # seconds


def sample_frame_indices(
    total_frames: int,
    video_fps: float,
    *,
    num_frames: int = 0,
    fps: float = 0.0,
    max_frames: int = 768,
    min_frames: int = 4,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
) -> list[int]:
    """Indices of the frames to keep, as Qwen2VLVideoProcessor.sample_frames computes them.

    Exactly one of num_frames > 0 (uniform over the whole video, rounded to a multiple of
    temporal_patch_size) or fps > 0 (video seconds * fps, clamped to [min_frames, max_frames] and
    to the video length, floored to a multiple of temporal_patch_size). Where the official
    function fails (a video shorter than the request, or shorter than temporal_patch_size) this
    keeps every frame instead. The result is padded by repeating the last index up to a multiple
    of temporal_patch_size, as the official patchify pads frames.
    """
    if (num_frames > 0) == (fps > 0):
        raise ValueError(f"give exactly one of num_frames > 0 or fps > 0, got num_frames={num_frames}, fps={fps}")
    if total_frames <= 0:
        raise ValueError(f"total_frames must be > 0, got {total_frames}")
    tp = temporal_patch_size
    if num_frames > 0:
        # round() is Python's half-to-even, as in the official code: num_frames=5 -> 4, 7 -> 8.
        count = max(tp, round(num_frames / tp) * tp)
    else:
        if video_fps <= 0:
            raise ValueError(f"sampling at fps={fps} needs the video's frame rate, got video_fps={video_fps}")
        cap = math.floor(min(max_frames, total_frames) / tp) * tp
        wanted = min(max(total_frames / video_fps * fps, min_frames), cap, total_frames)
        count = math.floor(wanted / tp) * tp
    count = min(count, total_frames)
    if count <= 0:
        count = total_frames  # shorter than one temporal patch: keep all, padding fills the rest
    # torch.arange in float32 then truncation, exactly as the official code: the values differ
    # from float64 arithmetic at some boundaries. Rounding can add one index equal to
    # total_frames (738 frames, 62 wanted): the official PyAV reader never reaches it and
    # returns the frames before it, so it is dropped here too.
    indices = [i for i in torch.arange(0, total_frames, total_frames / count).int().tolist() if i < total_frames]
    if pad := -len(indices) % tp:
        indices += [indices[-1]] * pad
    return indices


def _sampled_fps(num_sampled: int, total_frames: int, video_fps: float) -> float:
    # transformers' VideoMetadata.sampled_fps; second_per_grid_ts = temporal_patch_size / this.
    return num_sampled / total_frames * video_fps


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError(
            path, f"cannot be opened as a video ({e})", "the file is corrupt or not a video; re-encode or remove it"
        ) from e


def _count_frames_by_demux(path: Path) -> int:
    """Frame count from packets, for containers whose header has none (webm, some mkv)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_selected(path: Path, indices: list[int]) -> tuple[np.ndarray | None, int, int]:
    """One pass over the video keeping only the frames at `indices` (which may repeat).

    Returns (frames [len(indices), H, W, 3], or None if a wanted frame lies past the end; the
    number of frames decoded; the number of frames the file holds). Packets the decoder rejects
    (a damaged stretch or a cut-off tail) are skipped, as ffmpeg does, with a warning. Past the
    last wanted frame the packets are only counted, not decoded, so a cut-off tail is still seen."""
    import av

    slots: dict[int, list[int]] = {}
    for slot, index in enumerate(indices):
        slots.setdefault(index, []).append(slot)
    last = max(indices)
    out: np.ndarray | None = None
    decoded = 0
    packets = 0
    bad_packets = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding dominates the cost
        for packet in container.demux(stream):
            packets += packet.size > 0
            if decoded > last:
                continue  # every wanted frame is in hand: count the rest, decode nothing
            try:
                frames = stream.decode(packet)  # an empty packet at the end flushes the decoder
            except av.error.InvalidDataError:
                bad_packets += 1
                continue
            for frame in frames:
                index = decoded
                decoded += 1
                if index in slots:
                    if out is None:
                        out = np.empty((len(indices), frame.height, frame.width, 3), dtype=np.uint8)
                    if (frame.height, frame.width) != out.shape[1:3]:  # resolution change mid-stream
                        frame = frame.reformat(width=out.shape[2], height=out.shape[1])
                    rgb = frame.to_ndarray(format="rgb24")
                    for s in slots[index]:
                        out[s] = rgb
    _warn_bad_packets(path, bad_packets)
    if decoded > last:  # stopped decoding early: every packet of the tail is taken as a frame
        return out, decoded, packets - bad_packets
    return None, decoded, decoded


def _warn_bad_packets(path: Path, bad_packets: int) -> None:
    if bad_packets:
        logger.warning("video %s: skipped %d undecodable packet(s); the file is damaged", path, bad_packets)


def _declared_seconds(container, stream) -> float | None:
    """The video's length as its container states it: the stream's own duration, else the
    container's when the video is its only stream (another stream, e.g. a longer audio track,
    would make the container's duration say nothing about the video)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        import av

        return container.duration / av.time_base
    return None


def _check_complete(path: Path, frames_present: int, video_fps: float, declared: float | None) -> None:
    """A file that holds less video than its container declares was cut off (a copy or download
    that stopped): with the index at the front it still opens and would silently decode as its
    first seconds. A shortfall within TRUNCATION_TOLERANCE of the length plus two frames (edit
    lists, a damaged last packet) is accepted."""
    if declared is None or video_fps <= 0:
        return
    present = frames_present / video_fps
    if declared - present > TRUNCATION_TOLERANCE * declared + 2 / video_fps:
        raise VideoError(
            path, f"decoded {present:.1f} s of {declared:.1f} s: the file is truncated; re-encode or remove it"
        )


def decode_video(
    path: str | Path,
    *,
    num_frames: int = 0,
    fps: float = 0.0,
    max_frames: int = 768,
    min_frames: int = 4,
) -> DecodedVideo:
    """Decode and sample a video file; see sample_frame_indices for which frames are kept.

    Raises VideoError (naming the path) for a missing, unreadable, empty or truncated video."""
    if (num_frames > 0) == (fps > 0):
        raise ValueError(f"give exactly one of num_frames > 0 or fps > 0, got num_frames={num_frames}, fps={fps}")
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found", "check the path in the dataset row and the video root directory")
    import av

    try:
        with _open(path) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream", "remove the row or point it at a video file")
            stream = container.streams.video[0]
            # The same metadata transformers' PyAV reader uses: header frame count and average rate.
            total = stream.frames
            rate = stream.average_rate or stream.guessed_rate
            declared = _declared_seconds(container, stream)
            # frames / average rate is the stream's length; a guessed (nominal) rate says nothing about it
            length_fps = float(stream.average_rate) if stream.average_rate else 0.0
        video_fps = float(rate) if rate else 0.0
        if total <= 0:
            total = _count_frames_by_demux(path)
        if total <= 0:
            raise VideoError(path, "contains no frames", "re-encode the video or remove the row")
        if fps > 0 and video_fps <= 0:
            raise VideoError(path, "has no frame rate, so fps sampling is impossible", "sample with num_frames instead")

        def sample(total_frames: int) -> list[int]:
            return sample_frame_indices(
                total_frames, video_fps, num_frames=num_frames, fps=fps, max_frames=max_frames, min_frames=min_frames
            )

        indices = sample(total)
        frames, decoded, present = _decode_selected(path, indices)
        _check_complete(path, present, length_fps, declared)
        if frames is None:
            # The header over-counted frames (it happens with edit lists and damaged tails):
            # resample against the true count, which the first pass measured.
            if decoded == 0:
                raise VideoError(path, "contains no decodable frames", "re-encode the video or remove the row")
            total = decoded
            indices = sample(total)
            frames, _, _ = _decode_selected(path, indices)
            if frames is None:
                raise VideoError(path, "frame count changed between two reads", "check the file is not being written")
    except av.error.FFmpegError as e:
        raise VideoError(path, f"decoding failed ({e})", "the file is corrupt; re-encode or remove it") from e

    unique = len(set(indices))  # padding repeats are not sampled frames
    if video_fps > 0:
        timestamps = [i / video_fps for i in indices]
        sample_fps = _sampled_fps(unique, total, video_fps)
        duration = total / video_fps
    else:  # no rate in the container: report time in frames, 1 frame = 1 s
        timestamps = [float(i) for i in indices]
        sample_fps = unique / total
        duration = float(total)
    return DecodedVideo(frames=frames, timestamps=timestamps, sample_fps=sample_fps, duration=duration)


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as H.264 yuv420p (MPEG-4 part 2 if PyAV's ffmpeg lacks
    libx264), in the container the suffix names (.mp4; .mkv works too). yuv420p needs even sides,
    so an odd height or width is padded by one row/column repeating the edge pixels."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}  # visually lossless, quick
        else:
            stream.bit_rate = 8_000_000
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder
