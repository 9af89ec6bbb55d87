"""A synthetic long-video reasoning task that a tiny model can learn in minutes and that needs the video.

World: a square canvas split into 4 quadrants. Four filled squares of four distinct colors enter one
by one, each into an empty quadrant, and stay. Then one object (Y) leaves and later another (X)
moves into Y's vacated quadrant. One multiple-choice question per video, in the four
LongVideo-Reason categories:

    Temporal          which object appeared first / second / third / last?
    Spatial           where did the {color} object first appear?
    Plot & Narrative  which sequence of arrivals is correct?
    Goal & Purpose    why could the {X} object move to the {quadrant} quadrant?   (because Y left it)

With ``options="fixed"`` (the CPU quickstart's form) each category has one template instead: which
object appeared first, which room is empty at the end, which object changed rooms, and the cause
question above (see make_fixed_question).

With ``audio=True`` (the omni quickstart's form, fixed options) each video also has a sound track:
quiet noise and one short beep, of one of four pitches, at the moment one of the objects enters.
Half the questions need the sound (AUDIO_CATEGORIES): the beep's pitch (the sound alone) and which
object entered as it sounded (the sound and the pictures); the other half are the Temporal and
Spatial questions above, which need the pictures only.

The question text never determines the answer: options are the same kind of thing for every video
(the colors present, the four quadrants, orderings of the colors present), the correct letter cycles
A-D, and distractors are drawn at random. With the default 56 px canvas, Qwen2.5-VL's 14 px patches
and 2x2 merge make one merged video token cover exactly one quadrant.

Event times are fractions of the duration (so any frame count works), snapped to frames: an event's
`frame` is the first frame that shows it, and its `time` is that frame's timestamp.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from longrl.data.rows import LETTERS, Row, save_rows

SYNTH_VERSION = 4  # bump when the generated content changes, so cached datasets are rebuilt

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 250),
    "yellow": (245, 230, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 225, 235),
    "white": (250, 250, 250),
    "orange": (250, 140, 10),
}
CATEGORIES = ("Temporal", "Spatial", "Plot & Narrative", "Goal & Purpose")
ORDINALS = ("first", "second", "third", "last")
NUM_OBJECTS = 4
NUM_EVENTS = NUM_OBJECTS + 2  # 4 arrivals, 1 departure, 1 move
OBJECT_FRACTION = 0.6  # object side / quadrant side
BACKGROUND_RANGE = (10, 45)  # dark gray level, drawn per video
# Each quadrant is a room with its own floor shade, added to the video's background level: where a
# thing is shows in what a video token sees (Qwen's vision tower has no absolute positions).
FLOOR_SHADES = (0, 30, 60, 90)
# ...and its own light: an object looks brighter or dimmer by the room it stands in, as in any real
# scene, so what a thing looks like also says where it is.
ROOM_LIGHT = (1.0, 0.8, 0.62, 0.45)


def lit(color: str, quadrant: int) -> tuple[int, int, int]:
    """The RGB an object of ``color`` shows in room ``quadrant`` (index into QUADRANTS)."""
    r, g, b = (int(round(c * ROOM_LIGHT[quadrant])) for c in PALETTE[color])
    return r, g, b


# The audio-visual variant (audio=True): categories, and the beep's pitches, an octave apart so each
# lights its own mel bins
AV_CATEGORIES = ("Temporal", "Spatial", "Sound", "Sound & Sight")
AUDIO_CATEGORIES = ("Sound", "Sound & Sight")  # the questions that need the sound track
PITCHES: dict[str, float] = {"low": 300.0, "middle": 600.0, "high": 1200.0, "very high": 2400.0}
BEEP_SECONDS = 0.25
NOISE_LEVEL = 0.005  # the sound track's background noise, so silence is not digital zero

MIN_FRAMES_PER_GAP = 2  # >= 2 frames per state, so frame-pair (temporal patch) sampling still sees it


@dataclass
class SynthConfig:
    out_dir: str
    num_train: int = 600
    num_test: int = 200
    frames: int = 32  # frames per video file: tens to thousands
    fps: float = 4.0
    size: int = 56  # canvas side in pixels; multiples of 28 keep quadrants aligned to merged tokens
    seed: int = 0
    min_gap: float = 0.125  # minimum time between consecutive events, as a fraction of the duration
    workers: int = 0  # processes for rendering; 0 = os.cpu_count(). Does not change the output.
    # "shuffled": options in random order, distractor colors drawn from 8 (the benchmark form).
    # "fixed": four colors, one question template per category, options in one canonical order
    # (colors, or rooms top-left first): the easy form the CPU quickstart learns in minutes.
    options: str = "shuffled"
    object_fraction: float = OBJECT_FRACTION  # object side / room side; 1.0 fills the room
    # "evidence": the reasoning cites the events the answer rests on; "timeline": it narrates every
    # event in order first (a dense caption: each target token depends on the video), then concludes.
    reasoning: str = "evidence"
    # True: a sound track with one beep per video and half the questions about it (needs "fixed")
    audio: bool = False

    def validate(self) -> None:
        if self.num_train < 0 or self.num_test < 0:
            raise ValueError(f"num_train/num_test must be >= 0, got {self.num_train}/{self.num_test}")
        if self.size < 16 or self.size % 2:
            raise ValueError(
                f"size={self.size}: use an even canvas side >= 16 px (56 aligns quadrants "
                "with Qwen2.5-VL merged tokens)"
            )
        if self.options not in ("shuffled", "fixed"):
            raise ValueError(f"options={self.options!r}: choose 'shuffled' or 'fixed'")
        if self.reasoning not in ("evidence", "timeline"):
            raise ValueError(f"reasoning={self.reasoning!r}: choose 'evidence' or 'timeline'")
        if self.reasoning == "timeline" and self.options != "fixed":
            raise ValueError("reasoning='timeline' is written for options='fixed' (one template per category)")
        if self.audio and (self.options != "fixed" or self.reasoning != "evidence"):
            raise ValueError("audio=True is written for options='fixed' and reasoning='evidence'")
        if self.fps <= 0:
            raise ValueError(f"fps={self.fps}: must be > 0")
        max_gap = 1.0 / NUM_EVENTS  # 5 gaps + half a gap of margin at each end must fit
        if not 0 < self.min_gap < max_gap:
            raise ValueError(
                f"min_gap={self.min_gap}: must be in (0, {max_gap:.4f}) so {NUM_EVENTS} "
                "events and margins fit in one video"
            )
        if self.min_gap * self.frames < MIN_FRAMES_PER_GAP:
            need = math.ceil(MIN_FRAMES_PER_GAP / self.min_gap)
            raise ValueError(
                f"frames={self.frames} is too few for min_gap={self.min_gap}: each gap must "
                f"span >= {MIN_FRAMES_PER_GAP} frames; use frames >= {need} or a larger min_gap"
            )


@dataclass(frozen=True)
class Event:
    kind: str  # "enter" | "leave" | "move"
    color: str
    quadrant: str  # where it happens: entered / left / moved to
    frame: int  # first frame that shows the event
    time: float  # seconds, = frame / fps
    source: str | None = None  # for "move": the quadrant it came from


@dataclass(frozen=True)
class SceneState:
    background: int  # gray level 0..255
    cells: tuple[str | None, ...]  # color name per quadrant, in QUADRANTS order; None = empty


@dataclass
class Story:
    """The ground truth of one video: who enters where and when, who leaves, who moves."""

    background: int
    events: list[Event]  # in time order: 4 x enter, leave, move
    frames: int
    fps: float

    @property
    def arrivals(self) -> list[Event]:
        return [e for e in self.events if e.kind == "enter"]

    @property
    def departure(self) -> Event:
        return next(e for e in self.events if e.kind == "leave")

    @property
    def move(self) -> Event:
        return next(e for e in self.events if e.kind == "move")

    def state_at(self, frame: int) -> SceneState:
        cells: list[str | None] = [None] * len(QUADRANTS)
        for e in self.events:
            if e.frame > frame:
                break
            if e.kind in ("leave", "move"):
                cells[QUADRANTS.index(e.source if e.kind == "move" else e.quadrant)] = None
            if e.kind in ("enter", "move"):
                cells[QUADRANTS.index(e.quadrant)] = e.color
        return SceneState(self.background, tuple(cells))


# ---------------------------------------------------------------------------------------------
# Events


def make_story(
    rng: np.random.Generator, *, frames: int, fps: float, min_gap: float, palette: tuple[str, ...] = tuple(PALETTE)
) -> Story:
    """Draw one video's events. Times: 6 events with >= min_gap between them, half a gap of margin
    at each end (so the empty start and the final state are both visible), the rest random jitter."""
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    colors = [palette[i] for i in rng.choice(len(palette), NUM_OBJECTS, replace=False)]
    quadrants = [QUADRANTS[i] for i in rng.permutation(len(QUADRANTS))]
    leaver = int(rng.integers(NUM_OBJECTS))
    mover = int(rng.choice([i for i in range(NUM_OBJECTS) if i != leaver]))

    slack = 1.0 - (NUM_EVENTS - 1) * min_gap - min_gap  # what the fixed gaps and margins leave
    jitter = rng.dirichlet(np.ones(NUM_EVENTS + 1)) * slack  # before, between and after the events
    fractions = [min_gap / 2 + jitter[0]]
    for k in range(1, NUM_EVENTS):
        fractions.append(fractions[-1] + min_gap + jitter[k])
    # floor(f * frames): >= 1 at the start, <= frames - 1 at the end, >= 2 frames apart (validate()).
    # (+1e-9: float sums must not turn an exact 1.0 into frame 0.)
    event_frames = [int(math.floor(f * frames + 1e-9)) for f in fractions]

    def event(kind: str, obj: int, k: int, quadrant: str, source: str | None = None) -> Event:
        return Event(kind, colors[obj], quadrant, event_frames[k], event_frames[k] / fps, source)

    events = [event("enter", i, i, quadrants[i]) for i in range(NUM_OBJECTS)]
    events.append(event("leave", leaver, NUM_OBJECTS, quadrants[leaver]))
    events.append(event("move", mover, NUM_OBJECTS + 1, quadrants[leaver], source=quadrants[mover]))
    return Story(background, events, frames, fps)


# ---------------------------------------------------------------------------------------------
# Questions


@dataclass
class Question:
    category: str
    question: str
    options: list[str]
    answer: str  # letter
    reasoning: str


def stamp(seconds: float) -> str:
    """Timestamps in reasoning chains: rounded (half up) to 0.5 s, e.g. "2.5s"."""
    return f"{math.floor(seconds * 2 + 0.5) / 2:.1f}s"


def _sentence(e: Event, timed: bool = True) -> str:
    verb = {"enter": "enters", "leave": "leaves", "move": "moves to"}[e.kind]
    return f"{e.color} {verb} {e.quadrant}" + (f" at {stamp(e.time)}." if timed else ".")


def _place(correct: str, distractors: list[str], answer_index: int, rng: np.random.Generator) -> list[str]:
    """Options with `correct` at `answer_index` and the distractors shuffled around it."""
    rest = [distractors[i] for i in rng.permutation(len(distractors))]
    return rest[:answer_index] + [correct] + rest[answer_index:]


FIXED_PALETTE = ("red", "green", "blue", "yellow")  # the four colors of options="fixed"


def make_fixed_question(story: Story, category: str, rng: np.random.Generator) -> Question:
    """The easy form: ONE question template per category and options in canonical order
    (FIXED_PALETTE colors, or QUADRANTS), so the letter follows the answer.

    Measured on the tiny model (notes/log/quickstart.md): a fixed question whose answer sits at one
    place in the video is learned in ~100 steps, while a question whose words say where to look
    ("which appeared third?", "where did the red one go?") was not learned in 750. So every template
    here asks the same thing of every video, and only the video changes the answer. ``rng`` is
    unused (kept for the signature make_question shares)."""
    arrivals = story.arrivals
    first, left, moved = arrivals[0], story.departure, story.move
    source = next(e for e in arrivals if e.color == moved.color)
    color_options = [f"the {c} object" for c in FIXED_PALETTE]

    def letter_of(color: str) -> str:
        return LETTERS[FIXED_PALETTE.index(color)]

    if category == "Temporal":
        return Question(
            category,
            "Which object appeared first?",
            color_options,
            letter_of(first.color),
            f"{_sentence(first)} {first.color} came first.",
        )
    if category == "Spatial":
        return Question(
            category,
            "Which room is empty at the end?",
            list(QUADRANTS),
            LETTERS[QUADRANTS.index(source.quadrant)],
            f"{_sentence(moved)} {source.quadrant} stays empty.",
        )
    if category == "Plot & Narrative":
        return Question(
            category,
            "Which object changed rooms during the story?",
            color_options,
            letter_of(moved.color),
            f"{_sentence(source)} {_sentence(moved)}",
        )
    if category == "Goal & Purpose":
        return Question(
            category,
            f"Why could the {moved.color} object move to the {moved.quadrant} quadrant?",
            [f"the {c} object left it" for c in FIXED_PALETTE],
            letter_of(left.color),
            f"{_sentence(left)} {_sentence(moved)}",
        )
    raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")


@dataclass(frozen=True)
class Beep:
    """The sound track's one beep: its pitch (a PITCHES key) and the arrival it marks."""

    pitch: str
    arrival: int  # index into Story.arrivals; the beep starts on that arrival's frame


def make_beep(story: Story, rng: np.random.Generator) -> Beep:
    return Beep(tuple(PITCHES)[int(rng.integers(len(PITCHES)))], int(rng.integers(NUM_OBJECTS)))


def make_sound_question(story: Story, beep: Beep, category: str) -> Question:
    """The two AUDIO_CATEGORIES, fixed form: the pitch (options in PITCHES order), and which object
    entered with the beep (FIXED_PALETTE order)."""
    arrival = story.arrivals[beep.arrival]
    heard = f"A {beep.pitch} beep sounds at {stamp(arrival.time)}."
    if category == "Sound":
        return Question(
            category,
            "How high was the beep?",
            list(PITCHES),
            LETTERS[tuple(PITCHES).index(beep.pitch)],
            f"{heard} The beep was {beep.pitch}.",
        )
    if category == "Sound & Sight":
        return Question(
            category,
            "Which object entered as the beep sounded?",
            [f"the {c} object" for c in FIXED_PALETTE],
            LETTERS[FIXED_PALETTE.index(arrival.color)],
            f"{heard} {_sentence(arrival)} {arrival.color} came with the beep.",
        )
    raise ValueError(f"unknown category {category!r}; choose one of {AUDIO_CATEGORIES}")


def render_sound(story: Story, beep: Beep, rng: np.random.Generator, sampling_rate: int) -> np.ndarray:
    """float32 [duration * sampling_rate]: faint noise, and the beep from its arrival's first frame."""
    from longrl.data.audio import tone

    samples = round(story.frames / story.fps * sampling_rate)
    wave = (NOISE_LEVEL * rng.standard_normal(samples)).astype(np.float32)
    beep_wave = tone(PITCHES[beep.pitch], BEEP_SECONDS, sampling_rate)
    start = round(story.arrivals[beep.arrival].time * sampling_rate)
    end = min(samples, start + beep_wave.size)
    wave[start:end] += beep_wave[: end - start]
    return wave


def timeline_reasoning(story: Story, category: str) -> str:
    """Every event in time order (a dense caption), then the fixed question's conclusion. The events
    carry no timestamps: order is what the questions need, and half the tokens keep CPU rollouts short."""
    first, left, moved = story.arrivals[0], story.departure, story.move
    source = next(e for e in story.arrivals if e.color == moved.color)
    conclusion = {
        "Temporal": f"{first.color} came first.",
        "Spatial": f"{source.quadrant} stays empty.",
        "Plot & Narrative": f"{moved.color} changed rooms.",
        "Goal & Purpose": f"{left.color} left {moved.quadrant}.",
    }[category]
    return " ".join(_sentence(e, timed=False) for e in story.events) + " " + conclusion


def make_question(story: Story, category: str, answer_index: int, rng: np.random.Generator) -> Question:
    arrivals = story.arrivals
    colors = [e.color for e in arrivals]
    enter_lines = [_sentence(e) for e in arrivals]

    if category == "Temporal":
        rank = int(rng.integers(NUM_OBJECTS))
        ordinal = ORDINALS[rank]
        options = _place(
            f"the {colors[rank]} object", [f"the {c} object" for c in colors if c != colors[rank]], answer_index, rng
        )
        return Question(
            category,
            f"Which object appeared {ordinal}?",
            options,
            LETTERS[answer_index],
            " ".join(enter_lines + [f"{colors[rank]} came {ordinal}."]),
        )

    if category == "Spatial":
        target = arrivals[int(rng.integers(NUM_OBJECTS))]
        options = _place(target.quadrant, [q for q in QUADRANTS if q != target.quadrant], answer_index, rng)
        return Question(
            category,
            f"Where did the {target.color} object first appear?",
            options,
            LETTERS[answer_index],
            _sentence(target),
        )

    if category == "Plot & Narrative":

        def sequence(order) -> str:
            return ", then ".join(order)

        others = [p for p in itertools.permutations(colors) if list(p) != colors]
        picked = [others[i] for i in rng.choice(len(others), NUM_OBJECTS - 1, replace=False)]
        options = _place(sequence(colors), [sequence(p) for p in picked], answer_index, rng)
        return Question(
            category,
            "Which sequence of arrivals is correct?",
            options,
            LETTERS[answer_index],
            " ".join(enter_lines + [f"Order: {', '.join(colors)}."]),
        )

    if category == "Goal & Purpose":
        left, moved = story.departure, story.move
        bystanders = [c for c in colors if c not in (left.color, moved.color)]
        absent = [c for c in PALETTE if c not in colors]
        decoy = absent[int(rng.integers(len(absent)))]
        options = _place(
            f"the {left.color} object left it",
            [f"the {c} object left it" for c in bystanders + [decoy]],
            answer_index,
            rng,
        )
        return Question(
            category,
            f"Why could the {moved.color} object move to the {moved.quadrant} quadrant?",
            options,
            LETTERS[answer_index],
            f"{_sentence(left)} {_sentence(moved)}",
        )

    raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")


