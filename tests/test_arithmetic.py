"""The synthetic arithmetic task: rows in the schema, worked chains that are right, held-out
problems unseen in training, seeded, and scored by the math reward against the answer text."""

from __future__ import annotations

import re

import pytest

from longrl.cli import main
from longrl.data.arithmetic import CATEGORIES, ArithmeticConfig, generate_arithmetic
from longrl.data.prompt import target_text
from longrl.data.rows import load_rows
from longrl.eval.evaluate import is_correct
from longrl.rewards import RewardConfig, RewardInput, build_reward

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")


def test_rows_hold_correct_worked_chains_and_unseen_test_problems(tmp_path):
    train_path, test_path = generate_arithmetic(ArithmeticConfig(str(tmp_path), num_train=400, num_test=100, seed=3))
    train, test = load_rows(train_path), load_rows(test_path)
    assert (len(train), len(test)) == (400, 100)
    assert {r.category for r in train} == set(CATEGORIES)
    assert not {r.question for r in train} & {r.question for r in test}  # held out means unseen
    for row in train + test:
        assert row.video is None and row.image is None and row.options == []
        steps = STEP.findall(row.reasoning)
        assert len(steps) == 3 and " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps) == row.reasoning
        for k, (a, op, b, c) in enumerate(steps):
            assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            if k:
                assert a == steps[k - 1][3]  # each step starts from the previous result
        assert steps[-1][3] == row.answer and int(row.answer) >= 0
        assert steps[0][0] in row.question and steps[-1][2] in row.question


def test_seeded_and_reproducible(tmp_path):
    a = generate_arithmetic(ArithmeticConfig(str(tmp_path / "a"), num_train=50, num_test=20, seed=1))
    b = generate_arithmetic(ArithmeticConfig(str(tmp_path / "b"), num_train=50, num_test=20, seed=1))
    c = generate_arithmetic(ArithmeticConfig(str(tmp_path / "c"), num_train=50, num_test=20, seed=2))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    with pytest.raises(ValueError, match="only .* test problems differ"):
        generate_arithmetic(ArithmeticConfig(str(tmp_path / "d"), num_train=100, num_test=3000, max_operand=2))


def test_the_math_reward_scores_the_answer_text(tmp_path):
    train_path, _ = generate_arithmetic(ArithmeticConfig(str(tmp_path), num_train=8, num_test=4))
    reward = build_reward(RewardConfig(functions=["math"]))
    for row in load_rows(train_path):
        right = target_text(row)
        wrong = right.replace(f"<answer>{row.answer}</answer>", f"<answer>{int(row.answer) + 1}</answer>")
        boxed = f"<think>{row.reasoning}</think> so \\boxed{{{row.answer}}}"
        scores = reward(
            [
                RewardInput(sample_id=row.id, response=r, answer=row.answer, question=row.question)
                for r in (right, wrong)
            ]
        )
        assert scores[0].score == pytest.approx(1.0) and scores[1].score == pytest.approx(0.1)  # format only
        assert is_correct(row, right) and is_correct(row, boxed) and not is_correct(row, wrong)


def test_data_synth_writes_the_arithmetic_task(tmp_path, capsys):
    assert main(["data", "synth", "--task", "arithmetic", "--out", str(tmp_path), "--train", "12", "--test", "4"]) == 0
    assert len(load_rows(tmp_path / "train.jsonl")) == 12 and len(load_rows(tmp_path / "test.jsonl")) == 4
    assert "wrote" in capsys.readouterr().out
