"""What each stage asks the endpoint, and how replies are read and checked.

Every reader returns a value or raises ``Unusable`` with the reason an item is dropped; a reply is
never trusted for more than its documented shape (a question is a JSON object with question,
options, answer and reasoning; the reasoning cites timestamps as ``[12.0s]``).
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np

from longrl.data.prompt import SYSTEM_PROMPT
from longrl.data.rows import LETTERS, format_options
from longrl.rewards.multiple_choice import extract_choice, parse_response

CATEGORY_HINTS = {
    "Temporal": "the order, timing or duration of events",
    "Goal & Purpose": "why someone or something acts: intentions and goals",
    "Plot & Narrative": "how the story develops across the whole video",
    "Spatial": "where people and objects are and how they move relative to each other",
}
MAX_CAPTION_CHARS = 1200
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_CITATION = re.compile(r"(\d+(?:\.\d+)?)\s*s\b")


class Unusable(ValueError):
    """A reply that cannot be used; the message is the drop reason in the stage report, ``reply``
    the start of the text that caused it (kept in the stage's record for inspection)."""

    def __init__(self, reason: str, reply: str = ""):
        super().__init__(reason)
        self.reply = reply[:500]


# -- (b) captions -------------------------------------------------------------------------------


def png_data_url(rgb: np.ndarray) -> str:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "rgb24"
        for packet in [
            *stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")),
            *stream.encode(None),
        ]:
            container.mux(packet)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def mosaic(frames: np.ndarray) -> np.ndarray:
    """Frames [T, H, W, 3] tiled left to right, top to bottom, in a near-square grid."""
    t, h, w, c = frames.shape
    cols = int(np.ceil(np.sqrt(t)))
    rows = int(np.ceil(t / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = frame
    return grid


def caption_messages(frames: np.ndarray, start: float, end: float, frame_mode: str) -> list[dict]:
    images = [mosaic(frames)] if frame_mode == "mosaic" else list(frames)
    layout = "tiled left to right, top to bottom, in one image" if frame_mode == "mosaic" else "in order"
    text = (
        f"These are {len(frames)} frames ({layout}) from a clip of a longer video, from {start:.1f}s to "
        f"{end:.1f}s. Describe what happens in the clip in one to three sentences: the people, objects, "
        "actions, and where things are."
    )
    parts = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images]
    return [
        {"role": "system", "content": "You describe video clips accurately and briefly."},
        {"role": "user", "content": [*parts, {"type": "text", "text": text}]},
    ]


def read_caption(text: str) -> str:
    caption = " ".join(_THINK.sub("", text).split())
    if not caption:
        raise Unusable("empty caption", text)
    return caption[:MAX_CAPTION_CHARS]


# -- (c) timelines ------------------------------------------------------------------------------


def timeline_text(clips: list[dict]) -> str:
    return "\n".join(f"[{c['start']:.1f}s - {c['end']:.1f}s] {c['caption']}" for c in clips)


# -- (d) questions ------------------------------------------------------------------------------


def question_messages(timeline: str, duration: float, category: str, variant: int, num_options: int) -> list[dict]:
    hint = CATEGORY_HINTS.get(category, category)
    again = (
        f" This is question {variant + 1} of its category: ask about something else than the obvious one."
        if variant
        else ""
    )
    text = (
        f"Here is a timestamped timeline of a {duration:.0f}-second video, one line per clip:\n{timeline}\n\n"
        f"Write one multiple-choice question of the category {category} ({hint}) that needs information "
        f"from several parts of the video. Give {num_options} options with exactly one correct.{again} "
        'Reply with only a JSON object: {"question": "...", "options": ["...", ...], "answer": "A", '
        '"reasoning": "a step-by-step chain of reasoning that cites the timestamps it uses, as [12.0s]"}'
    )
    return [
        {"role": "system", "content": "You write hard, unambiguous reasoning questions about videos."},
        {"role": "user", "content": text},
    ]


def read_question(text: str) -> dict:
    body = _THINK.sub("", text)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise Unusable("reply holds no JSON object", text)
    try:
        value = json.loads(body[start : end + 1])
    except json.JSONDecodeError:
        raise Unusable("reply is not valid JSON", text) from None
    if not isinstance(value, dict):
        raise Unusable("reply is not a JSON object", text)
    return value


# -- (e) validation -----------------------------------------------------------------------------


def validate_question(q: dict, clips: list[dict], num_options: int) -> dict:
    """A checked question ``{question, options, answer (letter), reasoning, citations}``."""
    question, options, reasoning = q.get("question"), q.get("options"), q.get("reasoning")
    if not isinstance(question, str) or not question.strip():
        raise Unusable("schema: no question text")
    if not isinstance(options, list) or len(options) != num_options:
        raise Unusable(f"schema: options is not a list of {num_options}")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise Unusable("schema: an option is empty or not text")
    options = [re.sub(rf"^\(?{LETTERS[i]}[.):]\s*", "", o.strip()) for i, o in enumerate(options)]
    if len({o.lower() for o in options}) != len(options):
        raise Unusable("schema: options repeat")
    if not isinstance(reasoning, str) or not reasoning.strip():
        raise Unusable("schema: no reasoning")
    answer = q.get("answer")
    letter = None
    if isinstance(answer, str):
        text = answer.strip().strip("().:").strip()
        if len(text) == 1 and text.upper() in LETTERS[:num_options]:
            letter = text.upper()
        elif text in options:
            letter = LETTERS[options.index(text)]
    if letter is None:
        raise Unusable("answer is not among the options")
    cited = [float(t) for t in _CITATION.findall(reasoning)]
    if not cited:
        raise Unusable("reasoning cites no timestamp")
    for t in cited:
        if not any(c["start"] - 0.05 <= t <= c["end"] + 0.05 for c in clips):
            raise Unusable("reasoning cites a timestamp outside the video's clips")
    return {
        "question": question.strip(),
        "options": options,
        "answer": letter,
        "reasoning": reasoning.strip(),
        "citations": sorted(set(cited)),
    }


# -- (f) filters --------------------------------------------------------------------------------


def text_only_messages(q: dict) -> list[dict]:
    return [
        {
            "role": "user",
            "content": f"{q['question']}\n{format_options(q['options'])}\n"
            "Answer with the letter of the best option only.",
        }
    ]


def pilot_messages(q: dict, timeline: str | None, video: str | None, num_frames: int) -> list[dict]:
    text = f"{q['question']}\n{format_options(q['options'])}"
    content: str | list[dict]
    if video is not None:
        content = [{"type": "video", "video": video, "num_frames": num_frames}, {"type": "text", "text": text}]
    else:
        content = f"Video timeline:\n{timeline}\n\n{text}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def chosen_letter(text: str, options: list[str]) -> str | None:
    parsed = parse_response(text)
    return extract_choice(parsed.answer, options) if parsed.answer else None
