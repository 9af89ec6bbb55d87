"""`longrl eval`: greedy answers on a held-out split; accuracy overall and per category.

The parsing is the reward's own, so an answer the reward calls right is the answer the benchmark
counts: ``extract_choice`` against the letter for a row with options (the multiple-choice
reward's accuracy), ``extract_math_answer`` + ``math_equal`` against the answer text for a
free-text row (the math reward's accuracy; open-ended text counts when it equals the reference
after normalisation).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from longrl.data.dataset import Example
from longrl.data.prompt import encode_prompts
from longrl.data.rows import Row
from longrl.models.adapter import end_of_turn_id
from longrl.rewards.math import extract_math_answer, math_equal
from longrl.rewards.multiple_choice import extract_choice, parse_response
from longrl.rollout import SamplingParams, generate


def is_correct(row: Row, response: str) -> bool:
    if row.options:
        return extract_choice(parse_response(response).answer, row.options) == row.answer
    prediction = extract_math_answer(response)
    return prediction is not None and math_equal(prediction, row.answer)


def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    *,
    max_new_tokens: int = 96,
    batch_prompts: int = 32,
    progress: bool = False,
) -> dict:
    """Greedy-decode every example once; returns the report dict (fractions, not percents)."""
    if not examples:
        raise ValueError("nothing to evaluate: the split has no usable rows (check data.test_path)")
    model.eval()
    params = SamplingParams(
        n=1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        stop_token_ids=(end_of_turn_id(tokenizer),),
    )
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    correct = formatted = tokens = 0
    chunks = range(0, len(examples), batch_prompts)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="eval", leave=False)
    for start in chunks:
        batch = examples[start : start + batch_prompts]
        with torch.no_grad():
            outputs = generate(model, encode_prompts(model, tokenizer, batch), params)
        for example, (sample,) in zip(batch, outputs):
            row = example.row
            response = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
            parsed = parse_response(response)
            ok = is_correct(row, response)
            correct += ok
            formatted += parsed.format_ok
            tokens += len(sample.token_ids)
            stats = per_cat[row.category or "uncategorized"]
            stats[0] += ok
            stats[1] += 1
    n = len(examples)
    return {
        "num_examples": n,
        "accuracy": correct / n,
        "format_accuracy": formatted / n,
        "mean_response_tokens": tokens / n,
        "chance_accuracy": sum(1.0 / len(e.row.options) for e in examples if e.row.options) / n,  # free text: 0
        "per_category": {cat: {"accuracy": c / t, "count": t} for cat, (c, t) in sorted(per_cat.items())},
    }


def markdown_table(report: dict) -> str:
    lines = ["| category | accuracy | count |", "| --- | --- | --- |"]
    for cat, stats in report["per_category"].items():
        lines.append(f"| {cat} | {stats['accuracy']:.3f} | {stats['count']} |")
    lines.append(f"| **overall** | **{report['accuracy']:.3f}** | {report['num_examples']} |")
    lines += [
        "",
        f"format accuracy {report['format_accuracy']:.3f}; chance {report['chance_accuracy']:.3f}; "
        f"mean response {report['mean_response_tokens']:.1f} tokens",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_table(report))
    return out_dir / "report.json"
