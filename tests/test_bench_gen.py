"""``longrl bench gen --tiny`` on CPU: one JSON line, both phases timed, the diffusers baseline in the same run."""

import json

import pytest

from longrl.cli import main as cli_main


@pytest.mark.parametrize("model", ["sd3", "wan"])
def test_bench_gen_tiny_prints_one_json_line(capsys, model):
    args = ["--model", model, "--tiny", "--device", "cpu", "--resolution", "32", "--prompts", "2", "--n", "2"]
    args += ["--steps", "3", "--frames", "5"]
    args += ["--train-timesteps", "2", "--micro-batch", "2", "--text-tokens", "8", "--warmup", "0"]
    assert cli_main(["bench", "gen", *args]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["model"] == f"tiny-{model}" and (line["prompts"], line["n"], line["steps"]) == (2, 2, 3)
    assert line["frames"] == (5 if model == "wan" else 1)
    for key in ("sample_s", "diffusers_s", "train_step_s"):
        assert line[key] > 0, key
    assert line["sample_speedup"] == pytest.approx(
        line["diffusers_s"] / line["sample_s"], rel=0.05
    )  # the times are rounded to 1 ms
    assert line["sample_images_s"] == pytest.approx(4 / line["sample_s"], rel=0.05)  # the times are rounded to 1 ms
    assert 0 <= line["train_clip_frac"] <= 1
