import pytest

from longrl.rewards import RewardConfig, RewardInput, build_reward
from longrl.rewards.math import extract_boxed, extract_math_answer, math_equal, math_reward


def test_extract_boxed_nested_and_last():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{x^{2} + \{1\}}") == r"x^{2} + \{1\}"
    assert extract_boxed(r"\boxed{3} and then cut off \boxed{\frac{1}") == "3"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed("no box") is None


def test_extract_math_answer():
    assert (
        extract_math_answer(r"<think>\boxed{9} is wrong</think><answer>so \boxed{\frac{1}{2}}</answer>")
        == r"\frac{1}{2}"
    )
    assert extract_math_answer("work... The final answer is $42$.") == "42"
    assert extract_math_answer("Final Answer: 3/4") == "3/4"
    assert extract_math_answer("<think>t</think><answer>17</answer>") == "17"
    assert extract_math_answer("no answer here") is None


@pytest.mark.parametrize(
    "prediction, reference, equal",
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        ("1/2", r"\dfrac{1}{2}", True),
        ("x = 3", "3", True),
        (r"\sqrt{2}", r"2^{1/2}", True),
        (r"50\%", "0.5", True),
        ("3", "4", False),
        ("Yes", "yes", True),
        ("abc", "cab", False),  # words are compared as strings, not multiplied out
    ],
)
def test_math_equal(prediction, reference, equal):
    assert math_equal(prediction, reference) is equal


def test_math_reward_and_registry():
    sample = RewardInput("m1", r"<think>t</think><answer>\boxed{\frac{1}{2}}</answer>", "0.5")
    assert math_reward(sample) == {"score": pytest.approx(1.0), "format": 1.0, "accuracy": 1.0}
    unformatted = RewardInput("m2", r"so it is \boxed{0.5}", r"\frac12")
    assert math_reward(unformatted) == {"score": pytest.approx(0.9), "format": 0.0, "accuracy": 1.0}
    model = build_reward(RewardConfig(functions=["math"], format_weight=0.0, accuracy_weight=1.0))
    [result] = model([unformatted])
    assert result.score == pytest.approx(1.0) and result.components["math/accuracy"] == 1.0
