"""Load test: 72 concurrent requests to ``longrl serve`` on 127.0.0.1; every reply arrives, is its own
request's (greedy replies equal the engine's output for that request's own text and max_tokens), and
the server keeps serving. Prints requests/s and p50/p95 latency."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import torch

from longrl.models.adapter import build_prompt
from longrl.rollout import SamplingParams, generate
from serve_helpers import save_tiny, serve_tiny

REQUESTS = 72
TIME_LIMIT_S = 240


def request_body(i: int) -> dict:
    body = {
        "model": "tiny",
        "max_tokens": 4 + i % 13,
        "messages": [
            {"role": "user", "content": f"request {i}: where did the {'red blue green'.split()[i % 3]} square go?"}
        ],
    }
    if i % 4 == 3:
        body.update(n=2, temperature=1.0)  # sampled, no seed: batched with the other sampled requests
    else:
        body.update(temperature=0)
    return body


async def fire(url: str) -> tuple[list, list[float], float]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i):
            t0 = time.perf_counter()
            reply = await client.post("/chat/completions", json=request_body(i))
            return reply, time.perf_counter() - t0

        t0 = time.perf_counter()
        done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(REQUESTS))), TIME_LIMIT_S)
        return [r for r, _ in done], [s for _, s in done], time.perf_counter() - t0


def test_64_plus_concurrent_requests_each_get_their_own_reply(tmp_path):
    thread, model, tokenizer, _ = serve_tiny(save_tiny(tmp_path / "model"), batch_wait_ms=10.0)
    stop = tuple(sorted({tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}))
    with thread:
        replies, latencies, wall = asyncio.run(fire(thread.url))
        health = httpx.get(thread.url.removesuffix("/v1") + "/health").json()
        after = httpx.post(thread.url + "/chat/completions", json=request_body(0), timeout=60)
    assert [r.status_code for r in replies] == [200] * REQUESTS, [r.text for r in replies if r.status_code != 200][:3]
    for i, reply in enumerate(replies):
        body, asked = reply.json(), request_body(i)
        prompt = build_prompt(
            model,
            tokenizer,
            [{"role": "user", "content": [{"type": "text", "text": asked["messages"][0]["content"]}]}],
            None,
        )
        assert body["usage"]["prompt_tokens"] == len(prompt)
        assert len(body["choices"]) == asked.get("n", 1)
        assert all(isinstance(c["message"]["content"], str) for c in body["choices"])
        assert body["usage"]["completion_tokens"] <= asked["max_tokens"] * asked.get("n", 1)
        if asked["temperature"] == 0:
            with torch.no_grad():
                (sample,) = generate(
                    model,
                    [prompt],
                    SamplingParams(greedy=True, max_new_tokens=asked["max_tokens"], stop_token_ids=stop),
                )[0]
            assert body["choices"][0]["message"]["content"] == tokenizer.decode(
                sample.token_ids, skip_special_tokens=True
            )
            assert body["usage"]["completion_tokens"] == len(sample.token_ids)
    assert after.status_code == 200 and health["status"] == "ok"
    assert health["generate_calls"] < REQUESTS / 2  # requests were batched, several per generate call
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"\nload test: {REQUESTS} concurrent requests in {wall:.2f} s = {REQUESTS / wall:.1f} requests/s; "
        f"latency p50 {statistics.median(latencies):.3f} s, p95 {p95:.3f} s; "
        f"{health['generate_calls']} generate calls ({health['prompts_generated'] / health['generate_calls']:.1f} "
        f"prompts per call)"
    )
