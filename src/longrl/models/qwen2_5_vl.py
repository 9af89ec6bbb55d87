"""The Qwen2.5-VL family: the tiny offline model, the vision tower, and M-RoPE prompt positions.

A Prompt (:class:`longrl.models.inputs.Prompt`) is built once per dataset row per step
(``longrl.models.adapter.build_prompt``): token ids with one placeholder per video embedding, the
embeddings from one pass of the vision tower, and 3-D M-RoPE positions by the reference rule
(``longrl.models.rope``). Rollout, old/reference log-probs and the update all read it, so nothing
re-decodes a video or re-runs the tower within a step (unless the tower trains).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from longrl.models.base import ModelFamily, tiny_text_fields
from longrl.models.config import TinyModelConfig
from longrl.models.inputs import VisionInputs
from longrl.models.rope import use_reference_rope_index

VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"


class Qwen25VL(ModelFamily):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    mrope = True

    def model_class(self) -> Any:
        return Qwen2_5_VLForConditionalGeneration

    def tiny_config(self, tiny: Any, tokenizer: Any) -> Any:
        return tiny_config(tiny, tokenizer)

    def decoder(self, model: Any) -> Any:
        return model.model.language_model

    def text_config(self, model: Any) -> Any:
        return model.config.text_config

    def vision_tower(self, model: Any) -> Any:
        return model.model.visual

    def media_token_ids(self, model: Any) -> tuple[int | None, int | None]:
        return model.config.image_token_id, model.config.video_token_id

    def expand_placeholders(self, model: Any, text: str, vision: VisionInputs | None) -> str:
        if vision is None:
            return text
        pad, kind = (IMAGE_PAD, "image") if vision.is_image else (VIDEO_PAD, "video")
        if text.count(pad) != 1 or text.count(IMAGE_PAD) + text.count(VIDEO_PAD) != 1:
            raise ValueError(
                f"the prompt must hold exactly one {kind} placeholder and no other, found "
                f"{text.count(IMAGE_PAD)} image and {text.count(VIDEO_PAD)} video placeholders"
            )
        return text.replace(pad, pad * vision_tokens(model, vision))

    def positions(self, model: Any, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
        return mrope_positions(model, input_ids, vision)

    def media_forward_inputs(self, model: Any, input_ids: torch.Tensor, visions: list[VisionInputs]) -> dict:
        # transformers places M-RoPE positions by mm_token_type_ids and takes images and videos
        # as two pixel streams, each with its grids
        inputs: dict[str, torch.Tensor] = {"mm_token_type_ids": media_token_types(model, input_ids)}
        images = [v for v in visions if v.is_image]
        videos = [v for v in visions if not v.is_image]
        if images:
            inputs["pixel_values"] = torch.cat([v.pixel_values for v in images])
            inputs["image_grid_thw"] = torch.cat([v.grid_thw for v in images])
        if videos:
            inputs["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
            inputs["video_grid_thw"] = torch.cat([v.grid_thw for v in videos])
            inputs["second_per_grid_ts"] = torch.tensor([v.second_per_grid for v in videos])
        return inputs

    def encode_video(self, model: Any, vision: VisionInputs) -> torch.Tensor:
        return encode_video(model, vision)

    def prepare(self, model: Any) -> None:
        super().prepare(model)
        use_reference_rope_index(model)


QWEN2_5_VL = Qwen25VL()


def tiny_mrope_section(cfg: TinyModelConfig) -> list[int]:
    """M-RoPE's split of head_dim/2 rotary frequencies over (t, h, w), scaled from the 3B's [16, 24, 24] of 64."""
    half = (cfg.hidden_size // cfg.num_heads) // 2
    h = w = (half * 3) // 8
    return [half - h - w, h, w]


def tiny_vision_fields(cfg: TinyModelConfig) -> dict[str, Any]:
    """The tiny model's vision tower: Qwen2.5-VL's architecture (windowed blocks, the last one full,
    2x2 patch merger) at ``model.tiny``'s widths. Qwen2.5-Omni's thinker uses the same tower."""
    return dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_hidden_size * 2,
        num_heads=cfg.vision_num_heads,
        out_hidden_size=cfg.hidden_size,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=112,
        fullatt_block_indexes=[cfg.vision_depth - 1],
    )


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL of a few hundred thousand parameters with the real architecture."""

    def ids(token: str) -> int:
        return cast(int, tokenizer.convert_tokens_to_ids(token))  # one token in, one id out

    return Qwen2_5_VLConfig(
        text_config=tiny_text_fields(cfg, tokenizer, mrope_section=tiny_mrope_section(cfg)),
        vision_config=dict(tiny_vision_fields(cfg), tokens_per_second=cfg.tokens_per_second),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def vision_tokens(model, vision: VisionInputs) -> int:
    merge = model.config.vision_config.spatial_merge_size
    return int(vision.grid_thw.prod(-1).sum()) // (merge * merge)


def encode_video(model, vision: VisionInputs, *, batched_attention: bool = True) -> torch.Tensor:
    """Run the vision tower once over a video or an image: [V, hidden] embeddings, one per merged
    patch group.

    ``batched_attention`` (default): the tower's windowed attention runs as a few batched SDPA
    calls (``longrl.models.vision_attention``, installed in the tower from then on) instead of
    transformers' one call per window; False: transformers' own path, for this call (no grad
    through a checkpointed tower then: its recompute would run the other path)."""
    from longrl.models.vision_attention import transformers_vision_attention, use_batched_vision_attention

    visual = model.model.visual
    pixels = vision.pixel_values.to(device=visual.device, dtype=visual.dtype)
    if not batched_attention:
        with transformers_vision_attention(visual):
            return visual(pixels, grid_thw=vision.grid_thw.to(visual.device)).pooler_output
    use_batched_vision_attention(visual)  # for good: a checkpointed tower recomputes its blocks in backward
    return visual(pixels, grid_thw=vision.grid_thw.to(visual.device)).pooler_output


def media_token_types(model, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers' ``mm_token_type_ids`` of ``input_ids`` (any shape): 1 image, 2 video, 0 text."""
    return (input_ids == model.config.image_token_id).int() + (input_ids == model.config.video_token_id).int() * 2


def mrope_positions(model, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
    """M-RoPE positions [3, L] of one prompt, by the reference rule (``longrl.models.rope``)."""
    if vision is None:
        return torch.arange(len(input_ids)).view(1, -1).expand(3, -1).clone()
    grids: dict[str, Any] = (
        {"image_grid_thw": vision.grid_thw}
        if vision.is_image
        else {"video_grid_thw": vision.grid_thw, "second_per_grid_ts": torch.tensor([vision.second_per_grid])}
    )
    positions, _ = model.model.get_rope_index(
        input_ids[None].cpu(), mm_token_type_ids=media_token_types(model, input_ids)[None].cpu(), **grids
    )
    return positions[:, 0]
