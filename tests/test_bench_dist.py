"""``longrl bench train|rollout`` under torchrun (2 gloo ranks on CPU, ``--tiny``): every rank's peak
memory and tokens/s in rank 0's JSON lines, and the longest frame count that fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _start(*args: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "longrl",
        "bench",
        *args,
        "--tiny",
        "--device",
        "cpu",
        "--samples",
        "2",
        "--repeats",
        "1",
        "--longest",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]  # rank 0's lines only


def test_bench_train_sp2_and_rollout_dp2_under_torchrun():
    train = _start("train", "--sp", "2", "--frames", "2,4", "--response-tokens", "4")
    rollout = _start("rollout", "--frames", "2,4", "--new-tokens", "3", "--max-mem-gb", "0.01")
    rows = _lines(train)
    assert [r.get("frames") for r in rows] == [2, 4, None]
    for row in rows[:2]:
        assert (row["bench"], row["world"], row["dp"], row["sp"], row["fits"]) == ("train", 2, 1, 2, True)
        assert [r["rank"] for r in row["ranks"]] == [0, 1]
        for rank in row["ranks"]:
            assert rank["peak_mem_gb"] > 0 and rank["tok_s"] > 0
            assert rank["tokens"] == row["prefix_tokens"] + 2 * 4  # both sp ranks: the same packed group
        assert row["tok_s"] == round(row["ranks"][0]["tokens"] / row["step_s"], 1)  # counted once over sp
    assert rows[2]["longest_frames"] == 4 and rows[2]["tried"] == {"2": "fits", "4": "fits"}

    rows = _lines(rollout)
    first, summary = rows  # over --max-mem-gb at the first size: the search stops there
    assert (first["bench"], first["dp"], first["sp"], first["fits"]) == ("rollout", 2, 1, False)
    assert all(r["tokens"] == 2 * 3 and r["peak_mem_gb"] > 0.01 for r in first["ranks"])
    assert first["tok_s"] == round(2 * 2 * 3 / first["step_s"], 1)  # both dp ranks' samples
    assert summary["longest_frames"] is None and summary["tried"] == {"2": "over --max-mem-gb"}
