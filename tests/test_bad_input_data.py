"""The data bad-input corpus (tests/bad_input/data_*): every broken file gets a one-line message
naming file, line and id; it follows ``data.bad_sample`` (skip it and count it, or stop with exit
code 1); the counts reach the eval report and metrics.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from longrl.cli import main
from longrl.config import load_config
from longrl.data.dataset import ExampleSet, draw_examples
from longrl.data.prompt import FREE_TEXT_SYSTEM_PROMPT, messages_for, question_text, target_text
from longrl.data.rows import RowError, load_rows, read_rows
from longrl.data.video import VideoError, decode_video
from longrl.eval.evaluate import is_correct
from longrl.rewards import RewardConfig, RewardInput, build_reward
from longrl.rewards.model import JudgeFailureError

BAD = Path(__file__).parent / "bad_input"
QUICK = [
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "eval.max_new_tokens=4",
    "data.num_frames=4",
    "data.min_pixels=3136",
    "data.max_pixels=3136",
]


def write_8s_faststart_mp4(path: Path) -> None:
    """How tests/bad_input/data_truncated.mp4 was made (then cut to its first 0.5 s of frames):
    8 s at 8 fps, 32x32, the index (moov) in front of the data, so a cut-off copy still opens."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "veryfast", "g": "4", "bf": "0"}
        for i in range(64):
            rgb = np.full((32, 32, 3), 8 * (i % 32), np.uint8)
            rgb[(i % 4) * 8 : (i % 4) * 8 + 8, :, 0] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


# --- row-schema problems --------------------------------------------------------------------------

ROW_CASES = [  # file, bad line, its id, the problem the message states
    ("data_missing_field.jsonl", 2, "m2", "missing field(s) question"),
    ("data_answer_out_of_range.jsonl", 2, "r2", "answer 'E' is out of range for 4 options (A-D)"),
    ("data_non_utf8.jsonl", 2, "u2", "not valid UTF-8 (byte 0xe9 at column 62)"),
    ("data_invalid_json.jsonl", 2, "j2", "not valid JSON (Unterminated string"),
]


@pytest.mark.parametrize("name, line, row_id, problem", ROW_CASES)
def test_bad_row_stops_the_run_under_error_with_file_line_and_id(tmp_path, capsys, name, line, row_id, problem):
    path = BAD / name
    code, err = cli(
        ["eval", f"data.test_path={path}", "data.bad_sample=error", f"trainer.out_dir={tmp_path}", *QUICK], capsys
    )
    assert code == 1
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"error: {path} line {line}")
    assert f"id='{row_id}'" in message and problem in message and "Fix:" in message
    assert not (tmp_path / "eval" / "report.json").exists()


@pytest.mark.parametrize("name, line, row_id, problem", ROW_CASES)
def test_bad_row_is_skipped_with_a_warning_and_counted(tmp_path, capsys, caplog, name, line, row_id, problem):
    path = BAD / name
    with caplog.at_level(logging.WARNING, logger="longrl.data"):
        code, _ = cli(["eval", f"data.test_path={path}", f"trainer.out_dir={tmp_path}", *QUICK], capsys)
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["num_examples"], report["skipped_rows"]) == (2, 1)
    [warning] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert f"{path} line {line}" in warning and f"id='{row_id}'" in warning and problem in warning
    assert f"{path}: skipped 1 of 3 rows" in caplog.text


def test_read_rows_returns_the_skipped_problems_and_refuses_a_file_with_none_usable(tmp_path):
    rows, skipped = read_rows(BAD / "data_non_utf8.jsonl", bad_sample="skip")
    assert [r.id for r in rows] == ["u1", "u3"]
    assert len(skipped) == 1 and isinstance(skipped[0], RowError)
    with pytest.raises(RowError, match=r"line 2 \(id='u2'\): not valid UTF-8"):
        load_rows(BAD / "data_non_utf8.jsonl")  # load_rows is strict
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text('{"id": "x1", "question": "Q?"}\n{"id": 7, "answer": "A"\n')
    with pytest.raises(RowError, match=r"only_bad\.jsonl: no usable row \(2 skipped"):
        read_rows(only_bad, bad_sample="skip")


