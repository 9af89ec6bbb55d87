import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest

from longrl.data.rows import LETTERS, load_rows
from longrl.data.synth import (
    CATEGORIES,
    FLOOR_SHADES,
    PALETTE,
    QUADRANTS,
    SYNTH_VERSION,
    SceneState,
    SynthConfig,
    generate_synth,
    lit,
    make_row,
    make_story,
    quadrant_center,
    render_frame,
    render_story,
    stamp,
    story_from_row,
)
from longrl.data.video import decode_video

TINY = dict(num_train=8, num_test=4, frames=16, fps=4.0, size=56, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    train, test = generate_synth(SynthConfig(str(out), workers=1, **TINY))
    return out, train, test


def _rows(n: int, seed: int = 0, split: str = "train"):
    cfg = SynthConfig("unused", frames=32, seed=seed)
    return [make_row(cfg, split, i) for i in range(n)]


# --- pixels -------------------------------------------------------------------------------------


def test_render_frame_pixels_by_hand():
    # 56 px: quadrant 28, object side round(0.6 * 28) = 17, padding (28 - 17) // 2 = 5.
    frame = render_frame(SceneState(20, ("red", None, None, "cyan")), 56)
    assert frame.shape == (56, 56, 3) and frame.dtype == np.uint8
    assert tuple(frame[5, 5]) == PALETTE["red"] and tuple(frame[21, 21]) == PALETTE["red"]
    # Floors: background level plus each room's shade (0, 30, 60, 90 in reading order).
    assert tuple(frame[4, 5]) == (20, 20, 20) and tuple(frame[22, 21]) == (20, 20, 20)
    cyan = tuple(round(c * 0.45) for c in PALETTE["cyan"])  # the bottom-right room's light
    assert tuple(frame[33, 33]) == cyan and tuple(frame[49, 49]) == cyan
    assert tuple(frame[50, 49]) == (110, 110, 110)
    assert (frame[:28, 28:] == 50).all() and (frame[28:, :28] == 80).all()  # empty quadrants
    assert (frame == np.array(PALETTE["red"], np.uint8)).all(-1).sum() == 17 * 17
    assert quadrant_center("bottom-left", 56) == (42, 14)


def test_story_states_follow_events():
    story = make_story(np.random.default_rng(1), frames=64, fps=8.0, min_gap=0.125)
    kinds = [e.kind for e in story.events]
    assert kinds == ["enter"] * 4 + ["leave", "move"]
    enters, leave, move = story.arrivals, story.departure, story.move
    assert len({e.color for e in enters}) == 4 and {e.quadrant for e in enters} == set(QUADRANTS)
    assert move.quadrant == leave.quadrant and move.color != leave.color
    assert move.source == next(e.quadrant for e in enters if e.color == move.color)
    assert story.state_at(0).cells == (None,) * 4  # the video opens empty
    for e in enters:
        q = QUADRANTS.index(e.quadrant)
        assert story.state_at(e.frame - 1).cells[q] is None and story.state_at(e.frame).cells[q] == e.color
    q_leave, q_source = QUADRANTS.index(leave.quadrant), QUADRANTS.index(move.source)
    assert story.state_at(leave.frame).cells[q_leave] is None
    final = story.state_at(63).cells
    assert final[q_leave] == move.color and final[q_source] is None and sum(c is not None for c in final) == 3
    frames = list(render_story(story, 56))
    assert len(frames) == 64
    for k in (0, enters[2].frame, move.frame, 63):
        assert np.array_equal(frames[k], render_frame(story.state_at(k), 56))


@pytest.mark.parametrize("frames, min_gap", [(16, 0.125), (2000, 0.125), (40, 0.05)])
def test_event_times_respect_min_gap(frames, min_gap):
    for seed in range(200 if frames < 1000 else 20):
        story = make_story(np.random.default_rng(seed), frames=frames, fps=4.0, min_gap=min_gap)
        idx = [e.frame for e in story.events]
        assert idx[0] >= 1 and idx[-1] <= frames - 1
        assert min(b - a for a, b in zip(idx, idx[1:])) >= int(min_gap * frames) - 1 >= 1
        assert all(e.time == e.frame / 4.0 for e in story.events)


def test_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="use frames >= 16"):
        SynthConfig("x", frames=8).validate()
    with pytest.raises(ValueError, match=r"min_gap=0.2: must be in \(0, 0.1667\)"):
        SynthConfig("x", min_gap=0.2).validate()
    with pytest.raises(ValueError, match="even canvas side"):
        SynthConfig("x", size=55).validate()


