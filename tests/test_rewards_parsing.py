import pytest

from longrl.rewards import RewardInput, extract_choice, parse_response
from longrl.rewards.multiple_choice import multiple_choice_reward

OPTIONS = ["The red cube", "blue ball", "C. green cone", "red cube and blue ball"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        (" b ", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[b]", "B"),
        ("B) blue ball", "B"),
        ("B. Because the ball is blue", "B"),
        ("Answer: B", "B"),
        ("answer: b", "B"),
        ("The answer is (B).", "B"),
        ("So the final answer is C.", "C"),
        ("Therefore, the answer is: option D", "D"),
        ("\\boxed{C}", "C"),
        ("**D**", "D"),
        ("I think B", "B"),
        # option text, case and whitespace insensitive; an option's own "C." label is not part of its text
        ("the red cube", "A"),
        ("  THE   red cube. ", "A"),
        ("Answer: blue ball", "B"),
        ("green cone", "C"),
        ("It is the green cone.", "C"),
        ("red cube and blue ball", "D"),
        # ambiguous or absent -> None
        ("A or B", None),
        ("A, B", None),
        ("(B) or (C)", None),
        ("B and the green cone", None),
        ("B) the red cube", None),  # the letter and the option text disagree
        ("Z", None),
        ("E", None),
        ("", None),
        ("none of them", None),
        ("e.g. this", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_extract_choice_without_options():
    assert extract_choice("Answer: (E)") == "E"
    assert extract_choice("A red cube") == "A"  # only a weak "A": still read as the letter
    assert extract_choice("I and B") is None


@pytest.mark.parametrize(
    "text, think, answer, format_ok, source",
    [
        ("<think>look</think><answer>B</answer>", "look", "B", True, "tag"),
        ("  <think>\n look \n</think>\n\n <answer> b </answer>\n", "look", "b", True, "tag"),
        ("<answer>B</answer>", "", "B", False, "tag"),  # missing think
        ("<think>x</think> chatter <answer>B</answer>", "x", "B", False, "tag"),  # text between the blocks
        ("<think>x</think><answer>B</answer> trailing", "x", "B", False, "tag"),
        ("<think>x</think><answer>A</answer><answer>B</answer>", "x", "A\nB", False, "tag"),  # hedging
        ("<think>x</think><answer></answer>", "x", "", False, "tag"),
        ("<think>x</think><answer>B", "x", "B", False, "unclosed_tag"),  # cut off at the length limit
        ("<think>reasoning that never ends, maybe B", "", "", False, "none"),
        ("<think>a</think>\nThe answer is D\n", "a", "The answer is D", False, "last_line"),
        ("Some reasoning.\nAnswer: C", "", "Answer: C", False, "last_line"),
        ("   ", "", "", False, "none"),
    ],
)
def test_parse_response(text, think, answer, format_ok, source):
    parsed = parse_response(text)
    assert (parsed.think, parsed.answer, parsed.format_ok, parsed.answer_source) == (think, answer, format_ok, source)


def mc(response, answer="B", options=OPTIONS):
    return multiple_choice_reward(RewardInput("s", response, answer, options))


def test_multiple_choice_reward_values():
    assert mc("<think>x</think><answer>B</answer>") == {"score": pytest.approx(1.0), "format": 1.0, "accuracy": 1.0}
    assert mc("<think>x</think><answer>A</answer>") == {"score": pytest.approx(0.1), "format": 1.0, "accuracy": 0.0}
    assert mc("<think>x</think>\n<answer> b </answer>")["score"] == pytest.approx(1.0)  # lower case, spaces
    assert mc("<think>x</think><answer>blue ball</answer>")["accuracy"] == 1.0  # option text
    assert mc("Reasoning...\nThe answer is B.") == {"score": pytest.approx(0.9), "format": 0.0, "accuracy": 1.0}
    assert mc("<think>x</think><answer>A or B</answer>")["accuracy"] == 0.0  # ambiguous
    assert mc("<think>x</think><answer>A</answer><answer>B</answer>")["score"] == 0.0  # hedged, bad format
    assert mc("<think>x</think><answer>B</answer>", answer="blue ball")["accuracy"] == 1.0  # gold as text
    weighted = multiple_choice_reward(
        RewardInput("s", "<think>x</think><answer>A</answer>", "B", OPTIONS), format_weight=0.5, accuracy_weight=0.5
    )
    assert weighted["score"] == pytest.approx(0.5)


def test_multiple_choice_bad_reference_is_named():
    with pytest.raises(ValueError, match="reference answer 'purple'"):
        mc("<think>x</think><answer>B</answer>", answer="purple")
