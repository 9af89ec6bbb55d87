"""Video decoding and frame sampling: the right frames, the official sampling rule, clear errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longrl.data.video import VideoError, decode_video, sample_frame_indices, write_video

FIXTURES = Path(__file__).parent / "fixtures"
needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed")

GRAY_STEP = 8  # frame i is a solid gray of level 8*i: survives lossy coding, decodes back to i


def gray_frames(num: int, height: int = 32, width: int = 48) -> np.ndarray:
    levels = (np.arange(num) * GRAY_STEP).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num, height, width, 3)).copy()


def frame_ids(frames: np.ndarray) -> list[int]:
    means = frames.reshape(len(frames), -1).mean(axis=1)
    ids = np.round(means / GRAY_STEP).astype(int)
    assert np.abs(means - ids * GRAY_STEP).max() < 2, "coding noise too large to identify frames"
    return ids.tolist()


@pytest.fixture(scope="module")
def clip_30f_10fps(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, gray_frames(30), fps=10)
    return path


@needs_av
@pytest.mark.parametrize(
    "num_frames, expected",
    [
        (4, [0, 7, 15, 22]),  # arange(0, 30, 7.5) truncated
        (5, [0, 7, 15, 22]),  # round(5/2)=2 (half to even) -> 4 frames, as the official code
        (7, [0, 3, 7, 11, 15, 18, 22, 26]),  # round(7/2)=4 -> 8 frames
        (6, [0, 5, 10, 15, 20, 25]),
        (30, list(range(30))),
    ],
)
def test_decode_uniform_num_frames(clip_30f_10fps, num_frames, expected):
    video = decode_video(clip_30f_10fps, num_frames=num_frames)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (len(expected), 32, 48, 3)
    assert frame_ids(video.frames) == expected
    assert video.timestamps == pytest.approx([i / 10 for i in expected])
    assert video.duration == pytest.approx(3.0)
    assert video.sample_fps == pytest.approx(len(expected) / 30 * 10)


@needs_av
@pytest.mark.parametrize(
    "fps, max_frames, expected",
    [
        (2.0, 768, [0, 5, 10, 15, 20, 25]),  # 3 s * 2 fps = 6 frames
        (2.0, 4, [0, 7, 15, 22]),  # capped at max_frames, spread uniformly
        (0.5, 768, [0, 7, 15, 22]),  # 1.5 frames raised to min_frames=4
        (100.0, 768, list(range(30))),  # capped at the video's own frame count
    ],
)
def test_decode_at_fps(clip_30f_10fps, fps, max_frames, expected):
    video = decode_video(clip_30f_10fps, fps=fps, max_frames=max_frames)
    assert frame_ids(video.frames) == expected
    assert video.timestamps == pytest.approx([i / 10 for i in expected])
    assert video.sample_fps == pytest.approx(len(expected) / 3.0)


@needs_av
def test_short_video_and_odd_size_are_padded(tmp_path):
    path = tmp_path / "odd.mp4"
    write_video(path, gray_frames(3, height=31, width=45), fps=29.97)
    video = decode_video(path, num_frames=8)  # more than the video has: keep all, pad to even
    assert video.frames.shape == (4, 32, 46, 3)  # odd sides padded by one edge row/column
    assert frame_ids(video.frames) == [0, 1, 2, 2]
    assert video.timestamps[-1] == video.timestamps[-2]
    assert video.sample_fps == pytest.approx(29.97)  # 3 distinct frames of 3


@needs_av
def test_container_without_frame_count(tmp_path):
    # Matroska headers carry no frame count: decode_video counts packets instead.
    path = tmp_path / "clip.mkv"
    write_video(path, gray_frames(12), fps=6)
    video = decode_video(path, num_frames=4)
    assert frame_ids(video.frames) == [0, 3, 6, 9]
    assert video.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5])


@needs_av
def _faststart_clip(tmp_path) -> bytes:
    """30 intra frames at 10 fps, index (moov) in front of the data: a cut-off copy still opens."""
    import av

    # A zero-mean checker texture on top of the gray level makes every frame a sizeable intra
    # frame, so cutting the file drops whole frames.
    checker = ((np.indices((64, 64)).sum(0) // 4) % 2 * 2 - 1) * 12
    frames = gray_frames(30, 64, 64) + 40 + checker[None, :, :, None].astype(np.uint8)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index up front
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"g": "1"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def _decodable_frames(path: Path) -> int:
    import av

    real = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 30  # the header still claims every frame
        for packet in container.demux(stream):
            try:
                real += len(stream.decode(packet))
            except av.error.InvalidDataError:  # the cut-off last packet
                pass
    return real


@needs_av
def test_header_overcounting_frames_resamples_over_real_frames(tmp_path):
    # The last frame's bytes are cut: within the truncation tolerance (2% + 2 frames), so the
    # header's over-count is corrected by resampling over the frames that are really there.
    data = _faststart_clip(tmp_path)
    frame_bytes = len(data) // 40
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) - frame_bytes // 2])
    real = _decodable_frames(truncated)
    assert real == 29
    video = decode_video(truncated, num_frames=30)
    expected = sample_frame_indices(real, 10.0, num_frames=30)
    assert expected == list(range(29)) + [28] and len(video.frames) == 30  # padded to whole temporal patches
    # Frames past 25 overflow uint8 with the +40 offset and texture, so their ids are not readable.
    assert frame_ids(video.frames[:26].astype(np.int16) - 40) == list(range(26))
    assert video.timestamps[-1] == pytest.approx(2.8)
    assert video.duration == pytest.approx(real / 10)


@needs_av
def test_truncated_video_is_an_error_naming_the_path(tmp_path):
    # 60% of the file: it opens (the index is in front) and its first frames decode; before, it
    # was silently used as a shorter video. num_frames=4 wants frame 22, past the cut.
    data = _faststart_clip(tmp_path)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    real = _decodable_frames(truncated)
    assert 16 <= real < 22
    with pytest.raises(VideoError) as info:
        decode_video(truncated, num_frames=4)
    assert str(info.value) == (
        f"video {truncated}: decoded {real / 10:.1f} s of 3.0 s: the file is truncated; re-encode or remove it"
    )
    assert info.value.path == str(truncated)
    # num_frames=2 wants frames 0 and 15, both there: the packets past frame 15 are counted
    # (not decoded), so the cut is seen all the same.
    with pytest.raises(VideoError, match=r"decoded 1\.[6-9] s of 3\.0 s: the file is truncated"):
        decode_video(truncated, num_frames=2)


RSS_PEAK_SCRIPT = """
import os, sys, threading, time
import av  # loaded before the baseline: its libraries are not decoding memory
from longrl.data.video import decode_video
decode_video(sys.argv[1], num_frames=2)  # warm-up: codec set-up and first-use allocations
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base = peak = rss()
done = False
def sample():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.001)
sampler = threading.Thread(target=sample)
sampler.start()
video = decode_video(sys.argv[1], num_frames=4)
done = True
sampler.join()
print(max(peak, rss()) - base)
"""


@needs_av
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read memory use")
def test_decode_keeps_only_sampled_frames_in_memory(tmp_path):
    num, height, width = 200, 240, 320
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num, height, width, 3), dtype=np.uint8)
    for i in range(num):  # moving gradients: cheap to encode, every frame different
        frames[i, ..., 0], frames[i, ..., 1], frames[i, ..., 2] = (
            (x + 3 * i) % 256,
            (y + 2 * i) % 256,
            (x + y + i) % 256,
        )
    path = tmp_path / "long.mp4"
    write_video(path, frames, fps=25)
    # A fresh process, so the peak resident memory of decoding alone can be sampled.
    result = subprocess.run(
        [sys.executable, "-c", RSS_PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    growth = int(result.stdout.strip().splitlines()[-1])
    all_rgb = frames.nbytes  # 46 MB: what keeping every decoded frame would cost (measured ~53 MB)
    # Measured ~14 MB: the decoder's own buffers plus the 4 kept frames.
    assert growth < all_rgb // 2, f"decoding grew memory by {growth / 2**20:.1f} MiB"


@needs_av
def test_missing_video_names_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.mp4"
    with pytest.raises(VideoError) as info:
        decode_video(path, num_frames=4)
    assert str(path) in str(info.value) and "not found" in str(info.value)
    assert info.value.path == str(path)


@needs_av
@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage bytes, not a video" * 64])
def test_corrupt_video_names_path(tmp_path, content):
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        decode_video(path, fps=1.0)
    assert str(path) in str(info.value) and "corrupt" in str(info.value)


def test_exactly_one_sampling_mode_required(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        decode_video(tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="exactly one"):
        decode_video(tmp_path / "a.mp4", num_frames=4, fps=1.0)


@needs_av
def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32), fps=1)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8), dtype=np.uint8), fps=1)


def test_sampling_matches_official_fixtures():
    """Indices from transformers' Qwen2VLVideoProcessor.sample_frames (stored by
    scripts/make_vision_fixtures.py)."""
    cases = json.loads((FIXTURES / "qwen_vision.json").read_text())["sampling"]
    checked = 0
    for case in cases:
        if "indices" not in case:
            continue  # the official function raised; see test_sampling_where_official_fails
        ours = sample_frame_indices(
            case["total"],
            case["video_fps"],
            num_frames=case["num_frames"] or 0,
            fps=case["fps"] or 0.0,
            max_frames=case["max_frames"],
            min_frames=case["min_frames"],
        )
        assert ours == case["indices"], case
        checked += 1
    assert checked >= 25


def test_sampling_where_official_fails():
    # The official function raises here; longrl keeps what the video has and pads to even.
    assert sample_frame_indices(3, 30.0, num_frames=4) == [0, 1, 2, 2]
    assert sample_frame_indices(30, 10.0, num_frames=1) == [0, 15]  # round(1/2)=0 -> at least 2
    assert sample_frame_indices(1, 30.0, fps=1.0) == [0, 0]
    # float rounding in the official arange yields 63 indices, the last == 738 (past the end)
    indices = sample_frame_indices(738, 23.976, num_frames=62)
    assert len(indices) == 62 and max(indices) == 726 and indices[:3] == [0, 11, 23]
    with pytest.raises(ValueError, match="video_fps"):
        sample_frame_indices(30, 0.0, fps=1.0)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="official processor needs torchvision")
def test_sampling_matches_official_live():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = Qwen2VLVideoProcessor()
    rng = np.random.default_rng(1)
    for _ in range(200):
        total = int(rng.integers(8, 5000))
        video_fps = float(rng.choice([23.976, 24.0, 25.0, 29.97, 30.0, 60.0]))
        max_frames, min_frames = int(rng.choice([8, 64, 768])), 4
        if rng.random() < 0.5:
            kwargs = dict(num_frames=int(rng.integers(2, min(total, 300))))
        else:
            kwargs = dict(fps=float(rng.choice([0.1, 0.5, 1.0, 2.0, 4.0])))
        official = processor.sample_frames(
            metadata=VideoMetadata(total_num_frames=total, fps=video_fps),
            temporal_patch_size=2,
            min_frames=min_frames,
            max_frames=max_frames,
            **kwargs,
        )
        # The official list can end with index == total (float rounding); its PyAV reader never
        # reaches that frame, so the frames it returns are the ones before.
        official = [i for i in official.tolist() if i < total]
        official += official[-1:] * (len(official) % 2)  # patchify pads odd counts with the last frame
        ours = sample_frame_indices(total, video_fps, max_frames=max_frames, min_frames=min_frames, **kwargs)
        assert ours == official, (total, video_fps, max_frames, kwargs)