def test_decoded_frames_show_each_event(tiny):
    out, train, _ = tiny
    worst = 0
    for row in load_rows(train):
        story = story_from_row(row)
        video = decode_video(row.video, num_frames=TINY["frames"])
        assert video.frames.shape == (16, 56, 56, 3) and video.duration == 4.0

        def floor(quadrant: str) -> tuple[int, int, int]:
            return (story.background + FLOOR_SHADES[QUADRANTS.index(quadrant)],) * 3

        def color_at(k: int, quadrant: str) -> np.ndarray:
            y, x = quadrant_center(quadrant, 56)
            return video.frames[k, y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).astype(int)

        def assert_shows(k: int, quadrant: str, rgb) -> None:
            nonlocal worst
            err = np.abs(color_at(k, quadrant) - np.array(rgb)).max()
            worst = max(worst, err)
            assert err <= 24, (row.id, k, quadrant, rgb)

        for e in story.events:
            assert video.timestamps[e.frame] == e.time
            if e.kind == "enter":
                assert_shows(e.frame - 1, e.quadrant, floor(e.quadrant))
                assert_shows(e.frame, e.quadrant, lit(e.color, QUADRANTS.index(e.quadrant)))
            elif e.kind == "leave":
                assert_shows(e.frame - 1, e.quadrant, lit(e.color, QUADRANTS.index(e.quadrant)))
                assert_shows(e.frame, e.quadrant, floor(e.quadrant))
            else:  # move: the object is gone from its source and stands in the vacated quadrant
                assert_shows(e.frame - 1, e.source, lit(e.color, QUADRANTS.index(e.source)))
                assert_shows(e.frame, e.source, floor(e.source))
                assert_shows(e.frame, e.quadrant, lit(e.color, QUADRANTS.index(e.quadrant)))
    assert worst <= 24


# --- dataset files ------------------------------------------------------------------------------


def test_generate_is_reproducible_across_workers_and_seeds(tiny, tmp_path):
    out, train, test = tiny
    train2, test2 = generate_synth(SynthConfig(str(tmp_path / "b"), workers=2, **TINY))
    assert train.read_bytes() == train2.read_bytes() and test.read_bytes() == test2.read_bytes()
    for name in ("train-00000.mp4", "test-00003.mp4"):
        a = decode_video(out / "videos" / name, num_frames=16).frames
        b = decode_video(tmp_path / "b" / "videos" / name, num_frames=16).frames
        assert np.array_equal(a, b)
    train3, _ = generate_synth(SynthConfig(str(tmp_path / "c"), workers=1, **{**TINY, "seed": 4}))
    assert train3.read_bytes() != train.read_bytes()
    rows, rows3 = load_rows(train), load_rows(train3)
    assert sum(a.extra["events"] != b.extra["events"] for a, b in zip(rows, rows3)) >= 7


def test_files_config_and_reuse(tiny, tmp_path):
    out, train, test = tiny
    assert sorted(p.name for p in (out / "videos").iterdir()) == (
        [f"test-{i:05d}.mp4" for i in range(4)] + [f"train-{i:05d}.mp4" for i in range(8)]
    )
    config = json.loads((out / "synth_config.json").read_text())
    assert config == {
        "version": SYNTH_VERSION,
        **TINY,
        "min_gap": 0.125,
        "options": "shuffled",
        "object_fraction": 0.6,
        "reasoning": "evidence",
        "audio": False,
    }
    train_rows, test_rows = load_rows(train), load_rows(test)
    assert [r.id for r in test_rows] == [f"synth-test-{i:05d}" for i in range(4)]
    assert all(r.video == str(out / "videos" / f"train-{i:05d}.mp4") for i, r in enumerate(train_rows))
    assert {r.id for r in train_rows}.isdisjoint(r.id for r in test_rows)
    raw = json.loads(train.read_text().splitlines()[0])
    assert raw["video"] == "videos/train-00000.mp4"  # stored relative to out_dir

    # A finished dataset of the same config is reused; a different config is rebuilt.
    cfg = SynthConfig(str(tmp_path / "r"), workers=1, num_train=2, num_test=1, frames=16)
    generate_synth(cfg)
    video = tmp_path / "r" / "videos" / "train-00000.mp4"
    stamp_before = video.stat().st_mtime_ns
    generate_synth(cfg)
    assert video.stat().st_mtime_ns == stamp_before
    generate_synth(SynthConfig(str(tmp_path / "r"), workers=1, num_train=2, num_test=1, frames=18))
    assert decode_video(video, num_frames=18).frames.shape[0] == 18


