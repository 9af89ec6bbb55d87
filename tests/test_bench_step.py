"""``longrl bench step`` on a tiny model (CPU): the JSON line, and the two pipelines doing equal work."""

import json

import pytest

from benchmarks.step import parse_frames, video_grid
from longrl.cli import main as cli_main


def test_frames_spec_and_grid():
    assert parse_frames("128,3600@60") == [(128, 128), (3600, 60)]
    assert video_grid(128, 128) == (64, 32, 32)  # 448x448 frames: 16x16 merged tokens per 2 frames
    t, h, w = video_grid(3600, 60)
    assert (t, h % 2, w % 2, h * w // 4 // 2) == (1800, 0, 0, 60)
    with pytest.raises(ValueError, match="even number of frames"):
        video_grid(5, 128)


def test_bench_step_tiny_json(capsys):
    args = [
        "bench",
        "step",
        "--tiny",
        "--device",
        "cpu",
        "--frames",
        "2@8",
        "--prompts",
        "2",
        "--n",
        "2",
        "--new-tokens",
        "3",
    ]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    for key in (
        "naive_s",
        "longrl_s",
        "longrl_cold_s",
        "speedup",
        "encode_s",
        "rollout_s",
        "ref_logprobs_s",
        "update_s",
        "naive_rollout_s",
        "naive_encode_s",
        "naive_ref_logprobs_s",
        "naive_update_s",
        "peak_mem_gb",
        "naive_peak_mem_gb",
    ):
        assert key in row, key
    assert row["longrl_s"] > 0 and row["naive_s"] > 0
    assert row["speedup"] == pytest.approx(row["naive_s"] / row["longrl_s"], rel=0.02)
    # both pipelines sample every token of every response: 2 prompts x 2 samples x 3 tokens
    assert row["longrl_tokens"] == row["naive_tokens"] == 2 * 2 * 3
    # 2 frames at 8 tokens each, and 62 text tokens around them
    assert (row["prefix_tokens"], row["step_tokens"]) == (16 + 62, 2 * (16 + 62) + 2 * 2 * 3)


def test_bench_step_longest_reports_largest_fit(capsys, monkeypatch):
    import torch

    import benchmarks.step as step

    real_step = step.longrl_step

    def out_of_memory_above_100_tokens(model, ref_model, optimizer, scheduler, prompts, cfg, seed, timer=None):
        if len(prompts[0]) > 100:  # 4 frames at 8 tokens (94 tokens) fits, 6 frames (110) does not
            with timer("update"):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real_step(model, ref_model, optimizer, scheduler, prompts, cfg, seed, timer)

    monkeypatch.setattr(step, "longrl_step", out_of_memory_above_100_tokens)
    args = [
        "bench",
        "step",
        "--tiny",
        "--device",
        "cpu",
        "--frames",
        "2@8,6@8,4@8",
        "--prompts",
        "1",
        "--n",
        "2",
        "--new-tokens",
        "2",
        "--longest",
        "--kl-coef",
        "0",
    ]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r.get("frames") for r in rows[:3]] == [2, 6, 4] and rows[0]["naive_s"] is rows[2]["naive_s"] is None
    assert "ref_logprobs_s" not in rows[0]  # kl_coef 0: no reference model
    assert rows[1]["longrl_s"] is None and rows[1]["error"].startswith("out of memory in update: CUDA out of memory.")
    summary = rows[3]
    assert summary["longest_frames"] == 4 and summary["longest_step_s"] == rows[2]["longrl_s"]
    assert summary["tried"] == {"2@8": "fits", "6@8": rows[1]["error"], "4@8": "fits"}


def test_bench_step_rejects_odd_frames(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "step", "--tiny", "--device", "cpu", "--frames", "3"])
    assert exit_info.value.code == 2
    assert "--frames 3: a video needs an even number of frames" in capsys.readouterr().err
