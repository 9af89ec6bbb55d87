"""Crash-safe checkpoints: torch.distributed.checkpoint (DCP) for weights and optimizer, atomic publish.

Layout of one checkpoint, ``run_dir/checkpoints/step_N`` (N = optimizer steps completed)::

    model/             DCP: the model state dict (each rank writes its own shards under FSDP2)
    optimizer/         DCP: the optimizer's tensors (moments, step counters)
    trainer_state.pt   rank 0: step, LR scheduler, optimizer hyper-parameters, the trainer's ``extra``
    rng/rank_R.pt      every rank: Python, NumPy, torch CPU and CUDA generator states
    hf/                config, tokenizer, processor files, so ``longrl export`` needs nothing else
    COMPLETE           written last: a manifest of every file above with its size

Everything is written into ``.tmp-step_N`` and renamed to ``step_N`` only after ``COMPLETE`` is on
disk, so a run killed at any moment leaves either a whole checkpoint or a ``.tmp-`` directory that
the next run deletes. A ``step_N`` whose files do not match its manifest, or that fails to load, is
skipped with a message and the next older one is used.

Nothing here unpickles arbitrary objects: DCP holds tensors only (its data files load with
``weights_only=True``), DCP's metadata file is read by an allow-list unpickler, and the ``.pt``
files load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from longrl.infra.hf_files import model_architecture, write_hf_files

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_STEP_DIR = re.compile(r"^step_(\d+)$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the directory and the fix."""


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict:
    """Every global generator a training step draws from: Python, NumPy, torch CPU, all CUDA devices.

    The result holds only tensors, ints, floats and strings, so it round-trips through
    ``torch.load(weights_only=True)``."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state()
    )
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            log.warning(
                "checkpoint holds CUDA RNG states for %d devices but %d are visible; restoring the first %d",
                len(cuda_states),
                count,
                min(count, len(cuda_states)),
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state, device)


# ----------------------------------------------------------------------------- helpers


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def _dcp_save(state: dict, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # single process is fine
        dcp.save(state, storage_writer=FileSystemWriter(path), no_dist=_no_dist())


def dcp_load(state: dict, path: Path, *, no_dist: bool | None = None) -> None:
    """Fill ``state``'s tensors in place from the DCP directory ``path`` (safe reader)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeFileSystemReader(path), no_dist=_no_dist() if no_dist is None else no_dist)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _load_file(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


_SAFE_LEAVES = (type(None), bool, int, float, str, torch.Tensor)


def _check_storable(obj: Any, where: str) -> Any:
    """Return ``obj`` with NumPy values made torch/Python; raise naming the first value that
    ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, _SAFE_LEAVES):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(
                    f"checkpoint field {where} has a key of type {type(key).__name__}; use str or int keys"
                )
            out[key] = _check_storable(value, f"{where}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_check_storable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(items)
    raise CheckpointError(
        f"checkpoint field {where} is a {type(obj).__name__}; checkpoints store only tensors, numbers, "
        "strings, None and lists/dicts of them (convert it, e.g. to a tensor or a dict of its fields)"
    )


def split_tensors(tree: Any, path: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state dict into {path: tensor} (for DCP) and a skeleton holding the rest,
    with each tensor replaced by ``{"__tensor__": path}``."""
    if isinstance(tree, torch.Tensor):
        return {path: tree}, {"__tensor__": path}
    if isinstance(tree, dict):
        tensors: dict[str, torch.Tensor] = {}
        skeleton = {}
        for key, value in tree.items():
            sub_tensors, skeleton[key] = split_tensors(value, f"{path}/{key}" if path else str(key))
            tensors.update(sub_tensors)
        return tensors, skeleton
    if isinstance(tree, (list, tuple)):
        tensors, items = {}, []
        for i, value in enumerate(tree):
            sub_tensors, item = split_tensors(value, f"{path}/{i}" if path else str(i))
            tensors.update(sub_tensors)
            items.append(item)
        return tensors, type(tree)(items)
    return {}, tree


