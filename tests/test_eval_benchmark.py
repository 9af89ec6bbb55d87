"""``longrl eval --benchmark longvideo-reason DIR``: the published layout is read and converted, strict
(official) and lenient scoring side by side, per-item predictions, batching does not change answers."""

from __future__ import annotations

import json
import shutil

import pytest

from longrl.cli import main
from longrl.data.rows import LETTERS, format_options, load_rows
from longrl.data.synth import SynthConfig, generate_synth
from longrl.eval.benchmark import paper_table, score
from longrl.eval.longvideo_reason import convert, gold_letter, split_problem, strict_choice

PROBLEM_TYPES = {"Temporal": "temporal", "Goal & Purpose": "goal", "Plot & Narrative": "plot", "Spatial": "spatial"}


@pytest.fixture(scope="module")
def lvr_dir(tmp_path_factory):
    """Synthetic videos laid out as LongVideo-Reason-eval: test.jsonl + a shard's flat folder."""
    synth = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(synth), num_train=6, num_test=0, frames=16, fps=4.0))
    root = tmp_path_factory.mktemp("lvr")
    (root / "longvideo_eval_subset0").mkdir()
    records = []
    for i, row in enumerate(load_rows(synth / "train.jsonl")):
        shutil.copy(row.video, root / "longvideo_eval_subset0" / f"vid{i}.mp4")
        records.append(
            {
                "problem_id": i,
                "data_type": "video",
                "problem_type": PROBLEM_TYPES[row.category],
                "problem": f"{row.question}\n{format_options(row.options)}",
                "reasoning": row.reasoning,
                "videos": f"longvila_videos/vid{i}.mp4",
                "answer": f"<answer>{row.answer}</answer>",
            }
        )
    records.append(
        {
            "problem_id": 6,
            "problem_type": "plot",
            "problem": "What happens next?",
            "reasoning": "",
            "videos": "longvila_videos/vid0.mp4",
            "answer": "<answer>A</answer>",
        }
    )  # no options
    records.append({**records[0], "problem_id": 7, "videos": "longvila_videos/gone.webm"})  # missing video
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, load_rows(synth / "train.jsonl")


def test_converter_reads_the_published_layout(lvr_dir):
    root, originals = lvr_dir
    records = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    rows, unscorable = convert(records, root, "test.jsonl")
    assert [(r.question, r.options, r.answer, r.category) for r in rows] == [
        (o.question, o.options, o.answer, o.category) for o in originals
    ]
    assert all(r.video.endswith(f"longvideo_eval_subset0/vid{i}.mp4") for i, r in enumerate(rows))
    assert [(u["id"], u["reason"]) for u in unscorable] == [
        ("6", "no option lines in the problem"),
        ("7", "video not found"),
    ]
    question, options = split_problem("Why?\nA. because it\n   rained hard\nB. no reason\nC) the dog")
    assert (question, options) == ("Why?", ["because it rained hard", "no reason", "the dog"])
    assert gold_letter("<answer> C </answer>") == "C" and gold_letter("B") == "B"


def test_strict_and_lenient_scoring_side_by_side(lvr_dir):
    rows = lvr_dir[1][:4]
    wrong = LETTERS[(LETTERS.index(rows[3].answer) + 1) % len(rows[3].options)]
    responses = [
        f"<think>a</think><answer>{rows[0].answer}</answer>",  # both right
        f"<think>a</think><answer>{rows[1].answer}.</answer>",  # "B." : strict wrong, lenient right
        f"The answer is {rows[2].answer}",  # no tags: strict compares the whole text
        f"<think>a</think><answer>{wrong}</answer>",
    ]  # both wrong
    report, items = score(
        [(r, text, 5) for r, text in zip(rows, responses)],
        [{"id": "x", "category": "Spatial", "reason": "video not found"}],
    )
    assert [i["strict_correct"] for i in items] == [True, False, False, False, False]
    assert [i["lenient_correct"] for i in items] == [True, True, True, False, False]
    assert items[1]["strict_choice"] == f"{rows[1].answer}." and items[2]["lenient_choice"] == rows[2].answer
    assert (report["strict_accuracy"], report["lenient_accuracy"], report["format_accuracy"]) == (0.2, 0.6, 0.6)
    assert report["unscorable_reasons"] == {"video not found": 1}
    assert sum(c["count"] for c in report["per_category"].values()) == 5
    table = paper_table(report)
    assert table.splitlines()[0].endswith("| Overall |") and "| strict |" in table and "| lenient |" in table
    assert table.splitlines()[2].endswith("| 20.0 |") and table.splitlines()[3].endswith("| 60.0 |")
    assert strict_choice("no tags here ") == "no tags here"


def test_cli_benchmark_writes_predictions_and_batching_changes_nothing(lvr_dir, tmp_path, capsys):
    root, _ = lvr_dir
    outs = []
    for batch in (4, 1):
        out = tmp_path / f"batch{batch}"
        code = main(
            [
                "eval",
                "--benchmark",
                "longvideo-reason",
                str(root),
                "--out",
                str(out),
                f"trainer.out_dir={tmp_path / 'run'}",
                "trainer.progress=false",
                "data.num_frames=4",
                "eval.max_new_tokens=12",
                f"eval.batch_prompts={batch}",
            ]
        )
        assert code == 0
        outs.append([json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()])
        report = json.loads((out / "report.json").read_text())
        assert report["num_items"] == 8 and report["unscorable"] == 2
        items = outs[-1]
        assert report["lenient_accuracy"] == sum(i["lenient_correct"] for i in items) / 8
        assert report["strict_accuracy"] == sum(i["strict_correct"] for i in items) / 8
    assert [i["response"] for i in outs[0]] == [i["response"] for i in outs[1]]
    assert "| strict |" in capsys.readouterr().out


def test_the_same_command_takes_longrl_rows(lvr_dir, tmp_path):
    synth_rows = tmp_path / "rows.jsonl"
    from longrl.data.rows import save_rows

    save_rows(lvr_dir[1][:2], synth_rows)
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "rows",
                str(synth_rows),
                "--out",
                str(tmp_path / "o"),
                f"trainer.out_dir={tmp_path / 'run'}",
                "trainer.progress=false",
                "data.num_frames=4",
                "eval.max_new_tokens=8",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["num_items"] == 2 and report["unscorable"] == 0
    assert main(["eval", "--benchmark", "mmlu", str(synth_rows)]) == 1
