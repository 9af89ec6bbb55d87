"""``longrl serve`` on a tiny saved model: replies equal the rollout engine's, errors are OpenAI-shaped 4xx."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
import torch

from longrl.data.image import decode_image
from longrl.data.video import write_video
from longrl.models.adapter import build_prompt
from longrl.rollout import SamplingParams, generate
from serve_helpers import save_tiny, serve_tiny


@pytest.fixture(scope="module")
def server(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("serve")
    monkeypatch_module.setenv("LONGRL_TEST_KEY", "sk-test-secret-123")
    thread, model, tokenizer, cfg = serve_tiny(
        save_tiny(root / "model"), media_root=str(root), api_key_env="LONGRL_TEST_KEY", max_context_tokens=400, max_n=8
    )
    frames = np.random.default_rng(0).integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
    write_video(root / "clip.mp4", frames, fps=4.0)
    with thread:
        client = httpx.Client(base_url=thread.url, timeout=60, headers={"Authorization": "Bearer sk-test-secret-123"})
        yield client, model, tokenizer, root
        client.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def chat(client, content, **kw):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}
    return client.post("/chat/completions", json=body)


def direct(model, tokenizer, content, params: SamplingParams):
    """The engine's own samples for the same message (what the server must return)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": content}]}]
    prompt = build_prompt(model, tokenizer, messages, None)
    stop = tuple(sorted({tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}))
    with torch.no_grad():
        samples = generate(model, [prompt], SamplingParams(**{**params.__dict__, "stop_token_ids": stop}))[0]
    return prompt, samples


def test_greedy_reply_and_logprobs_equal_the_engine(server):
    client, model, tokenizer, _ = server
    reply = chat(client, "where is the red square?", temperature=0, max_tokens=12, logprobs=True)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    prompt, (sample,) = direct(
        model, tokenizer, "where is the red square?", SamplingParams(greedy=True, max_new_tokens=12)
    )
    (choice,) = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": tokenizer.decode(sample.token_ids, skip_special_tokens=True),
    }
    assert choice["finish_reason"] == sample.finish_reason
    assert [e["logprob"] for e in choice["logprobs"]["content"]] == pytest.approx(sample.logprobs, abs=1e-5)
    assert body["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(sample.token_ids),
        "total_tokens": len(prompt) + len(sample.token_ids),
    }
    assert body["object"] == "chat.completion" and body["model"] == "tiny"


def test_seeded_n_samples_share_a_prefix_and_reproduce(server):
    client, model, tokenizer, _ = server
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_tokens=10, seed=1234)
    first, again = chat(client, "which moved first?", **kw).json(), chat(client, "which moved first?", **kw).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    _, samples = direct(
        model,
        tokenizer,
        "which moved first?",
        SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=1234),
    )
    assert texts == [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
    assert len(set(texts)) == 3  # independent samples over the one prefix
    other = chat(client, "which moved first?", **{**kw, "seed": 99}).json()
    assert [c["message"]["content"] for c in other["choices"]] != texts


def test_max_tokens_stop_strings_and_streaming(server):
    client, model, tokenizer, _ = server
    full = chat(client, "the blue circle", temperature=0, max_tokens=16).json()["choices"][0]["message"]["content"]
    short = chat(client, "the blue circle", temperature=0, max_tokens=5).json()
    assert short["usage"]["completion_tokens"] == 5 and short["choices"][0]["finish_reason"] == "length"
    assert full.startswith(short["choices"][0]["message"]["content"])
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = chat(client, "the blue circle", temperature=0, max_tokens=16, stop=[stop]).json()["choices"][0]
    assert cut["message"]["content"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"

    streamed = chat(
        client, "the blue circle", temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == full
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_video_and_image_parts(server):
    client, model, tokenizer, root = server
    text = chat(client, [{"type": "text", "text": "what happens?"}], temperature=0, max_tokens=4).json()
    video = chat(
        client,
        [{"type": "video", "video": "clip.mp4", "num_frames": 4}, {"type": "text", "text": "what happens?"}],
        temperature=0,
        max_tokens=4,
    )
    assert video.status_code == 200, video.text
    # 4 frames of 56 px: 2 temporal patches x (4 x 4 patches / 2 x 2 merge) = 8 video tokens + 2 vision tags
    assert video.json()["usage"]["prompt_tokens"] == text["usage"]["prompt_tokens"] + 8 + 2
    png = _png_bytes()
    image = chat(
        client,
        [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
            {"type": "text", "text": "what color?"},
        ],
        temperature=0,
        max_tokens=4,
    )
    assert image.status_code == 200, image.text
    assert (decode_image(png) == 200).all() and decode_image(png).shape == (56, 56, 3)
    # served as an image, not a one-frame video: 4 x 4 patches / 2 x 2 merge = 4 image tokens + 2 tags
    plain = chat(client, [{"type": "text", "text": "what color?"}], temperature=0, max_tokens=4).json()
    assert image.json()["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 4 + 2


def _png_bytes() -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width = stream.height = 56
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.full((56, 56, 3), 200, dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


BAD = [
    ({"messages": []}, 400, "messages", "at least 1 item"),
    ({"temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ({"n": 9}, 400, "n", "above this server's limit of 8"),
    ({"model": "gpt-9"}, 404, "model", "does not exist"),
    ({"tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ({"top_logprobs": 3}, 400, "top_logprobs", "not supported"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "Input should be"),
    (
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        400,
        "messages[0].content[0]",
        "unknown content part type 'audio'",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video", "video": "clip.mp4"}, {"type": "video", "video": "clip.mp4"}],
                }
            ]
        },
        400,
        "messages[0].content[1]",
        "at most one image or video",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "/etc/passwd"}]}]},
        400,
        "messages[0].content[0]",
        "outside the server's media root",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "missing.mp4"}]}]},
        400,
        "messages[0].content[0]",
        "does not exist",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "model/config.json"}]}]},
        400,
        "messages[0].content[0]",
        "cannot be opened as a video",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}
            ]
        },
        400,
        "messages[0].content[0]",
        "not valid base64",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}
            ]
        },
        400,
        "messages[0].content[0]",
        "not fetched",
    ),
    (
        {"messages": [{"role": "user", "content": "word " * 300}]},
        400,
        "messages",
        "more than this server's context of 400 tokens",
    ),
    ({"max_tokens": 390}, 400, "messages", "max_tokens=390"),
]


@pytest.mark.parametrize("patch,status,param,text", BAD, ids=[b[2] + ":" + b[3][:20] for b in BAD])
def test_bad_requests_get_openai_shaped_errors(server, patch, status, param, text):
    client = server[0]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **patch}
    reply = client.post("/chat/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and text in error["message"], error
    assert client.get("/models").status_code == 200  # still serving


def test_context_error_names_the_size_auth_and_non_json(server):
    client = server[0]
    error = chat(client, "word " * 300).json()["error"]
    assert error["code"] == "context_length_exceeded"
    size = re.match(
        r"this request is (\d+) prompt tokens, more than this server's context of 400 tokens", error["message"]
    )
    assert size and int(size.group(1)) > 400, error["message"]
    assert (
        client.post("/chat/completions", content=b"{not json")
        .json()["error"]["message"]
        .startswith("the request body is not valid JSON")
    )
    assert client.post("/chat/completions", content=b"[1, 2]").status_code == 400
    base = str(client.base_url).rstrip("/")
    anonymous = httpx.post(base + "/chat/completions", json={"model": "tiny", "messages": []})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(base + "/models", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and "sk-test-secret-123" not in wrong.text
    missing = client.get("/completions")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    health = httpx.get(base.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_longrl_serve_command_starts_answers_and_stops(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    model_dir = save_tiny(tmp_path / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "OMP_NUM_THREADS": "1",
        "SERVE_TEST_KEY": "sk-cli-secret",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "longrl.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--api-key-env",
            "SERVE_TEST_KEY",
            "--served-model-name",
            "cli-tiny",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        reply = httpx.post(
            base + "/v1/chat/completions",
            headers={"Authorization": "Bearer sk-cli-secret"},
            timeout=60,
            json={"model": "cli-tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    assert (
        "sk-cli-secret" not in output and "SERVE_TEST_KEY" in output
    )  # the variable's name is logged, never its value
