"""The Hugging Face side files of a model directory: ``config.json`` (portable attention, weight
dtype), the tokenizer and chat template, and Qwen2.5-VL processor configs carrying the run's pixel
bounds. Written into every checkpoint's ``hf/`` (:mod:`longrl.infra.checkpoint`) and copied by
``longrl export`` (:mod:`longrl.infra.export`), so neither of those two imports the other.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

# OpenAI CLIP statistics, which Qwen2.5-VL's processors normalize with.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Attention implementations a plain transformers install knows; anything else (longrl's own
# "longrl" hook) is dropped from the exported config so transformers picks its default.
_PORTABLE_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"}


@dataclass
class ProcessorSpec:
    """Qwen2.5-VL preprocessing of a run: what the exported processor configs describe.

    longrl's own preprocessing (``longrl.data.vision_preprocess``) reproduces the official
    processors, so these bounds make ``AutoProcessor`` prepare inputs exactly as training did."""

    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 1280 * 28 * 28
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    @classmethod
    def from_model(cls, model_or_config, min_pixels: int, max_pixels: int) -> ProcessorSpec | None:
        """The run's per-frame pixel bounds (``data.min_pixels``/``data.max_pixels``) for videos and
        images, patch geometry from the model's vision config; None for a text-only model, and for
        an omni model (Qwen2.5-Omni), whose processor (a Whisper feature extractor beside the
        image and video processors) these Qwen2.5-VL files do not describe: better none than a
        processor that would prepare its inputs wrongly."""
        config = getattr(model_or_config, "config", model_or_config)
        vision = getattr(config, "vision_config", None)
        if vision is None or getattr(config, "audio_config", None) is not None:
            return None
        return cls(
            video_min_pixels=min_pixels,
            video_max_pixels=max_pixels,
            image_min_pixels=min_pixels,
            image_max_pixels=max_pixels,
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        )

    def _common(self) -> dict:
        return {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": _CLIP_MEAN,
            "image_std": _CLIP_STD,
            "merge_size": self.merge_size,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "resample": 3,  # bicubic
            "rescale_factor": 1 / 255,
            "processor_class": "Qwen2_5_VLProcessor",
        }

    def image_processor_dict(self) -> dict:
        return {
            **self._common(),
            "image_processor_type": "Qwen2VLImageProcessor",
            "size": {"shortest_edge": self.image_min_pixels, "longest_edge": self.image_max_pixels},
            # transformers 4.x reads these two keys; 5.x reads "size".
            "min_pixels": self.image_min_pixels,
            "max_pixels": self.image_max_pixels,
        }

    def video_processor_dict(self) -> dict:
        return {
            **self._common(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "size": {"shortest_edge": self.video_min_pixels, "longest_edge": self.video_max_pixels},
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
            # longrl samples frames itself (data.num_frames / data.fps) and hands them over.
            "do_sample_frames": False,
            # longrl's preprocessing has no per-frame pixel cap; pin it so newer transformers
            # (which turn the cap on by default) still prepare what the model was trained on.
            "cap_pixels_per_frame": False,
        }


def write_hf_files(
    config,
    tokenizer,
    out_dir: str | Path,
    *,
    processor: ProcessorSpec | None = None,
    dtype: torch.dtype | None = None,
    architecture: str | None = None,
) -> None:
    """Write ``config.json`` (portable attention, weight dtype), the tokenizer and chat template,
    and, with ``processor``, ``preprocessor_config.json`` + ``video_preprocessor_config.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    if dtype is not None:
        config.dtype = dtype
    if architecture and not config.architectures:
        config.architectures = [architecture]
    config.save_pretrained(out_dir)
    scrub_attention(out_dir / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if processor is not None:
        (out_dir / "preprocessor_config.json").write_text(json.dumps(processor.image_processor_dict(), indent=2) + "\n")
        (out_dir / "video_preprocessor_config.json").write_text(
            json.dumps(processor.video_processor_dict(), indent=2) + "\n"
        )
        (out_dir / "longrl_processor_spec.json").write_text(json.dumps(asdict(processor), indent=2) + "\n")


def scrub_attention(config_file: Path) -> None:
    """Drop attention implementations a plain transformers install would not know (e.g. "longrl")."""
    data = json.loads(config_file.read_text())

    def scrub(node):
        if isinstance(node, dict):
            for key in [k for k in node if "attn_implementation" in k]:
                if node[key] not in _PORTABLE_ATTENTION:
                    del node[key]
            for value in node.values():
                scrub(value)

    scrub(data)
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_architecture(model) -> str:
    """The transformers class name of ``model``, seen through FSDP2 / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.") and issubclass(cls, transformers.PreTrainedModel):
            return cls.__name__
    return type(model).__name__