def merge_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {key: merge_tensors(value, tensors) for key, value in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(merge_tensors(v, tensors) for v in skeleton)
    return skeleton


class SafeFileSystemReader(FileSystemReader):
    """DCP's reader, but its ``.metadata`` pickle may only name DCP's own metadata classes, so a
    crafted checkpoint cannot run code; tensor data already loads with ``weights_only=True``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        with self.fs.create_stream(self._get_metadata_path(rank), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.path}/.metadata does not hold DCP metadata")
        for fqn, item in metadata.state_dict_metadata.items():
            if isinstance(item, BytesStorageMetadata):
                # Non-tensor DCP items are read back with torch.load(weights_only=False).
                raise CheckpointError(
                    f"{self.path} stores '{fqn}' as pickled bytes; longrl checkpoints hold tensors only"
                )
        storage_meta = getattr(metadata, "storage_meta", None)
        if storage_meta is not None:
            storage_meta.load_id = self.load_id
        return metadata


class _MetadataUnpickler(pickle.Unpickler):
    _MODULES = ("torch.distributed.checkpoint.metadata",)
    _NAMES = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES or (module, name) in self._NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata names {module}.{name}, which is not a DCP metadata type")


def _manifest(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


def step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def verify_checkpoint(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint whose files match its manifest, else the reason."""
    marker = path / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} marker (the write was interrupted)"
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable {COMPLETE} marker ({exc})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if file.stat().st_size != size:
            return f"file {name} has {file.stat().st_size} bytes, the manifest says {size}"
    return None


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step_N`` directory under ``ckpt_root``, newest first (not verified)."""
    if not ckpt_root.is_dir():
        return []
    found = [(step, p) for p in ckpt_root.iterdir() if p.is_dir() and (step := step_of(p)) is not None]
    return sorted(found, key=lambda item: item[0], reverse=True)


def latest_complete(ckpt_root: Path) -> Path | None:
    """Newest verified checkpoint under ``ckpt_root``, logging why each newer one was skipped."""
    for _, path in list_checkpoints(ckpt_root):
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, reason)
    return None


def read_trainer_state(path: Path) -> dict:
    return _load_file(path / "trainer_state.pt")


# ----------------------------------------------------------------------------- Checkpointer


class Checkpointer:
    """Saves and restores a run: model, optimizer, scheduler, RNG states and the trainer's ``extra``.

    Call :meth:`save` on every rank (it is collective when torch.distributed is initialized); the
    directory must be on a file system all ranks share. ``tokenizer`` and ``processor`` (an
    :class:`longrl.infra.export.ProcessorSpec`) are written into each checkpoint's ``hf/`` so
    :func:`longrl.infra.export.export_hf` can build a Hugging Face directory from it alone.
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 3, *, tokenizer=None, processor=None):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: keep at least one checkpoint (trainer.keep_last >= 1)")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.tokenizer = tokenizer
        self.processor = processor

    # -- save -----------------------------------------------------------------------------

    def save(self, step: int, *, model, optimizer, scheduler=None, extra: dict | None = None, tokenizer=None) -> Path:
        """Write checkpoint ``step_<step>`` (``step`` = optimizer steps completed) and prune old ones."""
        rank = _rank()
        final = self.root / f"step_{step}"
        tmp = self.root / f"{TMP_PREFIX}step_{step}"
        extra = _check_storable(dict(extra or {}), "extra")
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            tmp.mkdir()
        _barrier()

        _dcp_save(get_model_state_dict(model), tmp / "model")
        optimizer_skeleton = None
        if optimizer is not None and optimizer.state:
            # An optimizer that has not stepped is left alone: reading its state dict would run
            # a zero step that creates state and advances Adam's step counter.
            tensors, optimizer_skeleton = split_tensors(get_optimizer_state_dict(model, optimizer))
            _dcp_save(tensors, tmp / "optimizer")
        _save_file(capture_rng_state(), tmp / "rng" / f"rank_{rank}.pt")
        _barrier()

        if rank == 0:
            state = {
                "format": FORMAT_VERSION,
                "step": int(step),
                "world_size": _world_size(),
                "scheduler": None if scheduler is None else _check_storable(scheduler.state_dict(), "scheduler"),
                "optimizer": _check_storable(optimizer_skeleton, "optimizer"),
                "extra": extra,
            }
            _save_file(state, tmp / "trainer_state.pt")
            self._write_hf_files(model, tokenizer or self.tokenizer, tmp / "hf")
            self._publish(tmp, final, step)
            self._prune(step)
        _barrier()
        return final

    def _write_hf_files(self, model, tokenizer, out_dir: Path) -> None:
        config = getattr(model, "config", None)
        if config is None:
            return  # not a transformers model: weights and optimizer are still saved
        write_hf_files(
            config,
            tokenizer,
            out_dir,
            processor=self.processor,
            dtype=_param_dtype(model),
            architecture=model_architecture(model),
        )

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        marker = {"step": int(step), "time": time.time(), "files": _manifest(tmp)}
        with open(tmp / COMPLETE, "w") as f:
            json.dump(marker, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for path in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            _fsync_dir(path)
        if final.exists():  # an older, unusable copy of this step (e.g. it failed to load)
            self._delete(final)
        tmp.rename(final)
        _fsync_dir(self.root)

    def _prune(self, saved_step: int) -> None:
        """Keep the newest ``keep_last`` checkpoints up to ``saved_step``. Any newer one was skipped
        as unloadable when this run resumed from an older step, so it belongs to the abandoned
        timeline and goes too (else a later resume could jump into it)."""
        complete = []
        for step, path in list_checkpoints(self.root):
            if step > saved_step:
                log.warning("removing %s: the run resumed from an older checkpoint and is now past it", path)
                self._delete(path)
            elif (path / COMPLETE).is_file():
                complete.append(path)
        for path in complete[self.keep_last :]:
            self._delete(path)

    @staticmethod
    def _delete(path: Path) -> None:
        # Rename first: a half-deleted step_N could otherwise still carry its marker.
        trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
        shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        for path in self.root.iterdir():
            if path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                log.info("removing leftover of an interrupted checkpoint write: %s", path)
                shutil.rmtree(path, ignore_errors=True)

    # -- load -----------------------------------------------------------------------------

    def latest(self) -> Path | None:
        """Newest complete checkpoint (verified against its manifest), or None."""
        return latest_complete(self.root)

    def load_latest(self, *, model, optimizer, scheduler=None) -> dict | None:
        """Restore the newest checkpoint that loads; returns its ``extra`` plus ``"step"``, or None
        when the run has no checkpoint. Incomplete or corrupt ones are skipped with a message."""
        failures = []
        for step, path in list_checkpoints(self.root):
            reason = verify_checkpoint(path) if _rank() == 0 else None
            reason = _broadcast(reason)
            if reason is None:
                try:
                    extra = self.load(path, model=model, optimizer=optimizer, scheduler=scheduler)
                except (Exception, CheckpointException) as exc:  # noqa: BLE001  -- any failure: try the older one
                    reason = f"failed to load ({type(exc).__name__}: {exc})"
                else:
                    log.info("resumed from %s (step %d)", path, step)
                    return extra
            log.warning("skipping checkpoint %s: %s", path, reason)
            failures.append(f"{path.name}: {reason}")
        if failures:
            # Starting over would overwrite this run's metrics and later checkpoints: refuse.
            raise CheckpointError(
                f"no checkpoint under {self.root} could be loaded ({'; '.join(failures)}); move the broken "
                "ones away to resume from an older one, or start a new run with trainer.resume=never "
                "and a fresh trainer.out_dir"
            )
        return None

    def load(self, path: str | Path, *, model, optimizer, scheduler=None) -> dict:
        """Restore checkpoint ``path`` into ``model``/``optimizer``/``scheduler`` and the RNGs."""
        path = Path(path)
        state = read_trainer_state(path)
        if state.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {state.get('format')}, this longrl reads {FORMAT_VERSION}"
            )

        model_sd = get_model_state_dict(model)
        dcp_load(model_sd, path / "model")
        set_model_state_dict(model, model_sd)

        if optimizer is not None and state["optimizer"] is not None:
            saved = state["optimizer"]
            current, _ = split_tensors(get_optimizer_state_dict(model, optimizer))
            missing = sorted(set(_tensor_paths(saved)) - set(current))
            if missing:
                raise CheckpointError(
                    f"{path}: the optimizer state holds {len(missing)} entries this model has no parameter for "
                    f"(first: {missing[0]}); was the model or its trainable parameters changed?"
                )
            dest = {k: current[k] for k in _tensor_paths(saved)}
            dcp_load(dest, path / "optimizer")
            # strict=False: parameters that never received a gradient have no saved state, as in
            # the run that saved it.
            set_optimizer_state_dict(
                model, optimizer, merge_tensors(saved, dest), options=StateDictOptions(strict=False)
            )
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])

        rng_file = path / "rng" / f"rank_{_rank()}.pt"
        if rng_file.is_file():
            restore_rng_state(_load_file(rng_file))
        else:
            log.warning(
                "%s has no RNG state for rank %d (saved with %d ranks); RNG streams will differ",
                path,
                _rank(),
                state["world_size"],
            )
        return {**state["extra"], "step": state["step"]}


def _tensor_paths(skeleton: Any) -> list[str]:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return [skeleton["__tensor__"]]
        return [p for value in skeleton.values() for p in _tensor_paths(value)]
    if isinstance(skeleton, (list, tuple)):
        return [p for value in skeleton for p in _tensor_paths(value)]
    return []


def _broadcast(obj: Any) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _param_dtype(model) -> torch.dtype | None:
    for param in model.parameters():
        return param.dtype
    return None