# --- questions ----------------------------------------------------------------------------------


def _truth(row) -> str:
    """The answer recomputed from the ground-truth events, independently of the question code."""
    events = row.extra["events"]
    order = [e["color"] for e in events if e["kind"] == "enter"]
    if row.category == "Temporal":
        ordinal = re.search(r"appeared (\w+)\?", row.question).group(1)
        return f"the {order[['first', 'second', 'third', 'last'].index(ordinal)]} object"
    if row.category == "Spatial":
        color = re.search(r"the (\w+) object", row.question).group(1)
        return next(e["quadrant"] for e in events if e["kind"] == "enter" and e["color"] == color)
    if row.category == "Plot & Narrative":
        return ", then ".join(order)
    leaver = next(e["color"] for e in events if e["kind"] == "leave")
    return f"the {leaver} object left it"


def test_answers_match_events_and_options_are_distinct():
    for row in _rows(200):
        assert row.answer_text == _truth(row), row.id
        assert len(set(row.options)) == 4
        colors = [e["color"] for e in row.extra["events"] if e["kind"] == "enter"]
        if row.category == "Temporal":  # options: exactly the four objects present
            assert sorted(row.options) == sorted(f"the {c} object" for c in colors)
        if row.category == "Plot & Narrative":  # options: orderings of the same four colors
            assert all(sorted(opt.split(", then ")) == sorted(colors) for opt in row.options)
        if row.category == "Goal & Purpose":
            mover = row.extra["events"][-1]["color"]
            present = [opt for opt in row.options if opt.split()[1] in colors]
            assert len(present) == 3 and not any(mover in opt for opt in row.options)


def test_categories_and_letters_are_balanced():
    rows = _rows(64)
    assert Counter(r.category for r in rows) == {c: 16 for c in CATEGORIES}
    assert Counter((r.category, r.answer) for r in rows) == {(c, l): 4 for c in CATEGORIES for l in LETTERS[:4]}


def test_question_text_alone_does_not_give_the_answer():
    # Text-only "models" fitted on 1,600 training rows, scored on 800 test rows: chance is 25%.
    fit, held_out = _rows(1600), _rows(800, split="test")
    letter_counts: dict[str, Counter] = {}  # question text -> answer letters
    option_stats: dict[tuple[str, str], list[int]] = {}  # (question, option text) -> [correct, seen]
    for r in fit:
        letter_counts.setdefault(r.question, Counter())[r.answer] += 1
        for o in r.options:
            option_stats.setdefault((r.question, o), [0, 0])[1] += 1
        option_stats[(r.question, r.answer_text)][0] += 1

    def by_letter(r) -> str:
        return letter_counts.get(r.question, Counter("A")).most_common(1)[0][0]

    def by_option(r) -> str:
        rate = [
            (option_stats.get((r.question, o), [0, 0])[0] + 1) / (option_stats.get((r.question, o), [0, 0])[1] + 2)
            for o in r.options
        ]
        return LETTERS[int(np.argmax(rate))]

    for category in CATEGORIES:
        group = [r for r in held_out if r.category == category]
        for guess in (by_letter, by_option):
            accuracy = sum(guess(r) == r.answer for r in group) / len(group)
            assert accuracy < 0.4, (category, guess.__name__, accuracy)
        # The correct option text varies; a frequent right answer is a frequent wrong one too.
        correct = Counter(r.answer_text for r in group)
        assert len(correct) >= 4, category
        if category != "Plot & Narrative":  # (1,680 orderings: each is rare either way)
            wrong = Counter(o for r in group for o in r.options if o != r.answer_text)
            common = [text for text, n in correct.items() if n >= 10]
            assert common and all(wrong[text] >= correct[text] for text in common), category

    # Plot & Narrative: the truth is not the "central" ordering of the four options.
    def distance(a: str, b: str) -> int:
        pa, pb = a.split(", then "), b.split(", then ")
        return sum((pa.index(x) < pa.index(y)) != (pb.index(x) < pb.index(y)) for x, y in itertools.combinations(pa, 2))

    plots = [r for r in held_out if r.category == "Plot & Narrative"]
    central = sum(
        min(range(4), key=lambda i: sum(distance(r.options[i], o) for o in r.options)) == r.answer_index for r in plots
    )
    assert central / len(plots) < 0.4


