"""LongVideo-Reason-eval (Chen et al., "Scaling RL to Long Videos", arXiv:2507.07966): its files,
the converter to longrl rows, and the official strict scorer.

Expected layout of ``DIR`` (as published: annotations ``LongVideo-Reason/longvideo-reason``, split
``test``, 1,000 rows; videos ``LongVideo-Reason/longvideo_eval_videos``, ten tar.gz shards)::

    DIR/test.jsonl                  # the annotations (any *.jsonl / *.json / *.parquet in DIR is read)
    DIR/longvila_videos/<stem>.mp4  # the documented layout (.mp4, .webm and .mkv files) ...
    DIR/longvideo_eval_subset3/...  # ... or the shards' flat folders: videos are found by file name

One annotation::

    {"problem_id": 0, "data_type": "video", "problem_type": "goal",
     "problem": "What is the primary intention behind ...?\\nA. ...\\nB. ...\\nC. ...\\nD. ...",
     "reasoning": "The sequence begins by ...", "videos": "longvila_videos/I_Q3ajyOrcI.mp4",
     "answer": "<answer>B</answer>"}

It differs from longrl's rows in that the options are lines of ``problem``, the answer is wrapped in
``<answer>`` tags, and the category is ``problem_type`` (temporal, goal, plot, spatial);
:func:`convert` maps it. A few published rows have no option lines (their question cannot be
answered as multiple choice): they stay in the denominator, as the official script scores all rows,
and count as wrong (``unscorable`` in the report). So does a row whose video is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from longrl.data.rows import Row, RowError, row_from_dict

CATEGORY_NAMES = {"temporal": "Temporal", "goal": "Goal & Purpose", "plot": "Plot & Narrative", "spatial": "Spatial"}
TABLE_ORDER = ("Temporal", "Goal & Purpose", "Plot & Narrative", "Spatial")  # the paper's column order
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi"}
_OPTION = re.compile(r"^\s*\(?([A-Z])[.)]\s*(.+?)\s*$")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def is_longvideo_reason(record: dict) -> bool:
    return isinstance(record, dict) and "problem" in record and "videos" in record


def annotation_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark path {path} does not exist; pass the LongVideo-Reason-eval directory "
            "(test.jsonl + longvila_videos/) or an annotation file"
        )
    for name in ("test.jsonl", "test.json", "test.parquet"):
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected test.jsonl (or one .jsonl/.json/.parquet annotation file), "
            f"found {[p.name for p in found] or 'none'}"
        )
    return found[0]


def read_records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        from longrl.data.rows import _pyarrow_parquet

        return _pyarrow_parquet().read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else list(data.values())
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RowError(
                    f"{path} line {number}: not valid JSON ({error.msg}). Fix: one object per line"
                ) from None
    return records


def split_problem(problem: str) -> tuple[str, list[str]]:
    """ "Question?\\nA. x\\nB. y" -> ("Question?", ["x", "y"]); options are the lines lettered A, B, ... in order."""
    lines = [line for line in problem.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if (m := _OPTION.match(line)) and m.group(1) == "A"), len(lines))
    options: list[str] = []
    for line in lines[first:]:
        m = _OPTION.match(line)
        if m and m.group(1) == chr(ord("A") + len(options)):
            options.append(m.group(2))
        elif options:  # a wrapped option line continues the last option
            options[-1] = f"{options[-1]} {line.strip()}"
    return "\n".join(lines[:first]).strip(), options


def gold_letter(answer: str) -> str:
    match = _ANSWER.search(answer)
    return (match.group(1) if match else answer).strip()


class VideoIndex:
    """Finds a row's video under DIR: its own relative path, else any file of the same name."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, Path] | None = None

    def find(self, relative: str) -> Path | None:
        direct = self.root / relative
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {p.name: p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES}
        return self._by_name.get(Path(relative).name)


def convert(records: list[dict], video_root: Path, where: str) -> tuple[list[Row], list[dict]]:
    """LongVideo-Reason records -> (longrl rows, unscorable items ``{"id", "category", "reason"}``)."""
    videos = VideoIndex(video_root)
    rows, unscorable = [], []
    for number, record in enumerate(records, 1):
        if not is_longvideo_reason(record):
            raise RowError(
                f"{where} record {number}: has no 'problem'/'videos' (keys: {sorted(record)[:8]}). "
                "Fix: pass LongVideo-Reason-eval annotations or rows in longrl's schema"
            )
        item_id = str(record.get("problem_id", number - 1))
        category = CATEGORY_NAMES.get(str(record.get("problem_type", "")).lower(), str(record.get("problem_type", "")))
        question, options = split_problem(str(record["problem"]))
        video = videos.find(str(record["videos"]))
        reason = "no option lines in the problem" if len(options) < 2 else "video not found" if video is None else ""
        if reason:
            unscorable.append({"id": item_id, "category": category, "reason": reason, "video": record["videos"]})
            continue
        rows.append(
            row_from_dict(
                {
                    "id": item_id,
                    "video": str(video),
                    "question": question,
                    "options": options,
                    "answer": gold_letter(str(record["answer"])),
                    "category": category,
                    "reasoning": record.get("reasoning") or "",
                },
                where=f"{where} record {number}",
            )
        )
    return rows, unscorable


def strict_choice(response: str) -> str:
    """The official comparison's side of the response: the first ``<answer>`` span, stripped (the
    whole response when it has none). Correct only if it equals the gold letter exactly."""
    match = _ANSWER.search(response)
    return (match.group(1) if match else response).strip()
