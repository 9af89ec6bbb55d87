"""``longrl datagen``: the LongVideo-Reason-style pipeline, stage by stage, each resumable.

    (a) split      videos -> clips (PyAV)                                  clips/, a_split.jsonl
    (b) caption    each clip's frames -> a caption (the endpoint)          b_caption.jsonl
    (c) timeline   a video's captions -> a timestamped timeline            c_timeline.jsonl
    (d) questions  a timeline -> a question per category (the endpoint)    d_questions.jsonl
    (e) validate   schema, answer among options, cited timestamps exist    e_validate.jsonl
    (f) filter     drop what is answered without the video; keep a pilot pass-rate band   f_filter.jsonl
    (g) write      rows in longrl's schema, split CoT-SFT / RL             sft.jsonl, rl.jsonl, report.json

Every item's record is keyed by a hash of its content and the settings that shape it, so a rerun
(after a kill, or with more videos) does only what is missing. A reply that cannot be used is
recorded as dropped with its reason; a call that failed after its retries is not recorded and is
retried by the next run (the report counts it as failed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from longrl.data.rows import Row, load_rows, save_rows
from longrl.data.video import VideoError, decode_video
from longrl.datagen import prompts
from longrl.datagen.client import ChatClient, EndpointError
from longrl.datagen.clips import split_video
from longrl.datagen.config import DatagenConfig
from longrl.datagen.store import StageStore, content_key, file_hash

log = logging.getLogger("longrl.datagen")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi"}
PROMPT_VERSION = 1  # bump when a prompt's text changes, so stored replies are not reused


@dataclasses.dataclass
class StageReport:
    stage: str
    inputs: int = 0
    kept: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    failed: int = 0  # endpoint calls that failed after retries: not recorded, redone by the next run
    waiting: int = 0  # items whose inputs are not all done yet (an earlier stage failed on them)
    done_before: int = 0  # found done from an earlier run
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["dropped"] = dict(sorted(self.dropped.items()))
        out["seconds"] = round(self.seconds, 2)
        return out


def list_videos(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".parquet"):
        videos = sorted({Path(r.video) for r in load_rows(path) if r.video})
    else:
        raise FileNotFoundError(
            f"datagen videos={spec!r} is neither a directory of videos nor a .jsonl/.parquet "
            "of rows with a video column"
        )
    if not videos:
        raise FileNotFoundError(f"datagen videos={spec!r} holds no video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return videos


class Pipeline:
    def __init__(self, cfg: DatagenConfig):
        if cfg.caption.frame_mode not in ("images", "mosaic"):
            raise ValueError(f"caption.frame_mode={cfg.caption.frame_mode!r}: use images or mosaic")
        if cfg.filter.pilot_input not in ("timeline", "video"):
            raise ValueError(f"filter.pilot_input={cfg.filter.pilot_input!r}: use timeline or video")
        if cfg.output.format not in ("jsonl", "parquet"):
            raise ValueError(f"output.format={cfg.output.format!r}: use jsonl or parquet")
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.writer = ChatClient(cfg.endpoint)
        f = cfg.filter
        self.pilot = (
            ChatClient(cfg.endpoint, base_url=f.pilot_base_url, model=f.pilot_model)
            if (f.pilot_base_url or f.pilot_model)
            else self.writer
        )
        self.reports: list[StageReport] = []

    # -- the stage runner ------------------------------------------------------------------------

    def stage(
        self,
        name: str,
        items: Sequence[tuple[str, Any]],
        work: Callable[[Any], dict],
        *,
        remote: bool,
        waiting: int = 0,
    ) -> StageStore:
        """Run ``work`` on every item not yet in the stage's store; record kept / dropped."""
        store = StageStore(self.out / f"{name}.jsonl")
        report = StageReport(name, inputs=len(items) + waiting, waiting=waiting)
        clients = {id(c): c for c in (self.writer, self.pilot)}.values()
        before = [(c.requests, c.retries, c.prompt_tokens, c.completion_tokens) for c in clients]
        todo = [(key, item) for key, item in items if key not in store]
        report.done_before = len(items) - len(todo)
        t0 = time.perf_counter()
        bar = None
        if self.cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), initial=report.done_before, desc=name, unit="item", dynamic_ncols=True)
        workers = self.cfg.endpoint.concurrency if remote else 1
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(work, item): key for key, item in todo}
            for future in as_completed(futures):
                key = futures[future]
                try:
                    store.add(key, "kept", future.result())
                except prompts.Unusable as error:
                    store.add(key, "dropped", {"reply": error.reply} if error.reply else None, reason=str(error))
                except VideoError as error:
                    store.add(key, "dropped", reason=f"bad video: {error.cause}")
                except EndpointError as error:
                    report.failed += 1
                    log.warning("%s: %s (left for the next run)", name, error)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        tokens_in=sum(c.prompt_tokens for c in clients),
                        tokens_out=sum(c.completion_tokens for c in clients),
                        failed=report.failed,
                    )
        if bar is not None:
            bar.close()
        report.seconds = time.perf_counter() - t0
        for c, (req, ret, pt, ct) in zip(clients, before):
            report.requests += c.requests - req
            report.retries += c.retries - ret
            report.prompt_tokens += c.prompt_tokens - pt
            report.completion_tokens += c.completion_tokens - ct
        for key, _ in items:
            record = store.records.get(key)
            if record is None:
                continue
            if record["status"] == "kept":
                report.kept += 1
            else:
                report.dropped[record["reason"]] += 1
        self.reports.append(report)
        return store

    # -- (a) .. (g) ------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        videos = list_videos(cfg.videos)
        split_cfg = dataclasses.asdict(cfg.split)

        items = [(content_key("split", file_hash(v), split_cfg), v) for v in videos]
        split = self.stage("a_split", [(k, (k, v)) for k, v in items], lambda kv: self._split(*kv), remote=False)
        videos_kept = [(k, video) for k, _ in items if (video := split.kept(k))]

        cap_cfg = dataclasses.asdict(cfg.caption)
        clip_items = [
            (content_key("caption", vk, clip["index"], self.writer.model, cap_cfg, PROMPT_VERSION), clip)
            for vk, video in videos_kept
            for clip in video["clips"]
        ]
        captions = self.stage("b_caption", clip_items, self._caption, remote=True)

        timeline_items, waiting = [], 0
        for vk, video in videos_kept:
            keys = [
                content_key("caption", vk, c["index"], self.writer.model, cap_cfg, PROMPT_VERSION)
                for c in video["clips"]
            ]
            if not all(k in captions for k in keys):
                waiting += 1
                continue
            clips = [
                {**c, "caption": caption["caption"]}
                for c, k in zip(video["clips"], keys)
                if (caption := captions.kept(k))
            ]
            content = [(c["index"], c["start"], c["end"], c["caption"]) for c in clips]  # not the clip paths
            timeline_items.append((content_key("timeline", vk, content), {"video": video, "clips": clips}))
        timelines = self.stage("c_timeline", timeline_items, self._timeline, remote=False, waiting=waiting)

        q = cfg.questions
        q_cfg = dataclasses.asdict(q)
        question_items = [
            (
                content_key("question", tk, cat, j, self.writer.model, q_cfg, PROMPT_VERSION),
                {**timeline, "category": cat, "variant": j},
            )
            for tk, _ in timeline_items
            if (timeline := timelines.kept(tk))
            for cat in q.categories
            for j in range(q.per_category)
        ]
        questions = self.stage("d_questions", question_items, self._question, remote=True)

        valid_items = [
            (content_key("validate", qk, question["raw"]), question)
            for qk, _ in question_items
            if (question := questions.kept(qk))
        ]
        valid = self.stage("e_validate", valid_items, self._validate, remote=False)

        f_cfg = dataclasses.asdict(cfg.filter)
        filter_items = [
            (
                content_key("filter", vk, f_cfg, self.writer.model, self.pilot.model),  # vk: content-derived
                checked,
            )
            for vk, _ in valid_items
            if (checked := valid.kept(vk))
        ]
        filtered = self.stage("f_filter", filter_items, self._filter, remote=True)

        rows = [self._row(fk, kept) for fk, _ in filter_items if (kept := filtered.kept(fk))]
        return self._write(rows)

    def _split(self, key: str, video: Path) -> dict:
        clips = split_video(video, self.out / "clips" / key[:16], self.cfg.split)
        return {"video": str(video.resolve()), "duration": clips[-1]["end"], "clips": clips}

    def _caption(self, clip: dict) -> dict:
        frames = decode_video(clip["path"], num_frames=self.cfg.caption.frames_per_clip).frames
        messages = prompts.caption_messages(frames, clip["start"], clip["end"], self.cfg.caption.frame_mode)
        reply = self.writer.complete(
            messages, max_tokens=self.cfg.caption.max_tokens, temperature=self.cfg.caption.temperature
        )
        return {"caption": prompts.read_caption(reply.texts[0])}

    def _timeline(self, item: dict) -> dict:
        if not item["clips"]:
            raise prompts.Unusable("no clip was captioned")
        video = item["video"]
        return {
            "video": video["video"],
            "duration": video["duration"],
            "clips": item["clips"],
            "timeline": prompts.timeline_text(item["clips"]),
        }

    def _question(self, item: dict) -> dict:
        q = self.cfg.questions
        messages = prompts.question_messages(
            item["timeline"], item["duration"], item["category"], item["variant"], q.num_options
        )
        reply = self.writer.complete(messages, max_tokens=q.max_tokens, temperature=q.temperature)
        return {
            "video": item["video"],
            "category": item["category"],
            "clips": item["clips"],
            "timeline": item["timeline"],
            "raw": prompts.read_question(reply.texts[0]),
        }

    def _validate(self, item: dict) -> dict:
        checked = prompts.validate_question(item["raw"], item["clips"], self.cfg.questions.num_options)
        return {**checked, "video": item["video"], "category": item["category"], "timeline": item["timeline"]}

    def _filter(self, q: dict) -> dict:
        f = self.cfg.filter
        if f.text_only:
            reply = self.writer.complete(prompts.text_only_messages(q), max_tokens=16, temperature=0.0)
            if prompts.extract_choice(reply.texts[0], q["options"]) == q["answer"]:
                raise prompts.Unusable("answered correctly without the video")
        rate = None
        if f.pilot_samples > 0:
            video = q["video"] if f.pilot_input == "video" else None
            messages = prompts.pilot_messages(q, q["timeline"], video, f.pilot_num_frames)
            reply = self.pilot.complete(messages, max_tokens=512, temperature=1.0, n=f.pilot_samples)
            rate = sum(prompts.chosen_letter(t, q["options"]) == q["answer"] for t in reply.texts) / len(reply.texts)
            if rate < f.pass_rate_min:
                raise prompts.Unusable(f"too hard for the pilot (pass rate < {f.pass_rate_min})")
            if rate > f.pass_rate_max:
                raise prompts.Unusable(f"too easy for the pilot (pass rate > {f.pass_rate_max})")
        return {**q, "pass_rate": rate}

    def _row(self, key: str, q: dict) -> Row:
        extra = {
            "source": "longrl datagen",
            "citations": q["citations"],
            "pilot_pass_rate": q["pass_rate"],
            "split": "sft" if int(key[:8], 16) / 2**32 < self.cfg.output.sft_fraction else "rl",
        }
        return Row(
            id=f"dg-{key[:16]}",
            video=q["video"],
            question=q["question"],
            options=q["options"],
            answer=q["answer"],
            reasoning=q["reasoning"],
            category=q["category"],
            extra=extra,
        )

    def _write(self, rows: list[Row]) -> dict:
        suffix = "." + self.cfg.output.format
        paths = {}
        for split in ("sft", "rl"):
            part = [r for r in rows if r.extra["split"] == split]
            paths[split] = str(save_rows(part, self.out / f"{split}{suffix}"))
            if part:  # what was written reads back in longrl's schema (an empty data file is refused by design)
                load_rows(paths[split])
        write = StageReport("g_write", inputs=len(rows), kept=len(rows))
        self.reports.append(write)
        report = {
            "stages": [r.to_dict() for r in self.reports],
            "rows": {s: sum(r.extra["split"] == s for r in rows) for s in ("sft", "rl")},
            "files": paths,
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (self.out / "report.md").write_text(report_table(report))
        return report


def report_table(report: dict) -> str:
    lines = [
        "| stage | in | kept | dropped (why) | failed | requests (retries) | tokens in / out | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in report["stages"]:
        why = "; ".join(f"{n} {reason}" for reason, n in s["dropped"].items()) or "0"
        lines.append(
            f"| {s['stage']} | {s['inputs']} | {s['kept']} | {why} | {s['failed']} | "
            f"{s['requests']} ({s['retries']}) | {s['prompt_tokens']} / {s['completion_tokens']} | "
            f"{s['seconds']} |"
        )
    lines.append(f"\nrows: {report['rows']['sft']} CoT-SFT, {report['rows']['rl']} RL")
    return "\n".join(lines) + "\n"


def run_datagen(cfg: DatagenConfig) -> dict:
    return Pipeline(cfg).run()