def test_reasoning_chains_are_short_and_timestamped():
    assert (stamp(0.25), stamp(0.74), stamp(0.75), stamp(12.2)) == ("0.5s", "0.5s", "1.0s", "12.0s")
    for row in _rows(40):
        times = [float(t) for t in re.findall(r"at (\d+\.\d)s", row.reasoning)]
        assert all(t * 2 == int(t * 2) for t in times)
        expected_events = {"Temporal": 4, "Plot & Narrative": 4, "Spatial": 1, "Goal & Purpose": 2}[row.category]
        assert len(times) == expected_events, row.reasoning
        assert len(row.reasoning.split()) <= 40
    spatial = next(r for r in _rows(8) if r.category == "Spatial")
    e = next(e for e in spatial.extra["events"] if e["kind"] == "enter" and e["quadrant"] == spatial.answer_text)
    assert spatial.reasoning == f"{e['color']} enters {e['quadrant']} at {stamp(e['time'])}."
    cause = next(r for r in _rows(8) if r.category == "Goal & Purpose")
    leave, move = cause.extra["events"][4:]
    assert cause.reasoning == (
        f"{leave['color']} leaves {leave['quadrant']} at {stamp(leave['time'])}. "
        f"{move['color']} moves to {move['quadrant']} at {stamp(move['time'])}."
    )


def test_fixed_form_one_template_per_category_answered_by_the_video():
    from longrl.data.synth import FIXED_PALETTE, make_row

    cfg = SynthConfig("unused", frames=32, options="fixed")
    letters = {c: set() for c in CATEGORIES}
    questions = {c: set() for c in CATEGORIES}
    for i in range(64):
        row = make_row(cfg, "train", i)
        story = story_from_row(row)
        assert {e.color for e in story.arrivals} == set(FIXED_PALETTE)
        moved = story.move
        if row.category == "Spatial":
            assert row.options == list(QUADRANTS)
            source = next(e for e in story.arrivals if e.color == moved.color).quadrant
            final = story.state_at(story.frames - 1).cells
            assert final[QUADRANTS.index(source)] is None and sum(c is None for c in final) == 1
            assert row.answer_text == source
        elif row.category == "Goal & Purpose":
            assert row.options == [f"the {c} object left it" for c in FIXED_PALETTE]
            assert row.answer_text == f"the {story.departure.color} object left it"
            questions[row.category].add(row.question.replace(moved.color, "X").replace(moved.quadrant, "Q"))
            letters[row.category].add(row.answer)
            continue
        else:
            assert row.options == [f"the {c} object" for c in FIXED_PALETTE]
            expected = moved.color if row.category == "Plot & Narrative" else story.arrivals[0].color
            assert row.answer_text == f"the {expected} object"
        questions[row.category].add(row.question)
        letters[row.category].add(row.answer)
    assert all(len(q) == 1 for q in questions.values())  # one template per category
    assert all(len(found) >= 3 for found in letters.values())  # the letter follows the video, not the question


def test_timeline_reasoning_narrates_every_event_then_concludes():
    from longrl.data.synth import CATEGORIES, SynthConfig, make_row, story_from_row

    cfg = SynthConfig(out_dir="unused", options="fixed", reasoning="timeline")
    for index in range(8):
        row = make_row(cfg, "train", index)
        story = story_from_row(row)
        sentences = row.reasoning.split(". ")
        assert len(sentences) == len(story.events) + 1  # six events, then the conclusion
        for event, sentence in zip(story.events, sentences):
            assert sentence.startswith(f"{event.color} ") and event.quadrant in sentence
        conclusion = sentences[-1]
        first, left, moved = story.arrivals[0], story.departure, story.move
        source = next(e for e in story.arrivals if e.color == moved.color)
        assert (
            conclusion
            == {
                "Temporal": f"{first.color} came first.",
                "Spatial": f"{source.quadrant} stays empty.",
                "Plot & Narrative": f"{moved.color} changed rooms.",
                "Goal & Purpose": f"{left.color} left {moved.quadrant}.",
            }[row.category]
        )
        assert row.category == CATEGORIES[index % 4]
    with pytest.raises(ValueError, match="reasoning='timeline' is written for options='fixed'"):
        SynthConfig(out_dir="unused", reasoning="timeline").validate()