# --- a truncated video ----------------------------------------------------------------------------


def test_truncated_mp4_is_reported_with_its_decoded_and_declared_length(tmp_path):
    path = BAD / "data_truncated.mp4"
    assert path.stat().st_size < 4096
    with pytest.raises(VideoError) as info:
        decode_video(path, num_frames=16)
    assert str(info.value) == f"video {path}: decoded 0.5 s of 8.0 s: the file is truncated; re-encode or remove it"
    # The same from a fresh encode, cut to a quarter of its bytes: the fixture is reproducible.
    full = tmp_path / "full.mp4"
    write_8s_faststart_mp4(full)
    assert decode_video(full, num_frames=16).duration == pytest.approx(8.0)  # the whole file is fine
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 4 + 600])
    with pytest.raises(VideoError, match=r"cut\.mp4: decoded \d\.\d s of 8\.0 s: the file is truncated"):
        decode_video(cut, fps=2.0)


def test_truncated_video_follows_bad_sample(tmp_path, capsys):
    rows_path = BAD / "data_truncated_video.jsonl"
    code, err = cli(
        ["eval", f"data.test_path={rows_path}", "data.bad_sample=error", f"trainer.out_dir={tmp_path}", *QUICK], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: video {BAD / 'data_truncated.mp4'}: decoded 0.5 s of 8.0 s: "
        "the file is truncated; re-encode or remove it"
    )
    code, _ = cli(["eval", f"data.test_path={rows_path}", f"trainer.out_dir={tmp_path}", *QUICK], capsys)
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["num_examples"], report["skipped_rows"]) == (2, 1)


# --- rows without options -------------------------------------------------------------------------


def math_rows():
    return {row.id: row for row in load_rows(BAD / "data_math_free_text.jsonl")}


def test_free_text_rows_load_and_render_without_options():
    rows = math_rows()
    assert (rows["f1"].options, rows["f1"].answer, rows["f1"].answer_text) == ([], "6", "6")
    assert rows["f2"].answer == "0.5"  # a JSON number is the answer's text
    assert (rows["f3"].answer, rows["f3"].answer_text) == ("C", "4")  # with options: the letter
    assert question_text(rows["f1"]) == rows["f1"].question
    assert question_text(rows["f3"]).endswith("\nA. 2\nB. 3\nC. 4\nD. 5")
    assert messages_for(rows["f1"])[0]["content"] == FREE_TEXT_SYSTEM_PROMPT
    assert target_text(rows["f1"]) == "<think></think><answer>6</answer>"
    with pytest.raises(RowError, match=r"line 1 \(id='e'\): answer '  ' of a row without options"):
        from longrl.data.rows import row_from_dict

        row_from_dict({"id": "e", "question": "Q?", "answer": "  "}, where="x.jsonl line 1")


def reward_input(row, response: str) -> RewardInput:
    # What the RL loop's `score` passes for a row.
    return RewardInput(row.id, response, row.answer, options=row.options or None, question=row.question)


def test_math_reward_compares_with_the_answer_text():
    rows = math_rows()
    math = build_reward(RewardConfig(functions=["math"]))
    responses = [
        (rows["f1"], "<think>2 + 4</think><answer>\\boxed{6}</answer>", 1.0),
        (rows["f1"], "<think>2 + 4</think><answer>7</answer>", 0.0),
        (rows["f2"], "<think>half</think><answer>\\frac{1}{2}</answer>", 1.0),
        (rows["f3"], "<think>count</think><answer>4</answer>", 1.0),  # the option's text (was 0: compared with "C")
        (rows["f3"], "the answer is \\boxed{4}", 1.0),
        (rows["f3"], "<think>count</think><answer>C</answer>", 1.0),  # the letter still counts
        (rows["f3"], "<think>count</think><answer>3</answer>", 0.0),
    ]
    results = math([reward_input(row, text) for row, text, _ in responses])
    assert [r.components["math/accuracy"] for r in results] == [want for _, _, want in responses]
    assert all(r.error is None for r in results)
    assert math.pop_metrics() == {"reward/fallback_frac": 0.0, "reward/judge_failures": 0}


