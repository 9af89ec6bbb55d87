"""Bad input through the `longrl` command: one line `error: ...`, the exit code, no traceback.

The config cases are files of tests/bad_input/ (one per case); each names its expected exit code
and message in `# expect-exit:` / `# expect-error:` header lines (`{file}` stands for its path).
Every case must be refused when the config loads: before any model loads or run directory is made.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from longrl.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_input"


def _expected(path: Path) -> tuple[int, str] | None:
    text = path.read_bytes().decode("utf-8", errors="replace")  # a case may hold bytes that are not UTF-8
    header = dict(re.findall(r"^# (expect-exit|expect-error): (.*)$", text, flags=re.M))
    if "expect-error" not in header:
        return None  # a case of another kind (rows, videos) that other tests read
    return int(header["expect-exit"]), header["expect-error"].replace("{file}", str(path))


CONFIG_CASES = sorted(p for p in CORPUS.glob("*.yaml") if _expected(p))


def test_corpus_holds_the_config_cases():
    names = {p.stem for p in CONFIG_CASES}
    assert {
        "bad_yaml",
        "rollout_n_zero",
        "negative_temperature",
        "prompts_per_step_zero",
        "group_of_one",
        "model_path_missing",
        "model_path_no_model",
    } <= names


@pytest.fixture
def no_model_loads(monkeypatch, tmp_path):
    """Run in an empty directory; loading a model or decoding rows fails the test."""
    monkeypatch.chdir(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or the rows loaded before the config was checked")

    monkeypatch.setattr("longrl.infra.setup.load_model", forbidden)
    monkeypatch.setattr("longrl.infra.setup.read_rows", forbidden)
    return tmp_path


@pytest.mark.parametrize("command", [["train", "rl"], ["train", "sft"], ["eval"], ["config"]])
@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda p: p.stem)
def test_bad_config_is_one_line_before_anything_loads(case, command, no_model_loads, capsys):
    code, message = _expected(case)
    if command == ["config"] and case.stem.startswith("model_path"):
        pytest.skip("`longrl config` only prints the config; model.path is checked by the commands that load it")
    assert main([*command, "--config", str(case)]) == code
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(no_model_loads.iterdir()) == []  # no run directory (trainer.out_dir) was made


def test_bad_override_after_config_names_the_key(no_model_loads, capsys):
    file = CORPUS / "rollout_n_zero.yaml"  # its rollout.n=0 is overridden: the later error is reported
    assert main(["train", "rl", "--config", str(file), "rollout.n=3", "algorithm.kl_coef=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: algorithm.kl_coef=-1.0 must be >= 0"
    # one dataclass, two places in the tree: the key names the place
    assert main(["train", "rl", "rl.optim.lr=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: rl.optim.lr=-1.0 must be >= 0"
    assert main(["train", "rl", "algorithm.name=gspo", "algorithm.ppo_epochs=0"]) == 2  # after the preset too
    assert capsys.readouterr().err.strip() == "error: algorithm.ppo_epochs=0 must be >= 1"
    assert main(["train", "rl", "rollout.n=[1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: override 'rollout.n=[1': the value is not valid YAML (expected ',' or ']', but got '<stream end>'); "
        "quote it, e.g. key='a: b'"
    )
    assert main(["train", "rl", "rollout.n"]) == 2
    assert capsys.readouterr().err.strip() == "error: override 'rollout.n' must look like key.sub=value"


def test_debug_adds_the_traceback_and_keeps_the_exit_code(no_model_loads, capsys):
    for argv in (
        ["--debug", "train", "rl", "rl.prompts_per_step=0"],
        ["train", "rl", "--debug", "rl.prompts_per_step=0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):")
        assert "ConfigError: rl.prompts_per_step=0 must be >= 1" in err
        assert err.strip().splitlines()[-1] == "error: rl.prompts_per_step=0 must be >= 1"


def test_missing_config_file_and_empty_data_path(no_model_loads, capsys):
    assert main(["train", "sft", "--config", "nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: config file nope.yaml does not exist"
    assert main(["config", "--config", "."]) == 2
    assert capsys.readouterr().err.strip() == "error: config file . is a directory; pass a .yaml file"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from _checkpoint_tiny import optimizer_and_scheduler, tiny
    from longrl.infra.checkpoint import Checkpointer
    from longrl.infra.hf_files import ProcessorSpec

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    model, tok = tiny()
    opt, sched = optimizer_and_scheduler(model)
    spec = ProcessorSpec.from_model(model, min_pixels=56 * 56, max_pixels=56 * 56)
    Checkpointer(run, tokenizer=tok, processor=spec).save(1, model=model, optimizer=opt, scheduler=sched, extra={})
    return run


def test_export_suggests_overwrite_and_overwrite_replaces(checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: --out {out} is not empty; choose a new directory or pass --overwrite"
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]  # untouched
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "config.json" in names and any(n.endswith(".safetensors") for n in names)


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --ckpt {tmp_path / 'nope'} does not exist"


def test_model_path_hints(tmp_path, monkeypatch, capsys):
    """A run directory or a checkpoint given as model.path says where the model is, before loading."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("longrl.infra.setup.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    (tmp_path / "ckpt_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    cases = {
        "run": "error: model.path='run' holds no model (no config.json in it); a run directory? its model is "
        "model.path=run/model",
        "ckpt_run": "error: model.path='ckpt_run' holds no model (no config.json in it); a checkpoint? export it "
        "first: longrl export --ckpt ckpt_run --out DIR, then model.path=DIR",
        "afile": "error: model.path='afile' is a file; point it at a model directory (with config.json)",
        # one slash but its first part is a local folder: a mistyped path, not a hub id
        "run/modle": "error: model.path='run/modle' does not exist; point it at a model directory (a run's OUT/model "
        "or `longrl export --out`), a hub id (owner/name), or tiny",
    }
    for path, message in cases.items():
        assert main(["eval", f"model.path={path}", "data.test_path=rows.jsonl"]) == 2
        assert capsys.readouterr().err.strip() == message


def test_new_keys_of_this_round_fail_in_one_line(no_model_loads, capsys, tmp_path, monkeypatch):
    """data.image_* bounds and rl.group_attention are checked when the config loads; `longrl bench`
    outside a source checkout says where the benchmarks are."""
    import longrl.cli as cli

    assert main(["train", "rl", "data.image_min_pixels=4000", "data.image_max_pixels=3000"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: data.image_max_pixels=3000 must be >= data.image_min_pixels=4000"
    )
    assert main(["train", "rl", "rl.group_attention=flex"]) == 2
    assert "rl.group_attention" in capsys.readouterr().err
    # an installed package without the checkout: no benchmarks/ beside src/ nor in the working directory
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site" / "longrl" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="longrl bench runs from a source checkout"):
        cli.find_benchmarks()
    assert main(["bench", "gen", "--tiny"]) == 1  # a ValueError: one line, exit 1
    err = capsys.readouterr().err.strip()
    assert "longrl bench runs from a source checkout" in err and len(err.splitlines()) == 1
