"""``longrl datagen`` end to end against ``longrl serve``: synthetic videos, a tiny served model, every
stage over real HTTP (captions from mosaic images, the pilot from a video part). The tiny model is
taught one well-formed question reply so that rows come out the far end; counts are printed."""

from __future__ import annotations

import json

import httpx
import numpy as np

from longrl.config_utils import load
from longrl.data.synth import SynthConfig, generate_synth
from longrl.datagen import prompts
from longrl.datagen.config import CATEGORIES, DatagenConfig
from longrl.datagen.run import report_table, run_datagen
from longrl.models.adapter import load_model, save_pretrained
from longrl.models.config import ModelConfig
from serve_helpers import serve_tiny, split_rows, teach

QUESTION = json.dumps(
    {
        "question": "Which object enters first?",
        "options": ["red", "blue", "green", "yellow"],
        "answer": "B",
        "reasoning": "At [0.0s] the blue square is the first to enter.",
    }
)


def teach_question_writer(out_dir):
    """Teach a tiny model to reply QUESTION to the question, text-only and pilot prompts, whatever the
    captions in them say (they are the untaught captioner's noise): varied timelines of random tokens."""
    q = json.loads(QUESTION)
    model, tokenizer = load_model(ModelConfig(dtype="float32"), tokenizer_texts=[QUESTION] * 8, seed=0)
    rng = np.random.default_rng(0)

    def noise_timeline() -> str:
        noise = [tokenizer.decode(rng.integers(0, len(tokenizer) - 16, 8).tolist()) for _ in range(4)]
        return prompts.timeline_text(
            [
                {"start": t, "end": t + 2.0, "caption": prompts.read_caption(c or "x")}
                for t, c in zip((0.0, 2.0, 4.0, 6.0), noise)
            ]
        )

    asks = [prompts.question_messages(noise_timeline(), 8.0, c, 0, 4) for c in CATEGORIES * 3]
    asks += [prompts.text_only_messages(q), prompts.pilot_messages(q, noise_timeline(), None, 4)]
    assert teach(model, tokenizer, [(m, QUESTION) for m in asks], steps=140) < 0.05
    save_pretrained(model, tokenizer, out_dir)


def test_datagen_against_longrl_serve(tmp_path):
    generate_synth(SynthConfig(out_dir=str(tmp_path / "synth"), num_train=2, num_test=0, frames=32, fps=4.0))
    teach_question_writer(tmp_path / "writer")
    thread, *_ = serve_tiny(tmp_path / "writer", media_root=str(tmp_path))
    with thread:
        cfg = load(
            DatagenConfig,
            None,
            [
                f"videos={tmp_path / 'synth' / 'train.jsonl'}",
                f"out_dir={tmp_path / 'out'}",
                f"endpoint.base_url={thread.url}",
                "endpoint.model=tiny",
                "endpoint.api_key_env=",
                "split.clip_seconds=2",
                "caption.frame_mode=mosaic",
                "caption.temperature=0",
                "caption.max_tokens=8",
                "questions.temperature=0",
                "questions.max_tokens=96",
                "filter.pilot_input=video",
                "filter.pilot_num_frames=8",
                "filter.pilot_samples=2",
                "filter.pass_rate_max=1.0",
                "progress=false",
            ],
        )
        report = run_datagen(cfg)
        health = httpx.get(thread.url.removesuffix("/v1") + "/health").json()
    print("\n" + report_table(report))
    stages = {s["stage"]: s for s in report["stages"]}
    assert (stages["a_split"]["kept"], stages["b_caption"]["inputs"], stages["c_timeline"]["kept"]) == (2, 8, 2)
    assert stages["d_questions"]["inputs"] == 2 * len(CATEGORIES)
    for before, after in [("d_questions", "e_validate"), ("e_validate", "f_filter"), ("f_filter", "g_write")]:
        assert stages[after]["inputs"] == stages[before]["kept"]  # each stage reads the last one's kept items
    assert all(s["failed"] == 0 for s in report["stages"])
    remote = sum(stages[s]["requests"] for s in ("b_caption", "d_questions", "f_filter"))
    assert remote == 8 + 8 + 2 * stages["e_validate"]["kept"]  # the text-only pass and the pilot, per question
    assert health["prompts_generated"] == remote
    rows = split_rows(tmp_path / "out" / "sft.jsonl") + split_rows(tmp_path / "out" / "rl.jsonl")
    assert len(rows) == stages["f_filter"]["kept"] >= 1
    assert all(r.answer == "B" and r.options == ["red", "blue", "green", "yellow"] for r in rows)
    assert {r.category for r in rows} <= set(CATEGORIES)
    assert np.isclose(sum(r.extra["pilot_pass_rate"] is not None for r in rows), len(rows))
