"""A seeded offline math task for text models: multi-step arithmetic and word problems, each with a
worked reasoning chain and a free-text numeric answer, in longrl's row schema (no options, no media).

Four categories, three operations each, single-digit operands by default (results below 100), so
a tiny model trained from scratch learns the steps in CPU minutes:

    Addition       a + b + c + d
    Subtraction    a + b + c - d              (never negative)
    Multiplication a * b + c + d              (a, b in 2..9)
    Word problem   "Tom has a apples, buys b more, finds c more and gives d away. ..."

The reasoning chain does one operation per sentence ("3 + 4 = 7. 7 + 5 = 12. 12 - 2 = 10."), so
every step's result is a fact the model can learn; the answer is the last result. Rows are a pure function of
(seed, split, index): the same arguments write the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from longrl.data.rows import Row, save_rows

ARITHMETIC_VERSION = 1  # bump when the generated content changes
CATEGORIES = ("Addition", "Subtraction", "Multiplication", "Word problem")
NAMES = ("Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Kira", "Ben")
ITEMS = ("apples", "books", "coins", "marbles", "stamps", "pencils", "shells", "cards")


@dataclass
class ArithmeticConfig:
    out_dir: str
    num_train: int = 2400
    num_test: int = 400
    max_operand: int = 9  # operands are drawn from 1..max_operand (single digits: results stay below 100)
    seed: int = 0

    def validate(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"num_train={self.num_train}, num_test={self.num_test}: both must be >= 1")
        if not 2 <= self.max_operand <= 99:
            raise ValueError(f"max_operand={self.max_operand}: choose 2..99")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "test": 1}[split], index, ARITHMETIC_VERSION])


def make_problem(rng: np.random.Generator, category: str, max_operand: int) -> tuple[str, str, str]:
    """(question, reasoning, answer) of one problem of ``category``: three operations, one per step."""

    def draw(lo: int = 1, hi: int = max_operand) -> int:
        return int(rng.integers(lo, hi + 1))

    def chain(first: int, steps: list[tuple[str, int]]) -> tuple[str, str]:
        """The worked steps "a + b = s. s - c = t. ..." and the final value."""
        sentences, value = [], first
        for op, x in steps:
            result = value + x if op == "+" else value - x if op == "-" else value * x
            sentences.append(f"{value} {op} {x} = {result}.")
            value = result
        return " ".join(sentences), str(value)

    if category == "Addition":
        a, b, c, d = draw(), draw(), draw(), draw()
        reasoning, answer = chain(a, [("+", b), ("+", c), ("+", d)])
        return f"What is {a} + {b} + {c} + {d}?", reasoning, answer
    if category == "Subtraction":
        a, b, c = draw(), draw(), draw()
        d = draw(1, a + b + c)
        reasoning, answer = chain(a, [("+", b), ("+", c), ("-", d)])
        return f"What is {a} + {b} + {c} - {d}?", reasoning, answer
    if category == "Multiplication":
        a, b, c, d = draw(2), draw(2), draw(), draw()
        reasoning, answer = chain(a, [("*", b), ("+", c), ("+", d)])
        return f"What is {a} * {b} + {c} + {d}?", reasoning, answer
    if category == "Word problem":
        name, item = NAMES[int(rng.integers(len(NAMES)))], ITEMS[int(rng.integers(len(ITEMS)))]
        a, b, c = draw(), draw(), draw()
        d = draw(1, a + b + c)
        question = (
            f"{name} has {a} {item}, buys {b} more, finds {c} more and gives {d} away. "
            f"How many {item} does {name} have now?"
        )
        reasoning, answer = chain(a, [("+", b), ("+", c), ("-", d)])
        return question, reasoning, answer
    raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")


def make_row(cfg: ArithmeticConfig, split: str, index: int) -> Row:
    rng = _rng(cfg.seed, split, index)
    category = CATEGORIES[index % len(CATEGORIES)]
    question, reasoning, answer = make_problem(rng, category, cfg.max_operand)
    return Row(
        id=f"{split}-{index:06d}",
        video=None,
        question=question,
        options=[],
        answer=answer,
        reasoning=reasoning,
        category=category,
    )


def generate_arithmetic(cfg: ArithmeticConfig) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` under ``cfg.out_dir``; returns their paths. Test
    problems that also occur in train (same question) are redrawn, so held-out means unseen."""
    cfg.validate()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [make_row(cfg, "train", i) for i in range(cfg.num_train)]
    seen = {r.question for r in train}
    test: list[Row] = []
    index = 0
    while len(test) < cfg.num_test:
        row = make_row(cfg, "test", index)
        index += 1
        if index > 20 * cfg.num_test:
            raise ValueError(
                f"only {len(test)} of {cfg.num_test} test problems differ from the {cfg.num_train} training "
                "ones; raise max_operand or ask for fewer rows"
            )
        if row.question not in seen:
            seen.add(row.question)
            test.append(row)
    train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    save_rows(train, train_path)
    save_rows(test, test_path)
    record = {**asdict(cfg), "version": ARITHMETIC_VERSION}
    record.pop("out_dir")
    (out / "arithmetic.json").write_text(json.dumps(record, indent=2) + "\n")
    return train_path, test_path
