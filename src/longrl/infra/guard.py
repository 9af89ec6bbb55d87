"""Skip updates whose loss or gradient is NaN/inf; stop the run after too many in a row.

    guard = NonFiniteGuard(max_consecutive=cfg.trainer.max_nonfinite_steps)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if guard.check(loss, grad_norm, step=step):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)   # always: a skipped step's gradients are garbage

A skipped update leaves the weights untouched, so the last checkpoint stays good; after
``max_consecutive`` skips in a row :class:`NonFiniteError` stops the run before anything else is
written. Its message names what the run can go back to: the newest complete checkpoint under
``checkpoints`` (a :class:`~longrl.infra.checkpoint.Checkpointer`) and its step, or that none was
written yet. :func:`require_finite_weights` is the last check before weights are saved.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from longrl.infra.checkpoint import Checkpointer

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


def _is_finite(value: torch.Tensor | float) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


class NonFiniteGuard:
    def __init__(self, max_consecutive: int = 5, checkpoints: Checkpointer | None = None):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive={max_consecutive} must be >= 1 (trainer.max_nonfinite_steps)")
        self.max_consecutive = max_consecutive
        self.checkpoints = checkpoints  # a Checkpointer: the stop message names its newest checkpoint
        self.consecutive = 0  # non-finite updates in a row, up to now
        self.skipped = 0  # over the whole run
        self._calls = 0

    def check(self, loss: torch.Tensor | float, grad_norm: torch.Tensor | float, *, step: int | None = None) -> bool:
        """True: both are finite, apply the update. False: skip it (a warning names the step).

        Under torch.distributed the verdict is agreed across ranks (one rank's NaN skips the
        update everywhere), so replicas never diverge."""
        self._calls += 1
        step = self._calls if step is None else step
        finite = _all_ranks(
            _is_finite(loss) and _is_finite(grad_norm),
            loss.device if isinstance(loss, torch.Tensor) else torch.device("cpu"),
        )
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        log.warning(
            "step %s: non-finite loss (%s) or grad norm (%s); update skipped (%d in a row, limit %d)",
            step,
            _fmt(loss),
            _fmt(grad_norm),
            self.consecutive,
            self.max_consecutive,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: loss or gradient was NaN/inf for {self.consecutive} updates in a row; stopping "
                f"without saving the model. Those updates were skipped; {self._checkpoint_note()}. Usual causes: "
                "too high a learning rate (lower rl.optim.lr / sft.optim.lr), fp16 overflow (use bfloat16), or a "
                "degenerate batch; raise trainer.max_nonfinite_steps to tolerate more"
            )
        return False

    def _checkpoint_note(self) -> str:
        if self.checkpoints is None:
            return "this run keeps no checkpoints"
        latest = self.checkpoints.latest()
        if latest is None:
            return f"no checkpoint was written yet (under {self.checkpoints.root})"
        from longrl.infra.checkpoint import step_of

        return f"the last checkpoint is {latest} (step {step_of(latest)})"

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped = int(state.get("skipped", 0))


def _all_ranks(finite: bool, device: torch.device) -> bool:
    """``finite`` on every rank (a no-op without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return finite
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    flag = torch.tensor(1.0 if finite else 0.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def _fmt(value: torch.Tensor | float) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().float()
        return f"{value.item():.4g}" if value.numel() == 1 else f"tensor of {value.numel()}"
    return f"{float(value):.4g}"


def require_finite_weights(model, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter of ``model`` holding NaN/inf, so
    ``what`` (e.g. "the final model") is never written with broken weights."""
    broken, device = None, torch.device("cpu")
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param  # a DTensor shard under FSDP
        device = local.device
        if not bool(torch.isfinite(local.detach()).all()):
            broken = name
            break
    if not _all_ranks(broken is None, device):  # every rank raises together, none waits in a collective
        raise NonFiniteError(
            f"parameter {broken or '(on another rank)'} holds NaN/inf, so {what} was not saved; lower the "
            "learning rate (sft.optim.lr / rl.optim.lr) and start again from the last checkpoint"
        )
