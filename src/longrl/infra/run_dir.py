"""What a training run may do with an existing ``trainer.out_dir`` (``trainer.resume``).

``auto``       continue from the newest complete checkpoint, or start at step 0 when there is none.
               ``metrics.jsonl`` keeps its rows up to the resumed step and appends after them, so
               each step appears once.
``never``      start at step 0, but only in a directory no run has trained in: one holding
               checkpoints, metrics rows or a saved model is refused with a message naming it, and
               nothing in it is touched.
``overwrite``  start at step 0 after deleting the earlier run's outputs (:data:`RUN_OUTPUTS`:
               checkpoints, metrics, TensorBoard events, the saved model, the report, the W&B run
               id), each named in the log. Anything else in the directory (data, notes) stays.

SFT and RL runs each need their own directory: under ``auto`` an RL run refuses a directory that
holds an SFT run (and the reverse), whose checkpoints it would otherwise resume as its own.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

RESUME_CHOICES = ("auto", "never", "overwrite")
# What a training run writes into its directory (config.yaml is rewritten by every command).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "run_info.json", "tensorboard", "model", "report", "wandb_run_id")


class RunDirError(FileExistsError):
    """``trainer.out_dir`` holds a run that ``trainer.resume`` may not continue or touch."""


def earlier_run_outputs(run_dir: str | Path) -> list[Path]:
    """The outputs in ``run_dir`` that show a run trained there: checkpoints (finished or not),
    metrics rows, a saved model. An empty ``metrics.jsonl`` or a lone ``config.yaml`` (a run that
    stopped before its first step) does not count."""
    run_dir = Path(run_dir)
    found = []
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append(checkpoints)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics)
    if (run_dir / "model").exists():
        found.append(run_dir / "model")
    return found


def _earlier_stage(run_dir: Path) -> str | None:
    """Which trainer ("sft" or "rl") wrote ``run_dir``, as its run_info.json says; None if unknown."""
    try:
        desc = json.loads((run_dir / "run_info.json").read_text()).get("desc")
    except (OSError, ValueError, AttributeError):
        return None
    return desc if desc in ("sft", "rl") else None


def claim_run_dir(run_dir: str | Path, resume: str, stage: str | None = None) -> None:
    """Apply ``trainer.resume`` to ``run_dir`` before a run of ``stage`` ("sft" or "rl") writes
    anything into it. Under ``auto`` a directory holding the other stage's run is refused too:
    its checkpoints would be resumed as this stage's."""
    if resume not in RESUME_CHOICES:
        raise ValueError(f"trainer.resume={resume!r}: choose one of {', '.join(RESUME_CHOICES)}")
    run_dir = Path(run_dir)
    earlier = earlier_run_outputs(run_dir)
    if resume == "auto":
        other = _earlier_stage(run_dir)
        if stage is not None and earlier and other not in (None, stage):
            raise RunDirError(
                f"trainer.out_dir {run_dir} holds an {other.upper()} run, so {stage.upper()} cannot continue it: "
                f"give {stage.upper()} its own trainer.out_dir (start from the {other.upper()} model with "
                f"model.path={run_dir / 'model'}), or replace that run with trainer.resume=overwrite"
            )
        return
    if resume == "never" and earlier:
        raise RunDirError(
            f"trainer.out_dir {run_dir} already holds a run ({', '.join(p.name for p in earlier)}) and "
            "trainer.resume=never does not touch it: choose a new trainer.out_dir, continue it with "
            "trainer.resume=auto, or delete its outputs and start over with trainer.resume=overwrite"
        )
    if resume == "overwrite":
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            log.warning("trainer.resume=overwrite: deleted %s", path)
