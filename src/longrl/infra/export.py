"""Export a checkpoint to a plain Hugging Face directory (`longrl export --ckpt DIR --out HF_DIR`).

The result holds safetensors weights, ``config.json``, the tokenizer with its chat template, and
Qwen2.5-VL processor configs carrying the run's pixel bounds; ``transformers``'
``from_pretrained`` / ``AutoTokenizer`` / ``AutoProcessor`` load it without longrl installed.

Weights come from the checkpoint's DCP shards, whatever number of ranks wrote them: a model is
built on the meta device from the saved config, given empty CPU storage, and DCP fills every
tensor (a missing one is an error, so no uninitialized memory can be exported).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from longrl.train.checkpoint import (
    COMPLETE,
    CheckpointError,
    SafeFileSystemReader,
    dcp_load,
    latest_complete,
    verify_checkpoint,
)

log = logging.getLogger(__name__)

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
    def from_model(cls, model_or_config, min_pixels: int, max_pixels: int) -> ProcessorSpec:
        """The run's per-frame pixel bounds (``data.min_pixels``/``data.max_pixels``) for videos and
        images, patch geometry from the model's vision config."""
        config = getattr(model_or_config, "config", model_or_config)
        vision = config.vision_config
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


def write_hf_files(config, tokenizer, out_dir: str | Path, *, processor: ProcessorSpec | None = None,
                   dtype: torch.dtype | None = None, architecture: str | None = None) -> None:
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
    _scrub_attention(out_dir / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if processor is not None:
        (out_dir / "preprocessor_config.json").write_text(json.dumps(processor.image_processor_dict(), indent=2) + "\n")
        (out_dir / "video_preprocessor_config.json").write_text(
            json.dumps(processor.video_processor_dict(), indent=2) + "\n"
        )
        (out_dir / "longrl_processor_spec.json").write_text(json.dumps(asdict(processor), indent=2) + "\n")


def _scrub_attention(config_file: Path) -> None:
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run / ``checkpoints`` directory (its newest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--ckpt {path} does not exist")
    if (path / COMPLETE).exists() or (path / "trainer_state.pt").exists():
        reason = verify_checkpoint(path)
        if reason is not None:
            raise CheckpointError(f"checkpoint {path} is not usable: {reason}; export an older step_N instead")
        return path
    for root in (path / "checkpoints", path):
        found = latest_complete(root)
        if found is not None:
            return found
    raise CheckpointError(f"--ckpt {path} holds no complete checkpoint (looked for step_N/{COMPLETE})")


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None,
              overwrite: bool = False) -> Path:
    """Write a Hugging Face model directory from a longrl checkpoint; returns ``out_dir``.

    ``ckpt_dir`` is a ``step_N`` directory or a run directory (its newest complete checkpoint);
    ``dtype`` ("float32", "bfloat16", "float16") casts the weights, default: as trained."""
    ckpt = resolve_checkpoint(ckpt_dir)
    hf_dir = ckpt / "hf"
    out_dir = Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(
            f"{ckpt} has no hf/config.json, so it cannot be exported (it was saved from a model without a "
            "transformers config)"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out_dir} is not empty; choose a new directory or pass --overwrite")

    config = transformers.AutoConfig.from_pretrained(hf_dir)
    reader = SafeFileSystemReader(ckpt / "model")
    stored = {
        fqn: md for fqn, md in reader.read_metadata().state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }
    stored_dtype = _common_float_dtype(stored.values())
    model = _empty_model(config, stored_dtype)
    state = model.state_dict()
    missing = sorted(set(state) - set(stored))
    if missing:
        raise CheckpointError(
            f"{ckpt}/model lacks {len(missing)} weights the {type(model).__name__} config needs "
            f"(first: {missing[:3]}); it was saved from a different model"
        )
    unexpected = sorted(set(stored) - set(state))
    if unexpected:
        log.warning("%s holds %d tensors the exported model has no place for (first: %s); they are dropped",
                    ckpt, len(unexpected), unexpected[:3])
    dcp_load(state, ckpt / "model", no_dist=True)

    if dtype is not None:
        target = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if target is None:
            raise ValueError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
        model.to(target)
        model.config.dtype = target
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    _scrub_attention(out_dir / "config.json")
    for file in hf_dir.iterdir():
        if file.is_file() and file.name != "config.json":
            shutil.copy2(file, out_dir / file.name)
    log.info("exported %s to %s", ckpt, out_dir)
    return out_dir


def _common_float_dtype(metadata) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for md in metadata:
        if md.properties.dtype.is_floating_point:
            counts[md.properties.dtype] = counts.get(md.properties.dtype, 0) + md.size.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _empty_model(config, dtype: torch.dtype) -> torch.nn.Module:
    """The config's architecture with uninitialized CPU weights of ``dtype`` (no init cost)."""
    names = config.architectures or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise CheckpointError(
            f"config.architectures={names} does not name a transformers model class; "
            "the checkpoint's hf/config.json must list the trained architecture"
        )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = cls(config)
    model.to(dtype)
    model.to_empty(device="cpu")
    model.config.dtype = dtype
    return model.eval()