def test_multiple_choice_reward_fails_clearly_on_free_text_rows(caplog):
    rows = math_rows()
    choice = build_reward(RewardConfig(functions=["multiple_choice"]))
    with caplog.at_level(logging.WARNING, logger="longrl.rewards"):
        results = choice(
            [
                reward_input(rows["f1"], "<think></think><answer>6</answer>"),
                reward_input(rows["f3"], "<think></think><answer>C</answer>"),
                reward_input(rows["f3"], "<think></think><answer>A</answer>"),
            ]
        )
    assert [r.score for r in results] == [0.0, pytest.approx(1.0), pytest.approx(0.1)]
    assert "has no options" in results[0].error and "reward.functions=[math]" in results[0].error
    assert "sample f1" in caplog.text
    assert choice.pop_metrics() == {"reward/fallback_frac": pytest.approx(1 / 3), "reward/judge_failures": 0}
    assert choice.pop_metrics()["reward/fallback_frac"] == 0.0  # counts are per step


def test_eval_scores_free_text_rows_by_math_equality(tmp_path, capsys):
    rows = math_rows()
    assert is_correct(rows["f1"], "<think></think><answer>6</answer>")
    assert is_correct(rows["f2"], "<answer>\\boxed{\\frac{1}{2}}</answer>")
    assert not is_correct(rows["f2"], "<answer>0.25</answer>")
    # A row with options: the multiple-choice reading (the letter, or the option's text).
    assert is_correct(rows["f3"], "<answer>C</answer>") and is_correct(rows["f3"], "<answer>4</answer>")
    assert not is_correct(rows["f3"], "<answer>3</answer>")
    code, _ = cli(
        ["eval", f"data.test_path={BAD / 'data_math_free_text.jsonl'}", f"trainer.out_dir={tmp_path}", *QUICK], capsys
    )
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_examples"] == 3 and report["per_category"]["Math"]["count"] == 3
    assert report["chance_accuracy"] == pytest.approx(0.25 / 3)  # free-text rows have no chance level


# --- the RL loop ----------------------------------------------------------------------------------


class ListSampler:
    world = 1  # one process: every draw is this rank's

    def __init__(self, order):
        self.order, self.drawn = list(order), 0

    def next_indices(self, count):
        out = self.order[self.drawn : self.drawn + count]
        self.drawn += count
        return out


def rows_file(tmp_path: Path, videos: list[str | None], extra_lines: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "rows.jsonl"
    lines = [
        json.dumps(
            {
                "id": f"v{i}",
                "video": video,
                "question": "Which colour came first?",
                "options": ["red", "blue", "green", "yellow"],
                "answer": "B",
            }
        )
        for i, video in enumerate(videos)
    ]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def test_a_draw_of_only_bad_rows_draws_again(tmp_path):
    path = rows_file(tmp_path, ["missing_0.mp4", "missing_1.mp4", None, None])
    data = ExampleSet(load_rows(path), load_config(None, []).data, preload=False)
    sampler = ListSampler([0, 1, 2, 3])
    assert [e.row.id for e in draw_examples(data, sampler, 2)] == ["v2", "v3"]
    assert sampler.drawn == 4 and data.skipped == ["v0", "v1"] and data.num_skipped == 2


def test_rl_with_bad_rows_trains_and_counts_them(tmp_path, capsys):
    # One schema-bad row (skipped when read), two missing videos (skipped when drawn), two good rows.
    path = rows_file(
        tmp_path,
        ["missing_0.mp4", "missing_1.mp4", None, None],
        extra_lines=('{"id": "v4", "video": null, "options": ["a", "b"], "answer": "A"}',),
    )
    run = tmp_path / "run"
    code, _ = cli(
        [
            "train",
            "rl",
            f"data.train_path={path}",
            f"trainer.out_dir={run}",
            "rl.steps=2",
            "rl.prompts_per_step=2",
            "rollout.n=2",
            "rollout.max_new_tokens=4",
            "algorithm.kl_coef=0",
            *QUICK,
        ],
        capsys,
    )
    assert code == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    # Two steps of two good rows consume the whole first pass over the four rows: both bad videos seen.
    assert metrics[-1]["data/skipped_rows"] == 3
    assert all(m["rollout/groups_kept"] == 2 and m["reward/fallback_frac"] == 0.0 for m in metrics)
    assert (run / "model").is_dir()


def test_rl_stops_with_one_line_when_no_row_is_usable(tmp_path, capsys):
    path = rows_file(tmp_path, ["missing_0.mp4", "missing_1.mp4"])
    code, err = cli(
        [
            "train",
            "rl",
            f"data.train_path={path}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "rl.steps=1",
            "rl.prompts_per_step=2",
            "rollout.n=2",
            *QUICK,
        ],
        capsys,
    )
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: 10 draws of rows found no usable one (2 of 2 rows have a bad video, see the warnings above). "
        "Fix: repair or remove those videos, or check data.train_path and data.media_root"
    )


