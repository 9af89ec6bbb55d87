"""``longrl eval --benchmark longvideo-reason DIR``: per-item predictions, strict and lenient accuracy
overall and per category, in the paper's table form.

Strict is the official scorer (the ``<answer>`` span must equal the gold letter exactly); lenient is
longrl's reward parser (``parse_response`` + ``extract_choice``: "B.", "(B)", "Answer: B", the text of
an option). Generation is greedy and batched on the rollout engine. The same command takes any
dataset in longrl's row schema (``--benchmark rows FILE``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import torch

from longrl.data.dataset import ExampleSet
from longrl.data.prompt import encode_prompts
from longrl.data.rows import load_rows
from longrl.eval import longvideo_reason as lvr
from longrl.infra.setup import load_run_model, setup_run
from longrl.models.adapter import end_of_turn_id
from longrl.rewards.multiple_choice import extract_choice, parse_response
from longrl.rollout import SamplingParams, generate

log = logging.getLogger("longrl.eval")
BENCHMARKS = ("longvideo-reason", "rows")


def load_benchmark(benchmark: str, path: str | Path):
    """(rows, unscorable items) of ``path``: LongVideo-Reason-eval files (converted) or longrl rows."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"--benchmark {benchmark!r}: choose one of {', '.join(BENCHMARKS)}")
    file = lvr.annotation_file(path)
    if benchmark == "rows":
        return load_rows(file), []
    records = lvr.read_records(file)
    if records and not lvr.is_longvideo_reason(records[0]):  # already longrl rows
        return load_rows(file), []
    root = Path(path) if Path(path).is_dir() else file.parent
    return lvr.convert(records, root, str(file))


def predict(model, tokenizer, data: ExampleSet, *, max_new_tokens: int, batch_prompts: int, progress: bool):
    """Greedy responses, one per decodable row: [(row, response text, tokens)], plus skipped row ids."""
    params = SamplingParams(
        n=1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        stop_token_ids=(end_of_turn_id(tokenizer),),
    )
    model.eval()
    out = []
    starts = range(0, len(data), batch_prompts)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="benchmark", unit="batch")
    for start in starts:
        batch = [e for e in (data.get(i) for i in range(start, min(start + batch_prompts, len(data)))) if e]
        if not batch:
            continue
        with torch.no_grad():
            outputs = generate(model, encode_prompts(model, tokenizer, batch), params)
        for example, (sample,) in zip(batch, outputs):
            out.append(
                (example.row, tokenizer.decode(sample.token_ids, skip_special_tokens=True), len(sample.token_ids))
            )
    return out


def score(predictions, unscorable: list[dict]) -> tuple[dict, list[dict]]:
    """The report (fractions) and one record per item; unscorable items count as wrong."""
    items = []
    for row, response, tokens in predictions:
        parsed = parse_response(response)
        strict = lvr.strict_choice(response)
        lenient = extract_choice(parsed.answer, row.options) if parsed.answer else None
        items.append(
            {
                "id": row.id,
                "category": row.category or "uncategorized",
                "answer": row.answer,
                "strict_choice": strict,
                "lenient_choice": lenient,
                "strict_correct": strict == row.answer,
                "lenient_correct": lenient == row.answer,
                "format_ok": parsed.format_ok,
                "response_tokens": tokens,
                "response": response,
            }
        )
    for item in unscorable:
        items.append(
            {
                **item,
                "answer": None,
                "strict_choice": None,
                "lenient_choice": None,
                "strict_correct": False,
                "lenient_correct": False,
                "format_ok": False,
                "response_tokens": 0,
                "response": None,
            }
        )
    if not items:
        raise ValueError("nothing to evaluate: the benchmark has no rows")
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for item in items:
        stats = per_cat[item["category"]]
        stats[0] += item["strict_correct"]
        stats[1] += item["lenient_correct"]
        stats[2] += 1
    n = len(items)
    report = {
        "num_items": n,
        "strict_accuracy": sum(i["strict_correct"] for i in items) / n,
        "lenient_accuracy": sum(i["lenient_correct"] for i in items) / n,
        "format_accuracy": sum(i["format_ok"] for i in items) / n,
        "unscorable": len(unscorable),
        "unscorable_reasons": dict(sorted(Counter(i["reason"] for i in unscorable).items())),
        "per_category": {
            cat: {"strict_accuracy": s / t, "lenient_accuracy": le / t, "count": t}
            for cat, (s, le, t) in sorted(per_cat.items(), key=lambda kv: _order(kv[0]))
        },
    }
    return report, items


def _order(category: str) -> tuple:
    order = lvr.TABLE_ORDER
    return (order.index(category), "") if category in order else (len(order), category)


def paper_table(report: dict) -> str:
    """Accuracy in percent, one column per category then overall, strict and lenient rows."""
    cats = list(report["per_category"])
    head = "| scoring | " + " | ".join(cats) + " | Overall |"
    lines = [head, "|" + " --- |" * (len(cats) + 2)]
    for kind in ("strict", "lenient"):
        cells = [f"{100 * report['per_category'][c][f'{kind}_accuracy']:.1f}" for c in cats]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {100 * report[f'{kind}_accuracy']:.1f} |")
    lines.append(
        "| items | " + " | ".join(str(report["per_category"][c]["count"]) for c in cats) + f" | {report['num_items']} |"
    )
    lines += [
        "",
        f"format accuracy {100 * report['format_accuracy']:.1f}; {report['unscorable']} unscorable items "
        "count as wrong" + (f" ({report['unscorable_reasons']})" if report["unscorable"] else ""),
    ]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, items: list[dict], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(paper_table(report))
    return out / "report.json"


def run_benchmark(config_path, overrides, benchmark: str, path: str, out_dir: str | None = None) -> dict:
    cfg, out, device = setup_run(config_path, overrides)
    rows, unscorable = load_benchmark(benchmark, path)
    if cfg.eval.max_rows:
        rows = rows[: cfg.eval.max_rows]
    if unscorable:
        log.warning(
            "%d benchmark items cannot be scored and count as wrong (first: %s)",
            len(unscorable),
            unscorable[0]["reason"],
        )
    model, tokenizer = load_run_model(cfg, device, rows)
    data = ExampleSet(rows, cfg.data, preload=False)
    predictions = predict(
        model,
        tokenizer,
        data,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_prompts=cfg.eval.batch_prompts,
        progress=cfg.trainer.progress,
    )
    decoded = {row.id for row, _, _ in predictions}
    broken = [
        {
            "id": r.id,
            "category": r.category or "uncategorized",
            "reason": "video could not be decoded",
            "video": r.video,
        }
        for r in rows
        if r.id not in decoded
    ]
    report, items = score(predictions, unscorable + broken)
    write_outputs(report, items, out_dir or out / "benchmark")
    print(paper_table(report), end="")
    return report
