"""``longrl bench rollout --family qwen2`` on the tiny text model (CPU, fp32): the JSON line, greedy
tokens equal to transformers', and the text family's flags."""

import json

import pytest

from benchmarks.rollout import parse_args
from longrl.cli import main as cli_main


def test_bench_rollout_qwen2_tiny_json(capsys):
    args = ["bench", "rollout", "--family", "qwen2", "--tiny", "--device", "cpu"]
    args += ["--prompt-tokens", "48", "--n", "2", "--new-tokens", "4", "--hf-repeats", "2"]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    assert (row["family"], row["model"], row["dtype"]) == ("qwen2", "tiny", "float32")
    assert (row["prompt_tokens"], row["prefix_tokens"], row["n"], row["new_tokens"]) == (48, 48, 2, 4)
    assert "frames" not in row and "synthetic_video_embeddings" not in row
    # fp32 on one device: longrl's greedy tokens are transformers' own, on the bench model and the check model
    assert row["greedy_match"] is True and row["first_mismatch"] is None and row["greedy_match_frac"] == 1.0
    assert row["fp32_tiny_greedy_match"] is True and row["longrl_greedy_rows_identical"] is True
    assert row["greedy_tf_argmax_frac"] == 1.0 and row["tf_logprob_max_abs_diff"] < 1e-3
    for key in ("longrl_s", "prefill_s", "decode_s", "decode_step_ms", "hf_s", "speedup", "warmup_s"):
        assert row[key] > 0, key
    assert len(row["hf_runs_s"]) == 2 and row["hf_s"] == min(row["hf_runs_s"])
    assert row["speedup"] == pytest.approx(row["hf_s"] / row["longrl_s"], abs=0.05 + 0.02 * row["speedup"])
    assert row["peak_mem_gb"] is None and "roofline_frac" not in row  # CPU: no bandwidth to compare with


def test_bench_rollout_family_flags():
    assert parse_args([]).sizes == [128]  # the video default is unchanged
    assert parse_args(["--family", "qwen2"]).sizes == [16384]
    assert parse_args(["--family", "llama", "--prompt-tokens", "4096,32768"]).sizes == [4096, 32768]
    for bad in (["--family", "qwen2", "--frames", "8"], ["--family", "qwen2", "--hf-video"], ["--prompt-tokens", "8"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
