"""Export a checkpoint to a plain Hugging Face directory (`longrl export --ckpt DIR --out HF_DIR`).

The result holds safetensors weights, ``config.json``, the tokenizer with its chat template, and
Qwen2.5-VL processor configs carrying the run's pixel bounds; ``transformers``'
``from_pretrained`` / ``AutoTokenizer`` / ``AutoProcessor`` load it without longrl installed.

Weights come from the checkpoint's DCP shards, whatever number of ranks wrote them: a model is
built on the meta device from the saved config, given empty CPU storage, and DCP fills every
tensor (a missing one is an error, so no uninitialized memory can be exported).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import transformers
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from longrl.infra.checkpoint import (
    COMPLETE,
    CheckpointError,
    SafeFileSystemReader,
    dcp_load,
    latest_complete,
    verify_checkpoint,
)
from longrl.infra.hf_files import scrub_attention

log = logging.getLogger(__name__)


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


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None, overwrite: bool = False) -> Path:
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
        fqn: md
        for fqn, md in reader.read_metadata().state_dict_metadata.items()
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
        log.warning(
            "%s holds %d tensors the exported model has no place for (first: %s); they are dropped",
            ckpt,
            len(unexpected),
            unexpected[:3],
        )
    dcp_load(state, ckpt / "model", no_dist=True)

    if dtype is not None:
        target = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if target is None:
            raise ValueError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
        model.to(target)  # type: ignore[arg-type]  # transformers wraps .to(); mypy misreads it
        model.config.dtype = target
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    scrub_attention(out_dir / "config.json")
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
    return max(counts, key=lambda dtype: counts[dtype]) if counts else torch.float32


def _empty_model(config, dtype: torch.dtype) -> transformers.PreTrainedModel:
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