# --- judge failures -------------------------------------------------------------------------------

DEAD_JUDGE = [
    "reward.functions=[judge]",
    "reward.judge_base_url=http://127.0.0.1:9/v1",
    "reward.judge_model=m",
    "reward.judge_max_retries=0",
]


def test_judge_failures_are_counted_and_stop_past_the_window_fraction(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-print-me")
    cfg = load_config(None, [*DEAD_JUDGE, "reward.judge_failure_window=4", "reward.judge_max_failure_frac=0.5"])
    judge = build_reward(cfg.reward)
    samples = [RewardInput(f"s{i}", "<answer>red</answer>", "red", question="Q?") for i in range(3)]
    results = judge(samples[:2])  # 2 failures of a 4-sample window: not more than half
    assert [r.score for r in results] == [0.0, 0.0] and all("connection failed" in r.error for r in results)
    assert judge.pop_metrics() == {"reward/fallback_frac": 1.0, "reward/judge_failures": 2}
    with pytest.raises(JudgeFailureError) as info:
        judge(samples[2:])
    message = str(info.value)
    assert message.startswith(
        "reward 'judge': the judge failed on 3 of the last 3 samples (more than "
        "reward.judge_max_failure_frac=0.5 of a 4-sample window); last error: judge: "
    )
    assert "\n" not in message and "sk-do-not-print-me" not in message


def test_rl_with_a_dead_judge_stops_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-print-me")
    path = rows_file(tmp_path, [None, None])
    code, err = cli(
        [
            "train",
            "rl",
            f"data.train_path={path}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "rl.steps=2",
            "rl.prompts_per_step=2",
            "rollout.n=2",
            "rollout.max_new_tokens=4",
            "reward.judge_failure_window=4",
            *DEAD_JUDGE,
            *QUICK,
        ],
        capsys,
    )
    assert code == 1 and "sk-do-not-print-me" not in err
    # The first step's 4 judge calls all fail: more than half of the 4-sample window.
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "error: reward 'judge': the judge failed on 4 of the last 4 samples (more than "
            "reward.judge_max_failure_frac=0.5 of a 4-sample window); last error: judge: JudgeError: "
        )
    )
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().strip()  # stopped before logging a step


def test_judge_failure_keys_are_checked():
    with pytest.raises(ValueError, match=r"reward\.judge_max_failure_frac=1\.5 must be in \[0, 1\]"):
        RewardConfig(judge_max_failure_frac=1.5)
    with pytest.raises(ValueError, match=r"reward\.judge_failure_window=0 must be >= 1"):
        RewardConfig(judge_failure_window=0)


def test_console_line_shows_data_and_reward_problems_only_when_there_are_some():
    from longrl.infra.metrics import format_console_line

    healthy = format_console_line(
        3,
        10,
        {"reward/mean": 0.5, "data/skipped_rows": 0, "reward/fallback_frac": 0.0, "reward/judge_failures": 0},
        None,
    )
    assert healthy == "step 3/10 | reward 0.500"
    degraded = format_console_line(
        3,
        10,
        {"reward/mean": 0.5, "data/skipped_rows": 4, "reward/fallback_frac": 0.25, "reward/judge_failures": 16},
        None,
    )
    assert degraded == "step 3/10 | reward 0.500 | skipped 4 | fallback 0.250 | judge fail 16"
