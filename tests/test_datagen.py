"""``longrl datagen`` against a scripted endpoint: stage counts, failures and retries, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen_fake import FakeEndpoint
from longrl.config_utils import load
from longrl.data.rows import load_rows
from longrl.data.synth import SynthConfig, generate_synth
from longrl.datagen.clips import split_video
from longrl.datagen.config import DatagenConfig, SplitConfig
from longrl.datagen.run import run_datagen
from serve_helpers import split_rows

SECRET = "sk-datagen-SECRET-42"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_synth(SynthConfig(out_dir=str(out), num_train=3, num_test=0, frames=32, fps=4.0))  # 8 s each
    return out / "train.jsonl"


def config(videos, out, url, *extra) -> DatagenConfig:
    return load(
        DatagenConfig,
        None,
        [
            f"videos={videos}",
            f"out_dir={out}",
            f"endpoint.base_url={url}",
            "endpoint.model=fake",
            "endpoint.api_key_env=LONGRL_DATAGEN_KEY",
            "endpoint.backoff_s=0.01",
            "endpoint.timeout_s=0.5",
            "endpoint.concurrency=4",
            "split.clip_seconds=2",
            "progress=false",
            *extra,
        ],
    )


def stage(report, name):
    return next(s for s in report["stages"] if s["stage"] == name)


def store_keys(path: Path) -> list[str]:
    keys = []
    for line in path.read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass
    return keys


def test_split_fixed_and_scene(videos, tmp_path):
    video = load_rows(videos)[0].video
    clips = split_video(video, tmp_path / "fixed", SplitConfig(clip_seconds=3))
    assert [(c["start"], c["end"]) for c in clips] == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]
    assert all(Path(c["path"]).is_file() for c in clips)
    # the synthetic video changes only when an object enters or moves: scene cuts fall on those frames
    scene = split_video(
        video,
        tmp_path / "scene",
        SplitConfig(mode="scene", clip_seconds=100, min_clip_seconds=0.25, scene_threshold=2.0),
    )
    assert 2 <= len(scene) <= 8 and scene[0]["start"] == 0.0 and scene[-1]["end"] == 8.0


def test_stage_counts_failures_and_garbage(videos, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LONGRL_DATAGEN_KEY", SECRET)
    with FakeEndpoint(slow_s=0.8) as fake:
        report = run_datagen(config(videos, tmp_path, fake.url))
    assert fake.auth == {f"Bearer {SECRET}"}
    counts = {s["stage"]: (s["inputs"], s["kept"], s["dropped"], s["failed"]) for s in report["stages"]}
    assert counts == {
        "a_split": (3, 3, {}, 0),
        "b_caption": (12, 12, {}, 0),  # 3 videos x 4 clips of 2 s
        "c_timeline": (3, 3, {}, 0),
        "d_questions": (12, 9, {"reply holds no JSON object": 3}, 0),  # Spatial's prose
        "e_validate": (9, 6, {"reasoning cites a timestamp outside the video's clips": 3}, 0),  # Plot & Narrative
        "f_filter": (6, 3, {"answered correctly without the video": 3}, 0),  # Goal & Purpose
        "g_write": (3, 3, {}, 0),
    }
    retried = sum(s["retries"] for s in report["stages"])
    assert retried > 0 and fake.calls == sum(s["requests"] for s in report["stages"])
    assert stage(report, "b_caption")["prompt_tokens"] > 0
    rows = split_rows(tmp_path / "sft.jsonl") + split_rows(tmp_path / "rl.jsonl")
    assert report["rows"]["sft"] + report["rows"]["rl"] == 3 == len(rows)
    assert {r.category for r in rows} == {"Temporal"} and {r.answer for r in rows} == {"B"}
    assert all(r.extra["pilot_pass_rate"] == 0.5 and r.extra["citations"] == [0.0] for r in rows)
    assert len({r.video for r in rows}) == 3 and all(Path(r.video).is_file() for r in rows)
    assert SECRET not in caplog.text and SECRET not in (tmp_path / "report.json").read_text()


def test_failed_calls_are_left_for_the_next_run(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGRL_DATAGEN_KEY", SECRET)
    with FakeEndpoint(always_fail="from 4.0s to 6.0s") as fake:  # one clip of each video never captions
        report = run_datagen(config(videos, tmp_path, fake.url, "endpoint.max_retries=1"))
    caption, timeline = stage(report, "b_caption"), stage(report, "c_timeline")
    assert (caption["kept"], caption["failed"]) == (9, 3) and (timeline["waiting"], timeline["kept"]) == (3, 0)
    assert report["rows"] == {"sft": 0, "rl": 0}
    with FakeEndpoint() as fake:  # the video directory itself this time, tqdm bars on, parquet rows
        again = run_datagen(
            config(videos.parent / "videos", tmp_path, fake.url, "progress=true", "output.format=parquet")
        )
    caption = stage(again, "b_caption")
    assert (caption["done_before"], caption["kept"], caption["failed"]) == (9, 12, 0)
    assert again["rows"]["sft"] + again["rows"]["rl"] == 3
    rows = split_rows(tmp_path / "sft.parquet") + split_rows(tmp_path / "rl.parquet")
    assert len(rows) == 3 and all(r.category == "Temporal" for r in rows)


def test_a_run_killed_mid_stage_resumes_with_nothing_lost_or_duplicated(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGRL_DATAGEN_KEY", SECRET)
    with FakeEndpoint() as fake:
        whole = run_datagen(config(videos, tmp_path / "whole", fake.url))
    out = tmp_path / "killed"
    with FakeEndpoint(delay_s=0.3) as fake:
        args = [
            f"videos={videos}",
            f"out_dir={out}",
            f"endpoint.base_url={fake.url}",
            "endpoint.model=fake",
            "endpoint.api_key_env=LONGRL_DATAGEN_KEY",
            "endpoint.backoff_s=0.01",
            "endpoint.concurrency=2",
            "split.clip_seconds=2",
            "progress=false",
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "longrl.cli", "datagen", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        captions = out / "b_caption.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if captions.exists() and len(captions.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done = len(captions.read_text().splitlines())
    assert 4 <= done < 12, done  # killed in the middle of stage (b)
    with captions.open("a") as f:
        f.write('{"key": "torn-by-the-kill", "sta')  # a record cut off mid-write
    with FakeEndpoint() as fake:
        resumed = run_datagen(config(videos, out, fake.url))
    assert stage(resumed, "b_caption")["done_before"] == done
    for name in ("a_split", "b_caption", "c_timeline", "d_questions", "e_validate", "f_filter"):
        keys = store_keys(out / f"{name}.jsonl")
        assert len(keys) == len(set(keys)), name  # nothing recorded twice
        assert set(keys) == set(store_keys(tmp_path / "whole" / f"{name}.jsonl")), name  # nothing lost
    for split in ("sft", "rl"):
        assert [r.to_dict() for r in split_rows(out / f"{split}.jsonl")] == [
            r.to_dict() for r in split_rows(tmp_path / "whole" / f"{split}.jsonl")
        ]
    assert resumed["rows"] == whole["rows"]


def test_a_refused_api_key_stops_the_run_with_the_variable_name(videos, tmp_path, monkeypatch):
    from longrl.datagen.client import EndpointAuthError
    from longrl.serve.app import ServerThread, create_app
    from longrl.serve.config import ServeConfig

    monkeypatch.setenv("LONGRL_SERVE_KEY", "sk-right")
    monkeypatch.setenv("LONGRL_DATAGEN_KEY", "sk-wrong-key-value")
    with ServerThread(create_app(None, _NoTokenizer(), ServeConfig(api_key_env="LONGRL_SERVE_KEY"))) as server:
        with pytest.raises(
            EndpointAuthError,
            match=r"refused the API key \(HTTP 401\); set the key in "
            r"\$LONGRL_DATAGEN_KEY",
        ) as error:
            run_datagen(config(videos, tmp_path, server.url))
    assert "sk-wrong-key-value" not in str(error.value)


class _NoTokenizer:
    eos_token_id = 0

    def convert_tokens_to_ids(self, token):
        return 0
