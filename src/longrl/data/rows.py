"""Dataset rows: the schema that real long-video datasets use.

One row is one question about one video (or image, or no media), multiple choice:

    {"id": "...", "video": "videos/x.mp4", "question": "...", "options": ["...", "..."],
     "answer": "B", "reasoning": "...", "category": "Temporal"}

or free text (math, open-ended), without options: {"id": ..., "question": ..., "answer": "6"}.

Rows live in `.jsonl` (one JSON object per line) or `.parquet` files. Loading validates every row
and normalises it (answer -> letter when there are options, "A. foo" option prefixes stripped,
media paths resolved), so everything downstream can trust a `Row`. Keys outside the schema are
kept in `Row.extra`. A row that does not fit is a RowError naming file, line and id; under
`bad_sample="skip"` (``data.bad_sample``) `read_rows` logs it, counts it and goes on.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LETTERS = string.ascii_uppercase
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)

# Schema order; also the column order save_rows writes.
FIELDS = ("id", "video", "question", "options", "answer", "reasoning", "category", "image", "extra")
REQUIRED = ("id", "question", "answer")

_ANSWER_LETTER = re.compile(r"^\(?([A-Z])\)?[.:]?$")  # "B", "(B)", "B.", "B:"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')  # the id of a line that does not parse

log = logging.getLogger("longrl.data")


class RowError(ValueError):
    """A row of a data file does not fit the schema; the message names file, line and id."""


@dataclass
class Row:
    id: str
    video: str | None
    question: str
    options: list[str]  # empty for a free-text row (math, open-ended)
    answer: str  # with options a letter ("A" is options[0]); without, the answer text
    reasoning: str = ""
    category: str = ""
    image: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_index(self) -> int:
        if not self.options:
            raise ValueError(f"row {self.id} has no options: its answer {self.answer!r} is free text, not a letter")
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        """The correct option's text, or the free-text answer."""
        return self.options[self.answer_index] if self.options else self.answer

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


def letter(index: int) -> str:
    return LETTERS[index]


