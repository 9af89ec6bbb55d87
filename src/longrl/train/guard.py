"""Skip updates whose loss or gradient is NaN/inf; stop the run after too many in a row.

    guard = NonFiniteGuard(max_consecutive=cfg.trainer.max_nonfinite_steps)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if guard.check(loss, grad_norm, step=step):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)   # always: a skipped step's gradients are garbage

A skipped update leaves the weights untouched, so the last checkpoint stays good; after
``max_consecutive`` skips in a row :class:`NonFiniteError` stops the run before anything else is
written.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


def _is_finite(value: torch.Tensor | float) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


class NonFiniteGuard:
    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive={max_consecutive} must be >= 1 (trainer.max_nonfinite_steps)")
        self.max_consecutive = max_consecutive
        self.consecutive = 0  # non-finite updates in a row, up to now
        self.skipped = 0  # over the whole run
        self._calls = 0

    def check(self, loss: torch.Tensor | float, grad_norm: torch.Tensor | float, *, step: int | None = None) -> bool:
        """True: both are finite, apply the update. False: skip it (a warning names the step).

        Under torch.distributed the verdict is agreed across ranks (one rank's NaN skips the
        update everywhere), so replicas never diverge."""
        self._calls += 1
        step = self._calls if step is None else step
        finite = _is_finite(loss) and _is_finite(grad_norm)
        if dist.is_available() and dist.is_initialized():
            device = loss.device if isinstance(loss, torch.Tensor) else torch.device("cpu")
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            flag = torch.tensor(1.0 if finite else 0.0, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item() == 1.0)
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        log.warning(
            "step %s: non-finite loss (%s) or grad norm (%s); update skipped (%d in a row, limit %d)",
            step, _fmt(loss), _fmt(grad_norm), self.consecutive, self.max_consecutive,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: loss or gradient was NaN/inf for {self.consecutive} updates in a row; stopping. "
                "The weights were not changed by those updates and the last checkpoint is intact. Usual causes: "
                "too high a learning rate (lower rl.optim.lr / sft.optim.lr), fp16 overflow (use bfloat16), or a "
                "degenerate batch; raise trainer.max_nonfinite_steps to tolerate more"
            )
        return False

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped = int(state.get("skipped", 0))


def _fmt(value: torch.Tensor | float) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().float()
        return f"{value.item():.4g}" if value.numel() == 1 else f"tensor of {value.numel()}"
    return f"{float(value):.4g}"
