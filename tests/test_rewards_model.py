import logging

import pytest

from longrl.rewards import RewardConfig, RewardInput, build_reward, register_reward, registered_rewards
from longrl.rewards.user import load_user_function

GOOD = "<think>x</think><answer>B</answer>"


def sample(sample_id="s0", response=GOOD, answer="B"):
    return RewardInput(sample_id, response, answer, options=["red", "blue", "green"])


@register_reward("test_length_bonus")
def length_bonus(s: RewardInput) -> float:
    return min(len(s.response), 10) / 10


@register_reward("test_explodes_on_bad")
def explodes_on_bad(s: RewardInput) -> float:
    if "bad" in s.sample_id:
        raise RuntimeError("cannot score this one")
    return 1.0


def test_registry_lists_builtins_and_rejects_a_clash():
    assert {"multiple_choice", "math", "judge", "test_length_bonus"} <= set(registered_rewards())
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length_bonus")(lambda s: 0.0)


def test_default_reward_is_multiple_choice():
    [right, wrong] = build_reward(RewardConfig())([sample(), sample(response="<think>x</think><answer>C</answer>")])
    assert right.score == pytest.approx(1.0) and wrong.score == pytest.approx(0.1)
    assert right.components == {
        "multiple_choice": pytest.approx(1.0),
        "multiple_choice/format": 1.0,
        "multiple_choice/accuracy": 1.0,
    }
    assert right.error is None


def test_weights_default_to_the_mean_and_can_be_given():
    cfg = RewardConfig(functions=["multiple_choice", "test_length_bonus"])
    [result] = build_reward(cfg)([sample(response="<think></think><answer>C</answer>")])
    assert result.score == pytest.approx((0.1 + 1.0) / 2)
    cfg = RewardConfig(functions=["multiple_choice", "test_length_bonus"], weights=[2.0, -1.0])
    [result] = build_reward(cfg)([sample()])
    assert result.score == pytest.approx(2.0 * 1.0 - 1.0)
    with pytest.raises(ValueError, match="one weight per function"):
        RewardConfig(functions=["multiple_choice"], weights=[1.0, 1.0])


def test_raising_reward_gets_fallback_and_logs_sample_id(caplog):
    model = build_reward(
        RewardConfig(functions=["test_explodes_on_bad", "test_length_bonus"], weights=[1.0, 1.0], fallback_score=-0.5)
    )
    with caplog.at_level(logging.WARNING, logger="longrl.rewards"):
        results = model([sample("ok-1"), sample("bad-7"), sample("bad-9")])
    assert [r.score for r in results] == [pytest.approx(2.0), pytest.approx(0.5), pytest.approx(0.5)]
    assert results[0].error is None
    assert results[1].error == "test_explodes_on_bad: RuntimeError: cannot score this one"
    assert results[1].components["test_explodes_on_bad"] == -0.5
    assert "bad-7" in caplog.text and "bad-9" in caplog.text and "ok-1" not in caplog.text
    assert all(record.name == "longrl.rewards" for record in caplog.records)
    assert caplog.records[0].exc_info is not None and not caplog.records[1].exc_info  # one traceback


@register_reward("test_bad_outputs")
def bad_outputs(s: RewardInput):
    return {"nan": float("nan"), "no_score": {"accuracy": 1.0}, "text": "high"}[s.sample_id]


@pytest.mark.parametrize(
    "sample_id, message",
    [
        ("nan", "reward score is nan"),
        ("no_score", "must hold the total under 'score'"),
        ("text", "must be a number"),
    ],
)
def test_invalid_outputs_fall_back(sample_id, message):
    [result] = build_reward(RewardConfig(functions=["test_bad_outputs"], fallback_score=0.25))([sample(sample_id)])
    assert result.score == 0.25 and message in result.error


def test_user_function_from_a_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def shout(sample):\n"
        "    loud = sample.response.isupper()\n"
        "    return {'score': 1.0 if loud else 0.0, 'loud': float(loud), 'chars': float(len(sample.response))}\n"
        "def helper():\n    pass\n"
    )
    model = build_reward(RewardConfig(functions=[f"{path}:shout"]))
    assert model.names == ["shout"]
    [loud, quiet] = model([sample(response="HEY"), sample(response="hey there")])
    assert loud.score == 1.0 and loud.components == {"shout": 1.0, "shout/loud": 1.0, "shout/chars": 3.0}
    assert quiet.score == 0.0 and quiet.components["shout/chars"] == 9.0

    with pytest.raises(AttributeError, match=r"has no function 'whisper'; it defines: helper, shout"):
        load_user_function(f"{path}:whisper")
    with pytest.raises(FileNotFoundError, match="missing.py not found"):
        build_reward(RewardConfig(functions=[f"{tmp_path}/missing.py:shout"]))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ImportError, match="importing reward file .*broken.py failed"):
        load_user_function(f"{broken}:fn")
    with pytest.raises(ValueError, match="neither registered"):
        build_reward(RewardConfig(functions=["no_such_reward"]))


def test_api_key_config_holds_only_a_variable_name():
    cfg = RewardConfig(judge_api_key_env="MY_JUDGE_KEY")
    assert "MY_JUDGE_KEY" in repr(cfg)
    for pasted in ("sk-proj-abcdef0123456789abcdef", "abcdefghij0123456789KLMNOPQRST"):
        with pytest.raises(ValueError, match="NAME of an environment variable") as error:
            RewardConfig(judge_api_key_env=pasted)
        assert pasted not in str(error.value)
