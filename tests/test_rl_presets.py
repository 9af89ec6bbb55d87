import dataclasses
from pathlib import Path

import pytest

from longrl.rl import PRESETS, AlgorithmConfig, apply_preset, presets_markdown


def test_presets_published_settings():
    dapo = apply_preset(AlgorithmConfig(), "dapo").resolve(max_response_len=20480)
    assert (dapo.clip_ratio_low, dapo.clip_ratio_high, dapo.loss_agg) == (0.2, 0.28, "token_mean")
    assert dapo.dynamic_sampling and dapo.overlong_buffer == 4096 and dapo.kl_coef == 0
    assert apply_preset(AlgorithmConfig(), "dapo").resolve(max_response_len=64).overlong_buffer == 13
    with pytest.raises(ValueError, match="overlong_buffer=64 must be below"):
        AlgorithmConfig(overlong_buffer=64).resolve(max_response_len=64)
    gspo = apply_preset(AlgorithmConfig(), "gspo")
    assert (gspo.importance, gspo.clip_ratio_low, gspo.clip_ratio_high) == ("sequence", 3e-4, 4e-4)
    drgrpo = apply_preset(AlgorithmConfig(), "drgrpo").resolve(max_response_len=1024)
    assert not drgrpo.norm_adv_by_std and drgrpo.loss_agg == "seq_mean_token_sum" and drgrpo.token_sum_divisor == 1024
    rfpp = apply_preset(AlgorithmConfig(), "reinforce_pp")
    assert rfpp.advantage == "reinforce_pp" and rfpp.kl_in_reward and rfpp.kl_estimator == "k1"
    grpo = apply_preset(AlgorithmConfig(), "grpo")
    assert grpo.kl_coef == 0.04 and grpo.kl_estimator == "k3" and grpo.norm_adv_by_std
    assert apply_preset(AlgorithmConfig(), "rloo").advantage == "rloo"


def test_presets_replace_each_other_fully_and_keep_schedule():
    base = AlgorithmConfig(ppo_epochs=2, mini_batches=4)
    for first in PRESETS:
        for second in PRESETS:
            layered = apply_preset(apply_preset(base, first), second)
            assert layered == apply_preset(base, second), (first, second)
            assert (layered.ppo_epochs, layered.mini_batches) == (2, 4)
            assert layered.name == second


def test_presets_markdown_lists_every_preset_with_arxiv_id():
    table = presets_markdown()
    for name in PRESETS:
        assert f"| `{name}` |" in table
    for arxiv in ("2402.03300", "2503.14476", "2503.20783", "2402.14740", "2501.03262", "2507.18071"):
        assert f"arXiv:{arxiv}" in table
    assert "`clip_ratio_high=0.28`" in table


def test_readme_shows_the_generated_preset_table_and_notes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## RL presets") :]
    assert presets_markdown() in section, "README.md 'RL presets' is stale: paste presets_markdown() there"
    assert "dual_clip_c=0" in presets_markdown() and "algorithm.max_tries" in presets_markdown()


def test_dual_clip_is_off_in_every_preset():
    for name in PRESETS:
        assert apply_preset(AlgorithmConfig(dual_clip_c=3.0), name).dual_clip_c == 0.0, name


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown algorithm preset 'ppo2'"):
        apply_preset(AlgorithmConfig(), "ppo2")
    with pytest.raises(ValueError, match="algorithm.loss_agg='mean'"):
        AlgorithmConfig(loss_agg="mean")
    with pytest.raises(ValueError, match="dual_clip_c"):
        AlgorithmConfig(dual_clip_c=0.5)
    with pytest.raises(ValueError, match="max_tries"):
        dataclasses.replace(AlgorithmConfig(), max_tries=0)
