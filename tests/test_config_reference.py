"""`longrl config` and configs/reference.yaml: every key, its value, default and comment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from longrl import config_doc
from longrl.cli import main
from longrl.config import Config, load_config
from longrl.config_utils import to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_has_a_comment():
    missing = config_doc.missing_comments(Config)
    assert not missing, (
        f"config fields without a trailing `# comment` on their line: {', '.join(missing)}; "
        "add one (it is the key's documentation in `longrl config` and configs/reference.yaml)"
    )


def test_reference_yaml_is_in_sync_with_the_dataclasses():
    committed = (ROOT / config_doc.REFERENCE_PATH).read_text()
    fresh = config_doc.render(load_config(), Config())
    assert committed == fresh, (
        f"{config_doc.REFERENCE_PATH} is out of date with the config dataclasses: "
        f"run `{config_doc.REGENERATE}` from the repository root"
    )


def test_reference_yaml_loads_back_to_the_defaults():
    assert load_config(ROOT / config_doc.REFERENCE_PATH) == load_config()


def test_longrl_config_prints_values_defaults_and_comments(tmp_path, capsys):
    (tmp_path / "my.yaml").write_text("rollout:\n  n: 4\nsft:\n  optim:\n    lr: 0.01\n")
    assert main(["config", "--config", str(tmp_path / "my.yaml"), "algorithm.name=dapo", "rollout.n=6"]) == 0
    out = capsys.readouterr().out
    resolved = load_config(tmp_path / "my.yaml", ["algorithm.name=dapo", "rollout.n=6"])
    assert yaml.safe_load(out) == to_dict(resolved)  # the printout is the resolved config, as YAML
    lines = out.splitlines()
    assert "  n: 6  # samples per prompt (the GRPO group size) [default: 8]" in lines  # the override won
    assert "    lr: 0.01  # peak learning rate (AdamW) [default: 0.003]" in lines  # nested default: sft's own
    assert (
        '  clip_ratio_high: 0.28  # ratio upper bound 1 + clip_ratio_high ("clip-higher" when > low) '
        "[default: 0.2]" in lines
    )  # the preset's value
    assert "  temperature: 1.0  # softmax temperature; 0 = greedy" in lines  # unchanged: no default note
    assert "  optim:  # SFT optimizer" in lines  # a section's comment (its field spans two lines)
    # every key is there, each with a comment
    keys = [line for line in lines if line and not line.lstrip().startswith("#")]
    assert len(keys) == _count_keys(Config()) and all("  # " in line for line in keys)


def _count_keys(cfg) -> int:
    return sum(
        1 + (_count_keys(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name)) else 0)
        for f in dataclasses.fields(cfg)
    )
