"""The entry point behind ``longrl eval``: held-out accuracy per category of ``data.test_path``
(``--benchmark`` runs :mod:`longrl.eval.benchmark` instead)."""

from __future__ import annotations

from longrl.data.dataset import ExampleSet
from longrl.eval.evaluate import evaluate, markdown_table, write_report
from longrl.infra.setup import load_run_model, read_split, setup_run


def run_eval(config_path, overrides, out_dir=None) -> dict:
    cfg, out, device = setup_run(config_path, overrides)
    rows, bad_rows = read_split(cfg.data.test_path, cfg, "test_path")
    if cfg.eval.max_rows:
        rows = rows[: cfg.eval.max_rows]
    model, tokenizer = load_run_model(cfg, device, rows)
    data = ExampleSet(rows, cfg.data, preload=False, bad_rows=bad_rows)
    report = evaluate(
        model,
        tokenizer,
        data.valid(),
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_prompts=cfg.eval.batch_prompts,
        progress=cfg.trainer.progress,
    )
    report["skipped_rows"] = data.num_skipped
    write_report(report, out_dir or out / "eval")
    print(markdown_table(report))
    return report
