"""Qwen2-VL / Qwen2.5-VL pixel preprocessing in plain torch: smart-resize, normalize, patchify.

This reproduces transformers' official fast processors (`Qwen2VLVideoProcessor` and
`Qwen2VLImageProcessor`, used by Qwen2.5-VL) without torchvision, which does not import beside
the CPU build of torch. Every step mirrors the official one so the outputs are bit-identical
(tests compare against fixtures made by the official processors):

1. smart_resize picks a size divisible by patch_size * merge_size within [min_pixels, max_pixels].
2. Resize is torchvision's tensor resize: bicubic, antialias=True, align_corners=False. On CPU,
   torchvision resizes uint8 natively (torch's Pillow-like integer kernel, which clips to
   0..255 after each separable pass); elsewhere it goes through float32, clamps and rounds.
   The two paths differ by several gray levels on noisy images, so both are mirrored.
3. Rescale by 1/255 and normalize with the CLIP mean/std, fused exactly as transformers does:
   (x - mean*255) / (std*255) in float32. It is per element, so longrl applies it after
   patchify (on the one float copy) with identical results.
4. Patchify to [grid_t*grid_h*grid_w, C*temporal_patch*patch*patch], patches ordered so that
   each merge_size x merge_size block of patches is contiguous (the order the vision tower's
   patch merger expects). An image is a one-frame video repeated over the temporal patch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from longrl.models.inputs import VisionInputs

# OpenAI CLIP statistics, as transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# Defaults of the official processors (transformers 5.17): Qwen2VLImageProcessor.size and
# Qwen2VLVideoProcessor.size ("shortest_edge" is min_pixels, "longest_edge" is max_pixels).
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 28 * 28 * 768

_RESCALE_FACTOR = 1 / 255


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """Qwen's resize rule: both sides divisible by `factor`, area in [min_pixels, max_pixels],
    aspect ratio kept as closely as possible. Returns (height, width)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)} "
            f"for a {height}x{width} frame; crop or pad it first"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_bicubic(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, height, width], as torchvision's tensor resize (bicubic, antialias).

    uint8 in gives uint8 out; float in gives float out."""
    if tuple(images.shape[-2:]) == (height, width):
        return images  # torchvision returns the input untouched when the size already matches
    native = images.dtype in (torch.float32, torch.float64) or (
        images.dtype == torch.uint8 and images.device.type == "cpu"
    )
    if native:
        return F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    out = F.interpolate(
        images.to(torch.float32), size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    if images.dtype == torch.uint8:
        out = out.clamp_(0, 255)
    if not images.dtype.is_floating_point:
        out = out.round_()
    return out.to(images.dtype)


def normalize_(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """In place on float32: fused rescale(1/255) + CLIP normalize, bit-identical to transformers."""
    # transformers folds the rescale into the statistics: mean/rescale, std/rescale (in float32),
    # then subtracts and divides (torchvision's normalize).
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    mean = torch.tensor(IMAGE_MEAN, device=x.device) * (1.0 / _RESCALE_FACTOR)
    std = torch.tensor(IMAGE_STD, device=x.device) * (1.0 / _RESCALE_FACTOR)
    return x.sub_(mean.view(shape)).div_(std.view(shape))


def patchify(
    frames: torch.Tensor, *, patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, C, H, W] -> ([grid_t*grid_h*grid_w, C*tp*p*p], (grid_t, grid_h, grid_w)), same dtype.

    T is padded up to a multiple of temporal_patch_size by repeating the last frame."""
    num_frames, channels, height, width = frames.shape
    if pad := -num_frames % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
        num_frames += pad
    grid_t = num_frames // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = frames.reshape(
        grid_t,
        temporal_patch_size,
        channels,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # -> [grid_t, grid_h/m, grid_w/m, m, m, C, tp, p, p]: merge blocks contiguous, then one
    # patch's channel, time, row, column.
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return flat, (grid_t, grid_h, grid_w)


def _to_nchw(frames: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """[T, H, W, 3] (or [T, 3, H, W]) array or tensor -> contiguous torch [T, 3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4:
        raise ValueError(f"{what} must have 4 dims [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] != 3:
        raise ValueError(f"{what} must be RGB with 3 channels ([T, H, W, 3]), got shape {tuple(x.shape)}")
    return x.contiguous()


def _preprocess_frames(
    frames: torch.Tensor,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = frames.shape[-2:]
    new_h, new_w = smart_resize(
        height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    resized = resize_bicubic(frames, new_h, new_w)
    # Patchify the uint8 pixels first and normalize the float copy in place: one float tensor
    # of the output's size instead of two (a 768-frame video is gigabytes of float32).
    patches, grid = patchify(
        resized, patch_size=patch_size, temporal_patch_size=temporal_patch_size, merge_size=merge_size
    )
    pixel_values = patches.to(torch.float32, copy=True)
    normalize_(pixel_values.view(len(pixel_values), frames.shape[1], -1), channel_dim=1)
    return pixel_values, torch.tensor([grid], dtype=torch.long)


def preprocess_video(
    frames: np.ndarray | torch.Tensor,
    *,
    sample_fps: float,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> VisionInputs:
    """Sampled video frames [T, H, W, 3] (uint8 RGB) -> pixel_values_videos, video_grid_thw and
    second_per_grid_ts, as Qwen2VLVideoProcessor + Qwen2_5_VLProcessor produce them.

    sample_fps is the rate of the sampled frames in video time (DecodedVideo.sample_fps).
    The official defaults are min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS."""
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
    x = _to_nchw(frames, "video frames")
    if x.shape[0] == 0:
        raise ValueError("video has no frames; decode at least one frame before preprocessing")
    pixel_values, grid_thw = _preprocess_frames(
        x,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
    )
    return VisionInputs(pixel_values, grid_thw, second_per_grid=temporal_patch_size / sample_fps)


def preprocess_image(
    image: np.ndarray | torch.Tensor,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> VisionInputs:
    """One image [H, W, 3] (uint8 RGB) -> pixel_values, image_grid_thw as Qwen2VLImageProcessor.

    The official defaults are min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS."""
    if image.ndim != 3:
        raise ValueError(f"image must have 3 dims [H, W, 3], got shape {tuple(image.shape)}")
    x = _to_nchw(image[None], "image")
    # A single frame padded to temporal_patch_size by repetition is exactly the official
    # image layout (each patch's pixels repeated over the temporal axis), with grid_t = 1.
    pixel_values, grid_thw = _preprocess_frames(
        x,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
    )
    return VisionInputs(pixel_values, grid_thw, second_per_grid=None)