def test_audio_variant_beeps_at_an_arrival_and_half_the_questions_need_the_sound(tmp_path):
    """`audio=True`: every video's sound track is faint noise with one beep of the row's pitch on
    its arrival's first frame (the dominant frequency there, quiet before), half the rows ask about
    it, and their answers follow the beep; the pictures are those of the same row without audio."""
    from longrl.data.audio import SAMPLING_RATE, decode_audio
    from longrl.data.synth import AUDIO_CATEGORIES, AV_CATEGORIES, BEEP_SECONDS, FIXED_PALETTE, PITCHES

    cfg = dict(num_train=8, num_test=0, frames=32, fps=8.0, options="fixed", workers=1)
    train, _ = generate_synth(SynthConfig(str(tmp_path / "av"), audio=True, **cfg))
    plain, _ = generate_synth(SynthConfig(str(tmp_path / "plain"), **cfg))
    rows = load_rows(train)
    assert [r.category for r in rows] == list(AV_CATEGORIES) * 2
    assert [r.extra["needs_audio"] for r in rows] == [c in AUDIO_CATEGORIES for c in AV_CATEGORIES] * 2
    pitches = set()
    for row, twin in zip(rows, load_rows(plain)):
        assert row.extra["events"] == twin.extra["events"]  # the beep draws come after the story's
        beep = row.extra["beep"]
        arrival = [e for e in row.extra["events"] if e["kind"] == "enter"][beep["arrival"]]
        if row.category == "Sound":
            assert row.options == list(PITCHES) and row.answer == LETTERS[list(PITCHES).index(beep["pitch"])]
        if row.category == "Sound & Sight":
            assert row.answer == LETTERS[FIXED_PALETTE.index(arrival["color"])]
        assert row.question in {
            "Which object appeared first?",
            "Which room is empty at the end?",
            "How high was the beep?",
            "Which object entered as the beep sounded?",
        }
        wave = decode_audio(tmp_path / "av" / row.video)
        assert abs(wave.size / SAMPLING_RATE - 4.0) < 0.1
        start = round(arrival["time"] * SAMPLING_RATE)
        window = wave[start + 400 : start + 400 + 2048]  # inside the beep (AAC may shift it a little)
        spectrum = np.abs(np.fft.rfft(window * np.hanning(window.size)))
        peak_hz = np.argmax(spectrum) * SAMPLING_RATE / window.size
        assert abs(peak_hz - PITCHES[beep["pitch"]]) < 20, (peak_hz, beep)
        assert np.sqrt(np.mean(window**2)) > 0.2
        quiet = wave[: max(start - 800, 1)]
        assert np.sqrt(np.mean(quiet**2)) < 0.02 and BEEP_SECONDS * SAMPLING_RATE > window.size
        pitches.add(beep["pitch"])
        a = decode_video(tmp_path / "av" / row.video, num_frames=16).frames
        b = decode_video(tmp_path / "plain" / twin.video, num_frames=16).frames
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert len(pitches) >= 3


def test_audio_variant_is_refused_outside_the_fixed_form(tmp_path):
    with pytest.raises(ValueError, match="audio=True is written for options='fixed'"):
        SynthConfig(str(tmp_path), audio=True).validate()


def test_cli_data_synth_audio_writes_the_audio_visual_task_and_refuses_other_tasks(tmp_path, capsys):
    from longrl.cli import main

    out = tmp_path / "av"
    assert main(["data", "synth", "--out", str(out), "--train", "4", "--test", "0", "--fps", "8", "--audio"]) == 0
    rows = load_rows(out / "train.jsonl")
    assert [r.category for r in rows] == ["Temporal", "Spatial", "Sound", "Sound & Sight"]
    assert all("beep" in r.extra for r in rows)
    assert main(["data", "synth", "--out", str(tmp_path / "m"), "--task", "arithmetic", "--audio"]) == 1
    assert "--audio gives the video task a sound track" in capsys.readouterr().err
