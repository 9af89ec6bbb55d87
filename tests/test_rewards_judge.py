"""The judge against a real HTTP server on 127.0.0.1 (stdlib http.server in a thread)."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longrl.rewards import RewardConfig, RewardInput, build_reward
from longrl.rewards.judge import JudgeError, parse_judge_score

KEY = "sk-test-SECRET-0123456789"
KEY_ENV = "LONGRL_TEST_JUDGE_KEY"


class FakeJudge(ThreadingHTTPServer):
    """OpenAI-compatible /v1/chat/completions; `reply(n, body)` -> (status, content or raw bytes, delay)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = lambda n, body: (200, "Score: 8", 0.0)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.auth: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        server: FakeJudge = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(body)
            server.paths.append(self.path)
            server.auth.append(self.headers.get("Authorization", ""))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            n = len(server.requests)
        counted = True
        try:
            status, content, delay = server.reply(n, body)
            time.sleep(delay)
            with server.lock:  # done working: a client may send its next request as soon as it reads the reply
                server.in_flight -= 1
                counted = False
            if isinstance(content, bytes):
                payload = content
            elif status == 200:
                payload = json.dumps(
                    {
                        "id": f"cmpl-{n}",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                        ],
                    }
                ).encode()
            else:
                payload = json.dumps({"error": {"message": content}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            if counted:
                with server.lock:
                    server.in_flight -= 1

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server = FakeJudge()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def judge_model(server, **overrides):
    cfg = dict(
        functions=["judge"],
        judge_base_url=server.base_url,
        judge_model="grader-1",
        judge_api_key_env=KEY_ENV,
        judge_timeout_s=2.0,
        judge_max_retries=2,
        judge_retry_backoff_s=0.01,
        fallback_score=-1.0,
    )
    return build_reward(RewardConfig(**{**cfg, **overrides}))


def samples(count, prefix="q"):
    return [
        RewardInput(
            f"{prefix}{i}", f"<think>t</think><answer>answer {i}</answer>", "the reference", question=f"question {i}?"
        )
        for i in range(count)
    ]


def test_openai_compatible_request_and_score(judge_server):
    [result] = judge_model(judge_server)(samples(1))
    assert result.score == pytest.approx(0.8) and result.error is None
    assert result.components == {"judge": pytest.approx(0.8)}
    assert judge_server.paths == ["/v1/chat/completions"]
    assert judge_server.auth == [f"Bearer {KEY}"]
    body = judge_server.requests[0]
    assert body["model"] == "grader-1" and [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "question 0?" in user and "the reference" in user and "answer 0" in user and "<think>" not in user


def test_timeout_retries_then_falls_back(judge_server, caplog):
    judge_server.reply = lambda n, body: (200, "Score: 9", 0.6)  # slower than the client's timeout
    model = judge_model(judge_server, judge_timeout_s=0.2, judge_max_retries=1)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="longrl.rewards"):
        [result] = model(samples(1, prefix="slow"))
    assert time.monotonic() - start < 1.5
    assert result.score == -1.0 and "timed out" in result.error and "2 attempts" in result.error
    assert len(judge_server.requests) == 2
    assert "slow0" in caplog.text and KEY not in caplog.text


def test_server_error_then_success(judge_server, caplog):
    # the 5xx body echoes the key: it must not reach any log or error
    judge_server.reply = lambda n, body: (503, f"overloaded, key {KEY}", 0.0) if n < 3 else (200, "Score: 10", 0.0)
    with caplog.at_level(logging.DEBUG, logger="longrl.rewards"):
        [result] = judge_model(judge_server)(samples(1))
    assert result.score == pytest.approx(1.0) and result.error is None
    assert len(judge_server.requests) == 3
    assert "HTTP 503" in caplog.text and KEY not in caplog.text

    judge_server.reply = lambda n, body: (500, f"broken, key {KEY}", 0.0)
    with caplog.at_level(logging.DEBUG, logger="longrl.rewards"):
        [result] = judge_model(judge_server)(samples(1, prefix="down"))
    assert result.score == -1.0 and "HTTP 500" in result.error and KEY not in result.error
    assert "***" in result.error and KEY not in caplog.text


def test_client_error_is_not_retried(judge_server):
    judge_server.reply = lambda n, body: (401, "invalid key", 0.0)
    [result] = judge_model(judge_server)(samples(1))
    assert result.score == -1.0 and "HTTP 401" in result.error and len(judge_server.requests) == 1


@pytest.mark.parametrize(
    "reply, message",
    [
        ("I think it is quite good", "no score"),
        ("Score: 15", "outside 0..10"),
        (b"<html>gateway</html>", "not a chat completion"),
    ],
)
def test_malformed_judge_replies_fall_back(judge_server, caplog, reply, message):
    judge_server.reply = lambda n, body: (200, reply, 0.0)
    with caplog.at_level(logging.WARNING, logger="longrl.rewards"):
        [result] = judge_model(judge_server)(samples(1, prefix="odd"))
    assert result.score == -1.0 and message in result.error
    assert "odd0" in caplog.text
    assert len(judge_server.requests) == 1  # a reply that arrived is not retried


def test_concurrency_limit_is_honored(judge_server):
    judge_server.reply = lambda n, body: (200, "Score: 5", 0.1)
    results = judge_model(judge_server, judge_max_concurrency=3)(samples(9))
    assert [r.score for r in results] == [pytest.approx(0.5)] * 9
    assert len(judge_server.requests) == 9
    assert judge_server.max_in_flight == 3


def test_cache_hit_avoids_a_second_call(judge_server, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge_server.reply = lambda n, body: (200, f"Score: {n}", 0.0)  # each call answers differently
    model = judge_model(judge_server, judge_cache_path=str(cache))
    [first] = model(samples(1))
    [again] = model(samples(1))
    assert first.score == again.score == pytest.approx(0.1)
    assert len(judge_server.requests) == 1
    # a new run reads the file cache
    [resumed] = judge_model(judge_server, judge_cache_path=str(cache))(samples(1))
    assert resumed.score == pytest.approx(0.1) and len(judge_server.requests) == 1
    assert KEY not in cache.read_text()
    # a different sample is a new call
    [other] = model(samples(2)[1:])
    assert other.score == pytest.approx(0.2) and len(judge_server.requests) == 2


def test_key_never_in_reprs(judge_server):
    model = judge_model(judge_server)
    assert KEY not in repr(model.functions) and "LONGRL_TEST_JUDGE_KEY (set)" in repr(model.functions)


def test_unreachable_judge_falls_back(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server = FakeJudge()  # bind a free port, then close it: nothing listens there
    url = server.base_url
    server.server_close()
    model = build_reward(
        RewardConfig(
            functions=["judge"],
            judge_base_url=url,
            judge_model="m",
            judge_api_key_env=KEY_ENV,
            judge_max_retries=1,
            judge_retry_backoff_s=0.01,
        )
    )
    [result] = model(samples(1))
    assert result.score == 0.0 and "connection failed" in result.error


def test_missing_judge_settings_fail_at_build():
    with pytest.raises(ValueError, match="judge_base_url"):
        build_reward(RewardConfig(functions=["judge"]))


@pytest.mark.parametrize(
    "text, score",
    [
        ("Score: 7", 0.7),
        ("score: 8/10", 0.8),
        ("**Score:** 9", 0.9),
        ("Reasoning...\nScore: 3", 0.3),
        ("<think>Score: 1</think>Score: 10", 1.0),
        ("7", 0.7),
        ("6/10", 0.6),
        ("Score: 1/1", 1.0),
        ("Correct.", 1.0),
        ("incorrect", 0.0),
        ("The score is 4.5", 0.45),
    ],
)
def test_parse_judge_score(text, score):
    assert parse_judge_score(text) == pytest.approx(score)


@pytest.mark.parametrize("text", ["great job", "Score: 11", "Score: -2", ""])
def test_parse_judge_score_rejects(text):
    with pytest.raises(JudgeError):
        parse_judge_score(text)


def test_image_judge_sends_images_as_image_parts_and_falls_back_like_the_judge(judge_server):
    """longrl.gen's `image_judge`: the prompt as text and the image (or a clip's frames) as PNG image
    parts to the same OpenAI-compatible endpoint; a failed call gets the fallback and is counted."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    import longrl.gen.rewards  # noqa: F401  (registers image_judge)

    model = judge_model(judge_server, functions=["image_judge"], judge_max_retries=0)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :, 0] = 200
    clip = np.stack([image] * 6)
    inputs = [
        RewardInput("img", "", "", question="a red square", row={"image": image}),
        RewardInput("vid", "", "", question="a red clip", row={"frames": clip, "image": clip[3]}),
    ]
    results = model(inputs)
    assert [r.score for r in results] == [pytest.approx(0.8)] * 2 and all(r.error is None for r in results)
    by_prompt = {b["messages"][1]["content"][0]["text"]: b for b in judge_server.requests}  # sent concurrently
    for prompt, frames in (("a red square", 1), ("a red clip", 4)):
        system, user = by_prompt[f"Prompt: {prompt}"]["messages"]
        assert system["role"] == "system" and user["content"][0] == {"type": "text", "text": f"Prompt: {prompt}"}
        parts = user["content"][1:]
        assert len(parts) == frames and all(p["type"] == "image_url" for p in parts)
        url = parts[0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        assert np.array_equal(decoded, image)  # the pixels themselves, losslessly
    judge_server.reply = lambda n, body: (500, "overloaded", 0.0)
    [failed] = model([RewardInput("img2", "", "", question="a blue square", row={"image": image})])  # not cached
    assert failed.score == -1.0 and failed.error is not None
    assert model.pop_metrics()["reward/judge_failures"] == 1
