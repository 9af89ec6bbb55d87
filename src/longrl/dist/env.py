"""Process group and device mesh from torchrun's environment; the collectives the trainer needs.

torchrun (one node, ``--rdzv-backend c10d`` across nodes, or one torchrun per node under srun)
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` reads
them. Without them (plain ``python -m longrl ...``) it is one process and nothing is initialized,
so the single-process path runs exactly as before. The mesh is ``("dp", "sp")``: a GRPO group never
crosses dp ranks, its tokens are sharded over the sp ranks of one dp slot.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from longrl.dist.config import DistConfig


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None  # ("dp", "sp"); None in a single process
    config: DistConfig = field(default_factory=lambda: DistConfig(dp=1))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0

    @property
    def dp_size(self) -> int:
        return self.mesh["dp"].size() if self.mesh is not None else 1

    def dp_group(self):
        return self.mesh["dp"].get_group() if self.mesh is not None else None


_CURRENT = DistEnv()


def current() -> DistEnv:
    """The process's distributed environment (a single-process one until :func:`init_distributed`)."""
    return _CURRENT


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(cfg: DistConfig, device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU) and build the
    ``("dp", "sp")`` mesh; one process without torchrun's variables gets a single-process env.

    ``device`` is ``trainer.device``: "auto" picks ``cuda:LOCAL_RANK`` when CUDA is available."""
    global _CURRENT
    world = world_size_from_env()
    resolved = cfg.resolved(world)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world == 1:
        _CURRENT = DistEnv(device=dev, config=resolved)
        return _CURRENT
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    mesh = init_device_mesh(dev.type, (resolved.dp, resolved.sp), mesh_dim_names=("dp", "sp"))
    _CURRENT = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, mesh=mesh, config=resolved)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (end of a run); the env goes back to a single process."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _CURRENT = DistEnv()


# ---- collectives over the dp ranks (no-ops in one process) -------------------------------------------


def _active() -> bool:
    return _CURRENT.mesh is not None and _CURRENT.dp_size > 1


def _tensor(values: list[float]) -> torch.Tensor:
    device = _CURRENT.device if dist.get_backend() == "nccl" else torch.device("cpu")
    return torch.tensor(values, dtype=torch.float64, device=device)


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every dp rank."""
    if not _active():
        return bool(flag)
    t = _tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_CURRENT.dp_group())
    return bool(t.item() == 1.0)


def max_int(value: int) -> int:
    """The largest ``value`` over the dp ranks."""
    if not _active():
        return int(value)
    t = _tensor([float(value)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CURRENT.dp_group())
    return int(t.item())


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the dp ranks (same length everywhere)."""
    if not _active():
        return list(values)
    t = _tensor(list(values))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_CURRENT.dp_group())
    return t.tolist()


def all_gather_ints(values: list[int]) -> list[list[int]]:
    """Every dp rank's ``values`` (ragged), in dp-rank order."""
    if not _active():
        return [list(values)]
    out: list = [None] * _CURRENT.dp_size
    dist.all_gather_object(out, list(values), group=_CURRENT.dp_group())
    return out