def format_options(options: list[str]) -> str:
    """["red", "blue"] -> "A. red\\nB. blue"."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def row_from_dict(record: dict[str, Any], *, where: str = "row", media_root: str | Path | None = None) -> Row:
    """Validate and normalise one raw record. `where` ("data.jsonl line 7") prefixes errors."""
    if not isinstance(record, dict):
        raise RowError(
            f"{where} (id=None): expected a JSON object, got {type(record).__name__}. "
            "Fix: write one object per line with keys id, video, question, options, answer"
        )
    row_id = record.get("id")
    label = f"{where} (id={row_id!r})"

    def fail(problem: str, fix: str) -> RowError:
        return RowError(f"{label}: {problem}. Fix: {fix}")

    missing = [name for name in REQUIRED if record.get(name) is None]
    if missing:
        raise fail(
            f"missing field(s) {', '.join(missing)}",
            f"add {', '.join(repr(m) for m in missing)} to the row (required: {', '.join(REQUIRED)})",
        )
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool) or str(row_id) == "":
        raise fail(f"id must be a non-empty string or integer, got {row_id!r}", "give the row a unique id")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise fail(f"question must be a non-empty string, got {question!r}", "write the question text")

    if record.get("options") in (None, []):  # a free-text row
        options, answer = [], _answer_text(record["answer"], fail)
    else:
        options = _check_options(record["options"], fail)
        answer = _answer_letter(record["answer"], options, fail)

    media = {}
    for key in ("video", "image"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise fail(f"{key} must be a path string or null, got {value!r}", f"set {key!r} to a file path")
        media[key] = _resolve(value, media_root)
    if media["video"] and media["image"]:
        raise fail("has both a video and an image", "give a row one of them (a prompt holds one visual input)")

    text_fields = {}
    for key in ("reasoning", "category"):
        value = record.get(key) or ""
        if not isinstance(value, str):
            raise fail(f"{key} must be a string, got {type(value).__name__}", f"store {key!r} as text")
        text_fields[key] = value

    extra = record.get("extra") or {}
    if isinstance(extra, str):  # parquet stores `extra` as a JSON string (see save_rows)
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as e:
            raise fail(f"extra is a string but not valid JSON ({e})", "store extra as a JSON object") from None
    if not isinstance(extra, dict):
        raise fail(f"extra must be an object, got {type(extra).__name__}", "store extra as a JSON object")
    extra = dict(extra)
    extra.update({k: v for k, v in record.items() if k not in FIELDS})  # keep unknown keys

    return Row(
        id=str(row_id),
        video=media["video"],
        question=question,
        options=options,
        answer=answer,
        reasoning=text_fields["reasoning"],
        category=text_fields["category"],
        image=media["image"],
        extra=extra,
    )


def _check_options(options: Any, fail) -> list[str]:
    if not isinstance(options, (list, tuple)) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        got = f"{len(options)} item(s)" if isinstance(options, (list, tuple)) else type(options).__name__
        raise fail(
            f"options must be a list of {MIN_OPTIONS} to {MAX_OPTIONS} strings, got {got}",
            'write options as a JSON list, e.g. ["red", "blue", "green", "yellow"]',
        )
    bad = [i for i, o in enumerate(options) if not isinstance(o, str) or not o.strip()]
    if bad:
        raise fail(
            f"option {LETTERS[bad[0]]} is {options[bad[0]]!r}, not a non-empty string",
            "make every option a non-empty string",
        )
    options = [o.strip() for o in options]
    # Some datasets store ["A. red", "B. blue", ...]; keep the bare texts when every option has
    # exactly its own letter as prefix (a prompt template adds the letters back).
    prefixed = [re.match(rf"^\(?{LETTERS[i]}[.):]\s*(.+)$", o, re.S) for i, o in enumerate(options)]
    matches = [m for m in prefixed if m]
    if len(matches) == len(prefixed):
        options = [m.group(1).strip() for m in matches]
    return options


def _answer_text(answer: Any, fail) -> str:
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)  # a math answer written as a JSON number
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    raise fail(
        f"answer {answer!r} of a row without options must be non-empty text or a number",
        'write the reference answer, e.g. "answer": "6", or give the row options',
    )


def _answer_letter(answer: Any, options: list[str], fail) -> str:
    last = LETTERS[len(options) - 1]
    if isinstance(answer, str):
        text = answer.strip()
        m = _ANSWER_LETTER.match(text)
        if m:
            if LETTERS.index(m.group(1)) < len(options):
                return m.group(1)
            raise fail(
                f"answer {answer!r} is out of range for {len(options)} options (A-{last})",
                f"use a letter A-{last} or the exact text of one option",
            )
        matches = [i for i, o in enumerate(options) if o == text]
        if len(matches) == 1:
            return LETTERS[matches[0]]
    raise fail(
        f"answer {answer!r} is neither a letter A-{last} nor the text of exactly one option",
        f"use a letter A-{last} or the exact text of one option",
    )


def _resolve(path: str | None, root: str | Path | None) -> str | None:
    if path is None or _URL.match(path):  # URLs are left for the decoder
        return path
    p = Path(path).expanduser()
    if p.is_absolute() or root is None:
        return str(p)
    return str(Path(root) / p)


def load_rows(path: str | Path, *, media_root: str | Path | None = None) -> list[Row]:
    """Read and validate every row of a `.jsonl` or `.parquet` file; the first bad row raises.

    Relative `video`/`image` paths resolve against `media_root`, or else the data file's folder.
    A malformed row raises RowError naming the file, the line (jsonl, 1-based) or row index
    (parquet, 0-based), and the row id.
    """
    return read_rows(path, media_root=media_root, bad_sample="error")[0]


def read_rows(
    path: str | Path, *, media_root: str | Path | None = None, bad_sample: str = "error"
) -> tuple[list[Row], list[RowError]]:
    """The rows of a data file and the problems skipped on the way (``bad_sample="skip"``: each is
    logged as a warning with file, line and id, and left out; ``"error"``: the first one raises).
    A file with no usable row at all is a RowError either way."""
    if bad_sample not in ("skip", "error"):
        raise ValueError(f"bad_sample={bad_sample!r}: choose 'skip' or 'error'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; check the dataset path in your config")
    root = Path(media_root) if media_root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _read_jsonl(path)
    elif suffix == ".parquet":
        records = ((f"{path} row {i}", r) for i, r in enumerate(_pyarrow_parquet().read_table(path).to_pylist()))
    else:
        raise RowError(f"{path}: unknown data file type {path.suffix!r}. Fix: use a .jsonl or .parquet file")
    rows: list[Row] = []
    skipped: list[RowError] = []
    for where, record in records:
        try:
            if isinstance(record, RowError):  # the line itself did not read (UTF-8, JSON)
                raise record
            rows.append(row_from_dict(record, where=where, media_root=root))
        except RowError as err:
            if bad_sample == "error":
                raise
            skipped.append(err)
            log.warning(
                "skipping %s (%d bad row(s) so far; data.bad_sample=error stops here instead)", err, len(skipped)
            )
    if not rows:
        raise RowError(
            f"{path}: no usable row ({len(skipped)} skipped, see the warnings above). "
            "Fix: correct the rows or point the config at another file"
        )
    if skipped:
        log.warning("%s: skipped %d of %d rows", path, len(skipped), len(skipped) + len(rows))
    return rows, skipped


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, record) per non-blank line; a line that is not UTF-8 or not JSON gives a RowError
    as its record (with the id when one can be read from the line), for the caller's policy."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                row_id = _guess_id(raw.decode("utf-8", errors="replace"))
                yield (
                    where,
                    RowError(
                        f"{where} (id={row_id!r}): not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                        f"column {e.start + 1}). Fix: save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)"
                    ),
                )
                continue
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield (
                    where,
                    RowError(
                        f"{where}: not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno}; "
                        f"id={_guess_id(line)!r}). Fix: write exactly one JSON object per line"
                    ),
                )


def _guess_id(text: str) -> str | None:
    """The row id of a line, read from JSON when it parses, else by pattern; None when absent."""
    try:
        record = json.loads(text)
        value = record.get("id") if isinstance(record, dict) else None
        return None if value is None else str(value)
    except json.JSONDecodeError:
        match = _ID_IN_TEXT.search(text)
        return str(json.loads(match.group(1))) if match else None


def save_rows(rows: Iterable[Row], path: str | Path) -> Path:
    """Write rows as `.jsonl` (one object per line) or `.parquet` (`extra` as a JSON string)."""
    path = Path(path)
    records = [row.to_dict() for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif suffix == ".parquet":
        pa, pq = _pyarrow(), _pyarrow_parquet()
        for record in records:  # one fixed column type however varied `extra` is
            record["extra"] = json.dumps(record["extra"], ensure_ascii=False)
        schema = pa.schema([(name, pa.list_(pa.string()) if name == "options" else pa.string()) for name in FIELDS])
        pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    else:
        raise ValueError(f"cannot save rows to {path}: use a .jsonl or .parquet file name")
    return path


def _pyarrow():
    try:
        import pyarrow
    except ImportError:
        raise ImportError(
            "reading or writing .parquet rows needs pyarrow: pip install 'longrl[parquet]' (or pip install pyarrow)"
        ) from None
    return pyarrow


def _pyarrow_parquet():
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet
