"""Gathers of per-sample data to rank 0 in pieces of ``dist.gather_chunks`` items.

``gather_object`` pickles what it sends into one buffer per rank and rank 0 receives all of them at
once, so gathering a whole step (responses, log-probs, per-sample metrics) in one call costs several
times its size in host memory on rank 0. In pieces the transient buffers stay one piece per rank;
the consumer takes each piece as it arrives (:func:`iter_gathered`) or keeps them
(:func:`gather_to_main`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

from longrl.dist import env


def iter_gathered(items: list[Any], chunk: int) -> Iterator[list[Any]]:
    """On rank 0, yield every dp rank's ``items`` piece by piece (rank 0's first); on the other ranks
    yield nothing. Collective: every dp rank must iterate it to the end. ``chunk`` items per piece,
    0 = one piece per rank."""
    e = env.current()
    if e.mesh is None or e.dp_size == 1:
        yield from (items[i : i + chunk] for i in range(0, len(items), chunk)) if chunk else [items]
        return
    rounds = env.max_int(math.ceil(len(items) / chunk) if chunk else 1)
    group = e.dp_group()
    main = dist.get_global_rank(group, 0)
    for k in range(rounds):
        piece = items[k * chunk : (k + 1) * chunk] if chunk else items
        received = [None] * e.dp_size if e.rank == main else None
        dist.gather_object(piece, received, dst=main, group=group)
        if received is not None:
            for part in received:
                if part:
                    yield part
        del received, piece


def gather_to_main(items: list[Any], chunk: int) -> list[Any] | None:
    """Every dp rank's ``items`` concatenated on rank 0 (None on the others), sent in pieces."""
    out: list[Any] = []
    for piece in iter_gathered(items, chunk):
        out.extend(piece)
    return out if env.current().rank == 0 or env.current().mesh is None else None
