"""The inputs every model family takes, shared by rollout, log-probs and the update.

:class:`VisionInputs` is one video (or image) as the vision tower reads it, produced by
:mod:`longrl.data.vision_preprocess`; :class:`Prompt` is one prompt built from it by a model
adapter (:func:`longrl.models.adapter.build_prompt`). Neither imports ``longrl.data``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class AudioInputs:
    """A video's sound track as an omni model's audio tower reads it (``longrl.data.audio``)."""

    features: torch.Tensor  # float32 [mel_bins, frames]: Whisper log-mel at 16 kHz, 100 frames a second
    in_video: bool = True  # interleaved with the video's tokens (use_audio_in_video), else its own block after


@dataclass
class VisionInputs:
    """Patches of one video (or image) in the vision tower's layout, and the video's sound for omni models."""

    pixel_values: torch.Tensor  # float32 [num_patches, 3*temporal_patch*patch*patch]
    grid_thw: torch.Tensor  # long [1, 3]: temporal, height, width in patches
    second_per_grid: float | None  # videos only: temporal_patch_size / sample_fps; None for an image
    audio: AudioInputs | None = None  # the video's sound track (omni families only), or None

    @property
    def is_image(self) -> bool:
        return self.second_per_grid is None


@dataclass
class Prompt:
    """One prompt, built once and shared by rollout, log-probs and the update."""

    input_ids: torch.Tensor  # long [L], the video (or image) placeholder expanded to one token per embedding
    position_ids: torch.Tensor  # long [3, L], M-RoPE (temporal, height, width)
    video_embeds: torch.Tensor | None  # [V, hidden] the media placeholders' (video or image, and audio), or None
    vision: VisionInputs | None  # kept so a trainable tower can re-encode with gradients
    next_position: int  # M-RoPE position of the first generated token
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def response_positions(self, length: int) -> torch.Tensor:
        """Positions [3, length] of response tokens: text continues 1-D after the prompt."""
        pos = torch.arange(self.next_position, self.next_position + length, device=self.position_ids.device)
        return pos.view(1, -1).expand(3, -1)
