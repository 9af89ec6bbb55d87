"""Every `longrl ...` command in the README's code blocks parses, and the small ones run as written.

The README's `my.yaml` is a placeholder for the user's settings; here it is a tiny config written
into the working directory, so each command line runs exactly as the README shows it. Only
`data synth` gets extra arguments (smaller sizes; argparse takes the last value). The quickstart
and the GPU benchmarks are parsed, not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from longrl.cli import main, parse_args

README = Path(__file__).resolve().parents[1] / "README.md"

TINY_YAML = """\
data: {num_frames: 4, min_pixels: 3136, max_pixels: 3136}
model:
  dtype: float32
  tiny: {hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2,
         vision_hidden_size: 32, vision_depth: 1, vision_num_heads: 2, vocab_size: 300}
sft: {epochs: 1, batch_size: 4}
rl: {steps: 2, prompts_per_step: 2}
rollout: {n: 2, max_new_tokens: 8}
eval: {max_new_tokens: 8, max_rows: 4}
trainer: {device: cpu, log_every: 1, tensorboard: false, progress: false}
"""
SMALL_SYNTH = ["--train", "6", "--test", "4", "--frames", "16"]


def readme_commands() -> list[list[str]]:
    """argv (without `longrl`) of every `longrl` command in a fenced code block, in README order."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv[:1] == ["longrl"]:
                    commands.append(argv[1:])
    return commands


def test_every_readme_command_parses():
    commands = readme_commands()
    # Guards the extraction: the README shows every subcommand.
    assert {argv[0] for argv in commands} == {
        "quickstart",
        "data",
        "config",
        "train",
        "eval",
        "cache-embeds",
        "export",
        "report",
        "bench",
        "datagen",
        "serve",
    }
    for argv in commands:
        args = parse_args(argv)  # argparse exits (SystemExit) on anything it does not accept
        if args.command in ("train", "eval", "cache-embeds", "config"):
            assert args.config == "my.yaml" and args.overrides, argv
            assert all("=" in o for o in args.overrides), argv
        if args.command == "bench" and args.which == "rollout":
            from benchmarks.rollout import parse_args as bench_rollout_args

            assert bench_rollout_args(args.args).device == "cuda"


def test_train_rl_overrides_after_config_are_taken_in_order():
    args = parse_args(["train", "rl", "rollout.n=4", "--config", "my.yaml", "model.path=m", "rollout.n=8"])
    assert (args.stage, args.config, args.overrides) == (
        "rl",
        "my.yaml",
        ["rollout.n=4", "model.path=m", "rollout.n=8"],
    )
    with pytest.raises(SystemExit):
        parse_args(["train", "rl", "--config", "my.yaml", "--nope"])
    with pytest.raises(SystemExit):  # export takes no overrides
        parse_args(["export", "--ckpt", "a", "--out", "b", "rollout.n=8"])


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("my.yaml").write_text(TINY_YAML)
    ran = []
    for argv in readme_commands():
        # Run elsewhere: quickstart and GPU benches (minutes), serve (a server: test_serve), datagen (needs an
        # endpoint: test_datagen_serve), the published benchmark files (test_eval_benchmark converts a copy).
        if argv[0] in ("quickstart", "bench", "serve", "datagen") or "--benchmark" in argv:
            continue
        run = argv + SMALL_SYNTH if argv[:2] == ["data", "synth"] else argv
        capsys.readouterr()
        code = main(run)
        out, err = capsys.readouterr()
        assert code == 0, (argv, err[-2000:])
        ran.append(argv[0])
        if argv[0] == "config":
            resolved = yaml.safe_load(out)
            assert resolved["rollout"]["n"] == 8 and resolved["rl"]["steps"] == 2  # override, then my.yaml
    assert ran == [
        "data",
        "data",
        "data",
        "data",
        "config",
        "train",
        "train",
        "eval",
        "cache-embeds",
        "export",
        "report",
    ]
    assert len(Path("data/synth/train.jsonl").read_text().splitlines()) == 6
    assert len(Path("data/math/train.jsonl").read_text().splitlines()) == 6  # the arithmetic task
    assert len(list(Path("data/shapes/images").glob("*.png"))) == 10  # the image task: 6 train + 4 test
    assert '"beep"' in Path("data/av/train.jsonl").read_text()  # the audio-visual task
    assert Path("runs/sft/model/config.json").is_file() and Path("runs/rl/model/config.json").is_file()
    assert Path("runs/rl/checkpoints/step_2").is_dir()
    assert Path("hf_model/config.json").is_file() and any(Path("hf_model").glob("*.safetensors"))
    assert any(Path("cache").iterdir())
    assert Path("runs/default/eval/report.json").is_file()  # eval writes under my.yaml's trainer.out_dir
