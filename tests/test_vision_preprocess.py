"""Qwen vision preprocessing: hand-checked rules, then equality with the official processors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longrl.data.video import sample_frame_indices
from longrl.data.vision_preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MEAN,
    IMAGE_MIN_PIXELS,
    IMAGE_STD,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    normalize_,
    patchify,
    preprocess_image,
    preprocess_video,
    resize_bicubic,
    smart_resize,
)

FIXTURES = Path(__file__).parent / "fixtures"
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="official processors need torchvision"
)


@pytest.mark.parametrize(
    "hw, kwargs, expected",
    [
        ((70, 90), {}, (56, 84)),  # rounded to multiples of 28, area within bounds
        ((28, 56), {"min_pixels": 28 * 28}, (28, 56)),  # already fits
        ((28, 56), {}, (56, 84)),  # 1568 < 3136: beta=sqrt(2), ceil(1.41)=2, ceil(2.83)=3
        ((20, 30), {"min_pixels": 1568}, (56, 56)),  # beta=1.617: ceil(1.15)=2, ceil(1.73)=2
        (
            (70, 90),
            {"min_pixels": VIDEO_MIN_PIXELS, "max_pixels": VIDEO_MAX_PIXELS},
            (280, 364),
        ),  # ceil(9.98), ceil(12.83)
        ((10, 900), {}, (28, 532)),  # beta=0.590: ceil(0.21)=1, ceil(18.97)=19
        ((120, 90), {"min_pixels": 784, "max_pixels": 3136}, (56, 28)),  # beta=1.856: floor(2.31), floor(1.73)
        ((4000, 3000), {"max_pixels": IMAGE_MAX_PIXELS}, (1148, 840)),  # beta=3.458: floor(41.3), floor(30.98)
        ((28, 5000), {"max_pixels": 3136}, (28, 728)),  # height floors to 0, clamped up to one factor
    ],
)
def test_smart_resize_hand_computed(hw, kwargs, expected):
    assert smart_resize(*hw, **kwargs) == expected


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2001)


def test_official_pixel_defaults():
    assert (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS) == (3136, 1003520)
    assert (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS) == (100352, 602112)


def test_patch_order():
    # Each value encodes (t, c, y, x) so a flattened patch can be read back.
    t, c, h, w = 2, 3, 56, 56
    tt, cc, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    frames = (tt * 1_000_000 + cc * 100_000 + yy * 100 + xx).double()
    flat, grid = patchify(frames, patch_size=14, temporal_patch_size=2, merge_size=2)
    assert grid == (1, 4, 4) and flat.shape == (16, 3 * 2 * 14 * 14)

    def code(row, col):
        v = int(flat[row, col])
        return v // 1_000_000, v // 100_000 % 10, v // 100 % 1000, v % 100

    # Rows walk 2x2 merge blocks: (0,0) (0,1) (1,0) (1,1) then the next block to the right.
    assert [code(r, 0)[2:] for r in range(5)] == [(0, 0), (0, 14), (14, 0), (14, 14), (0, 28)]
    assert code(8, 0)[2:] == (28, 0)  # third block row starts after two blocks of 4
    # Columns: channel, then time, then row and column inside the 14x14 patch.
    assert code(3, 0) == (0, 0, 14, 14)
    assert code(3, 1) == (0, 0, 14, 15)
    assert code(3, 14) == (0, 0, 15, 14)
    assert code(3, 196) == (1, 0, 14, 14)
    assert code(3, 392) == (0, 1, 14, 14)


def test_odd_frame_count_repeats_last_frame():
    frames = torch.arange(3).double().view(3, 1, 1, 1).expand(3, 3, 28, 28)
    flat, grid = patchify(frames, patch_size=14, temporal_patch_size=2, merge_size=2)
    assert grid == (2, 2, 2)
    # Second temporal group holds frame 2 twice.
    assert flat[4:].unique().tolist() == [2.0]


def test_normalize_values():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = normalize_(x.float(), channel_dim=1)
    for ch in range(3):
        expected = [(v / 255 - IMAGE_MEAN[ch]) / IMAGE_STD[ch] for v in (0, 255)]
        assert out[0, ch, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert out.dtype == torch.float32


def test_resize_keeps_constant_and_skips_same_size():
    x = torch.full((2, 3, 70, 90), 77, dtype=torch.uint8)
    y = resize_bicubic(x, 56, 84)
    assert y.dtype == torch.uint8 and y.shape == (2, 3, 56, 84) and (y == 77).all()
    assert resize_bicubic(x, 70, 90) is x


def test_image_is_single_frame_video_repeated_in_time():
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    img = preprocess_image(image, min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS)
    vid = preprocess_video(image[None], sample_fps=1.0, min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS)
    assert img.grid_thw.tolist() == [[1, 4, 4]] and img.second_per_grid is None
    assert torch.equal(img.pixel_values, vid.pixel_values)
    halves = img.pixel_values.view(16, 3, 2, 196)
    assert torch.equal(halves[:, :, 0], halves[:, :, 1])


def test_accepts_torch_and_channels_first():
    frames = np.random.default_rng(0).integers(0, 256, (2, 28, 56, 3), dtype=np.uint8)
    a = preprocess_video(frames, sample_fps=2.0, min_pixels=784, max_pixels=VIDEO_MAX_PIXELS)
    b = preprocess_video(
        torch.from_numpy(frames).permute(0, 3, 1, 2), sample_fps=2.0, min_pixels=784, max_pixels=VIDEO_MAX_PIXELS
    )
    assert torch.equal(a.pixel_values, b.pixel_values)
    assert a.second_per_grid == 1.0 and a.grid_thw.dtype == torch.long


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        preprocess_video(np.zeros((28, 28, 3), np.uint8), sample_fps=1.0, min_pixels=784, max_pixels=3136)
    with pytest.raises(ValueError, match="3 channels"):
        preprocess_video(np.zeros((2, 28, 28, 4), np.uint8), sample_fps=1.0, min_pixels=784, max_pixels=3136)
    with pytest.raises(ValueError, match="sample_fps"):
        preprocess_video(np.zeros((2, 28, 28, 3), np.uint8), sample_fps=0.0, min_pixels=784, max_pixels=3136)


# --- equality with the official processors, through stored fixtures -------------------------


def load_fixtures():
    meta = json.loads((FIXTURES / "qwen_vision.json").read_text())
    arrays = dict(np.load(FIXTURES / "qwen_vision.npz"))
    return meta, arrays


FIXTURE_META, FIXTURE_ARRAYS = load_fixtures()


@pytest.mark.parametrize("case", FIXTURE_META["pixel_cases"], ids=lambda c: c["name"])
def test_matches_official_fixture(case):
    name, x = case["name"], FIXTURE_ARRAYS[f"{case['name']}__input"]
    if case["kind"] == "video":
        ours = preprocess_video(x, sample_fps=2.0, min_pixels=case["min_pixels"], max_pixels=case["max_pixels"])
    else:
        ours = preprocess_image(x, min_pixels=case["min_pixels"], max_pixels=case["max_pixels"])
    assert ours.grid_thw.tolist() == FIXTURE_ARRAYS[f"{name}__grid_thw"].tolist()
    torch.testing.assert_close(
        ours.pixel_values, torch.from_numpy(FIXTURE_ARRAYS[f"{name}__pixel_values"]), atol=1e-5, rtol=0
    )


def test_matches_official_sampled_video_fixture():
    """Sampling at fps + pixels + second_per_grid_ts, as the official processor chain gives them."""
    case = FIXTURE_META["sampled_case"]
    full = FIXTURE_ARRAYS[f"{case['name']}__input"]
    indices = sample_frame_indices(len(full), case["video_fps"], fps=case["fps"])
    assert indices == case["indices"]
    sample_fps = len(indices) / len(full) * case["video_fps"]
    assert sample_fps == pytest.approx(case["sampled_fps"])
    ours = preprocess_video(
        full[indices], sample_fps=sample_fps, min_pixels=case["min_pixels"], max_pixels=case["max_pixels"]
    )
    assert ours.grid_thw.tolist() == FIXTURE_ARRAYS[f"{case['name']}__grid_thw"].tolist()
    assert ours.second_per_grid == pytest.approx(case["second_per_grid"])
    torch.testing.assert_close(
        ours.pixel_values, torch.from_numpy(FIXTURE_ARRAYS[f"{case['name']}__pixel_values"]), atol=1e-5, rtol=0
    )


# --- equality with the official processors, live (only where torchvision imports) ------------


@needs_torchvision
@pytest.mark.parametrize("shape", [(4, 70, 90), (5, 33, 47), (2, 300, 200)])
def test_matches_official_video_processor_live(shape):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    # Official defaults for size: this also checks VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS.
    official = Qwen2VLVideoProcessor()(
        videos=frames,
        do_sample_frames=False,
        cap_pixels_per_frame=False,
        input_data_format="channels_last",
        return_tensors="pt",
    )
    ours = preprocess_video(frames, sample_fps=2.0, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    assert ours.grid_thw.tolist() == official["video_grid_thw"].tolist()
    torch.testing.assert_close(ours.pixel_values, official["pixel_values_videos"], atol=1e-5, rtol=0)


@needs_torchvision
@pytest.mark.parametrize("shape", [(50, 60), (37, 91), (1200, 900)])
def test_matches_official_image_processor_live(shape):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    official = Qwen2VLImageProcessor()(images=image, input_data_format="channels_last", return_tensors="pt")
    ours = preprocess_image(image, min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS)
    assert ours.grid_thw.tolist() == official["image_grid_thw"].tolist()
    torch.testing.assert_close(ours.pixel_values, official["pixel_values"], atol=1e-5, rtol=0)