# ---------------------------------------------------------------------------------------------
# Pixels


def render_frame(state: SceneState, size: int, object_fraction: float = OBJECT_FRACTION) -> np.ndarray:
    """uint8 [size, size, 3]: four rooms with floors of different gray shades, one centered square
    per occupied quadrant."""
    frame = np.empty((size, size, 3), dtype=np.uint8)
    half = size // 2
    for q, shade in enumerate(FLOOR_SHADES):
        top, left = (q // 2) * half, (q % 2) * half
        frame[top : top + half, left : left + half] = state.background + shade
    side = round(object_fraction * half)
    pad = (half - side) // 2
    for q, color in enumerate(state.cells):
        if color is not None:
            top, left = (q // 2) * half + pad, (q % 2) * half + pad
            frame[top : top + side, left : left + side] = lit(color, q)
    return frame


def quadrant_center(quadrant: str, size: int) -> tuple[int, int]:
    """(row, col) of the center pixel of a quadrant: the middle of its object, if any."""
    q, half = QUADRANTS.index(quadrant), size // 2
    return (q // 2) * half + half // 2, (q % 2) * half + half // 2


def render_story(story: Story, size: int, object_fraction: float = OBJECT_FRACTION) -> Iterator[np.ndarray]:
    """Every frame of the video, one at a time; a state is drawn once and reused until it changes."""
    cached: tuple[SceneState, np.ndarray] | None = None
    for frame in range(story.frames):
        state = story.state_at(frame)
        if cached is None or cached[0] != state:
            cached = (state, render_frame(state, size, object_fraction))
        yield cached[1]


def encode_mp4(path: str | Path, frames: Iterator[np.ndarray], fps: float, audio: np.ndarray | None = None) -> None:
    """Stream frames into an H.264 mp4 one by one, so thousand-frame videos never sit in RAM;
    ``audio`` (mono float32 at 16 kHz) becomes an AAC sound track beside them.

    Frame i gets pts i in a 1/fps time base, so decoders report timestamp i / fps."""
    import av

    from longrl.data import audio as audio_lib

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = None
        for i, image in enumerate(frames):
            if stream is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / rate
                # Near-lossless colors; one thread per video (generation parallelises over videos);
                # a keyframe every ~2 s keeps seeking cheap in long videos.
                options = {"threads": "1", "g": str(max(1, round(2 * fps))), "bf": "0"}
                if codec == "libx264":
                    options |= {"crf": "12", "preset": "veryfast"}
                else:
                    stream.bit_rate = 8_000_000
                stream.options = options
                sound = None if audio is None else audio_lib.add_audio_stream(container, "aac")
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        container.mux(stream.encode())
        if sound is not None and audio is not None:
            audio_lib.encode_audio(container, sound, audio)


# ---------------------------------------------------------------------------------------------
# Dataset


def video_rng(seed: int, split: str, index: int, *substream: int) -> np.random.Generator:
    """One independent stream per video, so videos can be made in any order, in any process;
    ``substream`` gives the video further independent streams (its sound track's noise)."""
    return np.random.default_rng([seed, {"train": 0, "test": 1}[split], index, *substream])


def make_row(cfg: SynthConfig, split: str, index: int) -> Row:
    """The row of one video (events and question), without writing the video."""
    rng = video_rng(cfg.seed, split, index)
    fixed = cfg.options == "fixed"
    story = make_story(
        rng, frames=cfg.frames, fps=cfg.fps, min_gap=cfg.min_gap, palette=FIXED_PALETTE if fixed else tuple(PALETTE)
    )
    # Round-robin categories; with shuffled options the correct letter cycles A-D in each category.
    categories = AV_CATEGORIES if cfg.audio else CATEGORIES
    category = categories[index % len(categories)]
    beep = make_beep(story, rng) if cfg.audio else None
    if beep is not None and category in AUDIO_CATEGORIES:
        q = make_sound_question(story, beep, category)
    elif fixed:
        q = make_fixed_question(story, category, rng)
    else:
        q = make_question(story, category, (index // len(CATEGORIES)) % NUM_OBJECTS, rng)
    if cfg.reasoning == "timeline":
        q = dataclasses.replace(q, reasoning=timeline_reasoning(story, category))
    return Row(
        id=f"synth-{split}-{index:05d}",
        video=f"videos/{split}-{index:05d}.mp4",
        question=q.question,
        options=q.options,
        answer=q.answer,
        reasoning=q.reasoning,
        category=q.category,
        extra={
            "events": [dataclasses.asdict(e) for e in story.events],
            "duration": cfg.frames / cfg.fps,
            "fps": cfg.fps,
            "frames": cfg.frames,
            "size": cfg.size,
            "background": story.background,
            **({} if beep is None else {"beep": dataclasses.asdict(beep), "needs_audio": category in AUDIO_CATEGORIES}),
        },
    )


def story_from_row(row: Row) -> Story:
    """Rebuild the ground truth of a generated row (from `row.extra`)."""
    x = row.extra
    return Story(x["background"], [Event(**e) for e in x["events"]], x["frames"], x["fps"])


def _make_video(job: tuple[SynthConfig, str, int]) -> Row:
    cfg, split, index = job
    row = make_row(cfg, split, index)
    assert row.video is not None
    story = story_from_row(row)
    sound = None
    if "beep" in row.extra:  # its own stream: the row's draws stay what they are without audio
        from longrl.data.audio import SAMPLING_RATE

        sound = render_sound(story, Beep(**row.extra["beep"]), video_rng(cfg.seed, split, index, 1), SAMPLING_RATE)
    encode_mp4(Path(cfg.out_dir) / row.video, render_story(story, cfg.size, cfg.object_fraction), cfg.fps, audio=sound)
    return row


def _config_record(cfg: SynthConfig) -> dict:
    record = {"version": SYNTH_VERSION, **dataclasses.asdict(cfg)}
    del record["workers"], record["out_dir"]  # neither changes the content
    return record


def generate_synth(cfg: SynthConfig, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write out_dir/videos/*.mp4, out_dir/{train,test}.jsonl and out_dir/synth_config.json.

    Same config -> byte-identical jsonl and identical decoded frames, whatever `workers` is.
    If out_dir already holds a complete dataset of the same config, it is reused unless `overwrite`.
    """
    cfg.validate()
    out = Path(cfg.out_dir)
    train_path, test_path, config_path = out / "train.jsonl", out / "test.jsonl", out / "synth_config.json"
    record = _config_record(cfg)
    if not overwrite and _is_complete(out, record):
        return train_path, test_path

    config_path.unlink(missing_ok=True)  # written last: its presence marks a finished dataset
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, "train", i) for i in range(cfg.num_train)] + [(cfg, "test", i) for i in range(cfg.num_test)]
    workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(jobs)))
    if workers == 1:
        rows = [_make_video(job) for job in jobs]
    else:
        # fork: workers need only numpy and PyAV, and fork neither re-imports __main__ nor pays imports.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            rows = pool.map(_make_video, jobs, chunksize=max(1, len(jobs) // (8 * workers)))

    save_rows(rows[: cfg.num_train], train_path)
    save_rows(rows[cfg.num_train :], test_path)
    config_path.write_text(json.dumps(record, indent=2) + "\n")
    return train_path, test_path


def _is_complete(out: Path, record: dict) -> bool:
    config_path = out / "synth_config.json"
    if not (config_path.is_file() and (out / "train.jsonl").is_file() and (out / "test.jsonl").is_file()):
        return False
    try:
        if json.loads(config_path.read_text()) != record:
            return False
    except json.JSONDecodeError:
        return False
    names = [
        f"{split}-{i:05d}.mp4"
        for split, n in (("train", record["num_train"]), ("test", record["num_test"]))
        for i in range(n)
    ]
    return all((out / "videos" / name).is_file() for name in names)
