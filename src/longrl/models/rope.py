"""Qwen2.5-VL's 3-D M-RoPE positions by the rule the released checkpoints were trained with.

Qwen's reference (the Qwen2.5-VL release and vLLM): a video's merged tokens sit at
``(start + t * second_per_grid * tokens_per_second, start + h, start + w)`` and the text after a
vision block starts at the largest position so far + 1.

transformers 5.17 departs from this for videos in two ways, and we install this rule in its place
(:func:`use_reference_rope_index`) so every path -- our prefill and group forward, transformers'
own forward in SFT and its ``generate`` -- sees the same positions:

* text after a video resumes at ``start + max(h, w) / merge`` instead of after the last temporal
  position, so the question's positions overlap the video's time axis (with 128 frames at 2 fps,
  the text would start 16 positions after a video that spans 128);
* the per-grid interval goes through ``int()``, so sampling at 4 fps (0.5 s per temporal patch)
  puts every frame at the same time.
"""

from __future__ import annotations

import itertools
import types

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values, as transformers marks them


def vision_block_positions(start: int, grid_thw, merge: int, interval: float) -> torch.Tensor:
    """Positions [3, t*h*w] of one image/video's merged tokens (t-major raster order)."""
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge, w // merge
    t_index = (torch.arange(t, dtype=torch.float64) * interval).long()  # quantize after scaling
    grid = torch.stack(torch.meshgrid(t_index, torch.arange(h), torch.arange(w), indexing="ij"))
    return grid.reshape(3, -1) + start


def reference_positions(token_types: list[int], config, image_grids, video_grids, seconds_per_grid) -> torch.Tensor:
    """Positions [3, L] of one sequence given its per-token modality (0 text, 1 image, 2 video)."""
    merge = config.vision_config.spatial_merge_size
    tokens_per_second = config.vision_config.tokens_per_second
    images, videos, seconds = iter(image_grids), iter(video_grids), iter(seconds_per_grid)
    blocks, start = [], 0
    for kind, group in itertools.groupby(token_types):
        length = len(list(group))
        if kind == TEXT:
            block = torch.arange(start, start + length).view(1, -1).expand(3, -1)
        else:
            grid = next(videos) if kind == VIDEO else next(images)
            interval = float(next(seconds)) * tokens_per_second if kind == VIDEO else 1.0
            block = vision_block_positions(start, grid, merge, interval)
            if block.shape[1] != length:
                raise ValueError(
                    f"{block.shape[1]} positions for a grid of {grid.tolist()} but the sequence "
                    f"holds {length} placeholder tokens; expand each placeholder to one token "
                    "per merged patch"
                )
        blocks.append(block)
        start = int(block.max()) + 1
    return torch.cat(blocks, dim=1) if blocks else torch.zeros(3, 0, dtype=torch.long)


def _get_rope_index(
    self,
    input_ids,
    mm_token_type_ids,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
    **kwargs,
):
    """Drop-in for ``Qwen2_5_VLModel.get_rope_index``: positions [3, B, L] and deltas [B, 1]."""
    batch, length = input_ids.shape
    position_ids = torch.zeros(3, batch, length, dtype=torch.long, device=input_ids.device)
    images = list(image_grid_thw) if image_grid_thw is not None else []
    videos = list(video_grid_thw) if video_grid_thw is not None else []
    seconds = list(second_per_grid_ts) if second_per_grid_ts is not None else [1.0] * len(videos)
    deltas = []
    for b in range(batch):
        keep = (
            attention_mask[b].bool()
            if attention_mask is not None
            else torch.ones(length, dtype=torch.bool, device=input_ids.device)
        )
        types_b = mm_token_type_ids[b][keep].tolist()
        # each row consumes its own images/videos, in order
        n_img = sum(1 for k, _ in itertools.groupby(types_b) if k == IMAGE)
        n_vid = sum(1 for k, _ in itertools.groupby(types_b) if k == VIDEO)
        pos = reference_positions(types_b, self.config, images[:n_img], videos[:n_vid], seconds[:n_vid])
        images, videos, seconds = images[n_img:], videos[n_vid:], seconds[n_vid:]
        position_ids[:, b, keep] = pos.to(input_ids.device)
        deltas.append((int(pos.max()) + 1 if pos.numel() else 0) - len(types_b))
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_reference_rope_index(model) -> None:
    """Make ``model`` (a Qwen2_5_VLForConditionalGeneration) compute M-RoPE by the reference rule."""
    model.model.get_rope_index = types.MethodType(_get_rope_index, model.model)
