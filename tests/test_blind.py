from longrl.data.dataset import Example
from longrl.data.rows import Row
from longrl.eval.blind import majority_accuracy, swap_videos


def _row(i: int, category: str, answer: str) -> Row:
    return Row(
        id=str(i), video=f"v{i}.mp4", question="q", options=["a", "b", "c", "d"], answer=answer, category=category
    )


def test_majority_accuracy_uses_each_category_s_most_common_answer():
    train = [_row(0, "T", "A"), _row(1, "T", "A"), _row(2, "T", "B"), _row(3, "S", "C")]
    test = [
        _row(10, "T", "A"),
        _row(11, "T", "B"),
        _row(12, "S", "C"),
        _row(13, "S", "D"),
        _row(14, "new", "A"),
    ]  # an unseen category falls back to the overall majority (A)
    assert majority_accuracy(train, test) == 3 / 5


def test_swap_videos_keeps_rows_and_categories_and_moves_every_video():
    examples = [Example(_row(i, "TS"[i % 2], "A"), vision=f"video{i}") for i in range(6)]
    swapped = swap_videos(examples)
    assert [e.row.id for e in swapped] == [e.row.id for e in examples]
    for before, after in zip(examples, swapped):
        assert after.vision != before.vision
        donor = int(after.vision.removeprefix("video"))
        assert examples[donor].row.category == before.row.category
    assert sorted(e.vision for e in swapped) == sorted(e.vision for e in examples)  # a permutation


def test_linear_trend_recovers_slope_and_a_standard_error_that_shrinks_with_noise():
    import random

    from longrl.eval.trend import linear_trend

    steps = list(range(1, 151))
    exact = linear_trend(steps, [0.3 + 0.002 * s for s in steps])
    assert abs(exact["slope_per_100"] - 0.2) < 1e-9 and exact["stderr_per_100"] < 1e-9
    rng = random.Random(0)
    noisy = linear_trend(steps, [0.3 + 0.002 * s + rng.gauss(0, 0.05) for s in steps])
    assert abs(noisy["slope_per_100"] - 0.2) < 3 * noisy["stderr_per_100"]
    assert 0.005 < noisy["stderr_per_100"] < 0.05  # sd 0.05 over 150 steps: se about 0.0097 per 100
    flat = linear_trend(steps, [0.3 + rng.gauss(0, 0.05) for _ in steps])
    assert abs(flat["slope_per_100"]) < 3 * flat["stderr_per_100"]


def test_metric_trend_reads_metrics_jsonl_and_ignores_torn_lines(tmp_path):
    import json

    from longrl.eval.trend import metric_trend

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "acc": 0.1 * s}) for s in range(1, 6)] + ['{"step": 6, "ac']
    path.write_text("\n".join(lines))
    assert abs(metric_trend(path, "acc")["slope_per_100"] - 10.0) < 1e-9
