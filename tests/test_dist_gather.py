"""Chunked gathers keep rank 0's host memory bounded: 2 gloo ranks each send 48 MiB of per-sample
tensors; rank 0 consumes them piece by piece. Peak RSS grows by a few pieces with
``gather_chunks=4``, by more than one rank's whole payload in one piece (``gather_chunks=0``)."""

from __future__ import annotations

import json
import os

import torch

from _dist import spawn

ITEMS, ITEM_FLOATS = 48, 262_144  # 48 tensors of 1 MiB per rank


def _peak_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that across exec from the
    forked parent, so a worker spawned by a big pytest process starts with the parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _consume(items, chunk: int) -> tuple[float, int, float]:
    from longrl.dist.gather import iter_gathered

    before = _peak_mib()
    total, count = 0.0, 0
    for piece in iter_gathered(items, chunk):
        total += sum(float(t.sum()) for t in piece)
        count += len(piece)
    return total, count, _peak_mib() - before


def _worker(rank: int, out_dir: str) -> None:
    from longrl.dist import DistConfig, init_distributed

    env = init_distributed(DistConfig(), "cpu")
    items = [torch.full((ITEM_FLOATS,), float(rank + 1)) for _ in range(ITEMS)]
    _consume(items, 4)  # warm-up: gloo buffers, the allocator's first pieces
    chunked = _consume(items, 4)  # before the whole gather: a high-water mark only ever rises
    whole = _consume(items, 0)
    from longrl.config_utils import ConfigError
    from longrl.dist import parallelize

    try:  # (a config check that needs a live mesh, tested here to save a spawn)
        parallelize(torch.nn.Linear(2, 2), env.mesh, DistConfig(dp=2, cpu_offload=True))
        offload_error = ""
    except ConfigError as err:
        offload_error = str(err)
    if rank == 0:
        with open(os.path.join(out_dir, "rss.json"), "w") as f:
            json.dump({"chunked": chunked, "whole": whole, "offload_error": offload_error}, f)


def test_chunked_gather_bounds_rank0_peak_memory(tmp_path, monkeypatch):
    # glibc returns every freed buffer over 64 KiB to the OS (no adaptive threshold), so the peak
    # RSS measures what the gather holds, not what the allocator keeps cached
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    spawn(_worker, 2, str(tmp_path))
    r = json.loads((tmp_path / "rss.json").read_text())
    expected_total = float(ITEMS * ITEM_FLOATS * (1 + 2))
    payload_mib = ITEMS * ITEM_FLOATS * 4 / 2**20  # one rank's items: 48 MiB
    for name in ("chunked", "whole"):
        total, count, _ = r[name]
        assert count == 2 * ITEMS and total == expected_total, name  # every item arrived, once
    chunked_growth, whole_growth = r["chunked"][2], r["whole"][2]
    assert chunked_growth < 0.5 * payload_mib, r  # a few 4-item pieces in flight
    assert whole_growth > payload_mib, r  # the other rank's payload, received and unpickled at once
    assert r["offload_error"] == (
        "dist.cpu_offload=true offloads GPU training state to host memory; on CPU it "
        "already lives there: set dist.cpu_offload=false"
    )
