import pytest

from longrl.config import Config, ConfigError, load_config, save_config


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rollout:\n  n: 4\nrl:\n  optim:\n    lr: 0.001\n")
    cfg = load_config(path, ["rollout.n=8", "data.fps=2", "trainer.resume=never"])
    assert cfg.rollout.n == 8  # the override beats the file
    assert cfg.rl.optim.lr == 0.001 and cfg.data.fps == 2.0 and cfg.trainer.resume == "never"
    assert load_config().rollout.n == Config().rollout.n
    assert load_config(None, ["rl.optim.lr=3e-4"]).rl.optim.lr == 3e-4  # YAML 1.1 reads this as a string


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.nn'.*allowed keys here: .*\bn\b"):
        load_config(None, ["rollout.nn=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(None, ["nope.x=1"])


def test_wrong_type_and_choice():
    with pytest.raises(ConfigError, match=r"rollout.n='many' must be an integer"):
        load_config(None, ["rollout.n=many"])
    with pytest.raises(ConfigError, match=r"data.bad_sample='drop' is not allowed; choose one of 'skip', 'error'"):
        load_config(None, ["data.bad_sample=drop"])
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(None, ["model.train_vision=3"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["rollout.n"])


def test_algorithm_preset_then_explicit_keys():
    cfg = load_config(None, ["algorithm.name=dapo", "rollout.max_new_tokens=100"])
    assert cfg.algorithm.clip_ratio_high == 0.28 and cfg.algorithm.dynamic_sampling
    assert cfg.algorithm.overlong_buffer == 20  # DAPO's 20% of the maximum response length
    cfg = load_config(None, ["algorithm.name=dapo", "algorithm.clip_ratio_high=0.3"])
    assert cfg.algorithm.clip_ratio_high == 0.3  # an explicit key wins over the preset
    drgrpo = load_config(None, ["algorithm.name=drgrpo", "rollout.max_new_tokens=50"]).algorithm
    assert drgrpo.token_sum_divisor == 50.0
    with pytest.raises(ConfigError, match="overlong_buffer=80 must be below"):
        load_config(None, ["algorithm.overlong_buffer=80", "rollout.max_new_tokens=64"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["rollout.n=3", "algorithm.name=gspo"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_sampling_params_come_from_the_rollout_config():
    from longrl.rollout import RolloutConfig, SamplingParams

    cfg = RolloutConfig(n=3, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=11)
    params = SamplingParams.from_config(cfg, seed=4, stop_token_ids=[2, 9])
    assert (params.n, params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (3, 0.7, 0.9, 5, 11)
    assert (params.seed, params.stop_token_ids, params.is_greedy) == (4, (2, 9), False)
