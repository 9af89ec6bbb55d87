"""Helpers for multi-process tests: start ``world`` gloo ranks on CPU as torchrun would describe them."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from longrl.dist import shutdown

    try:
        fn(rank, *args)
    finally:
        shutdown()


def spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, *args)`` in ``world`` processes (fn must be importable: a module-level function)."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world)


def full_grad(param: torch.Tensor) -> torch.Tensor | None:
    grad = param.grad
    if grad is None:
        return None
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad
