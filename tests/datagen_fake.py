"""A scripted OpenAI-compatible endpoint on 127.0.0.1 for the datagen tests.

Replies are a pure function of the request (so two runs produce the same data), and some first
attempts fail on purpose: HTTP 500, a body that is not JSON, or a reply slower than the client's
timeout. Question replies depend on the category asked for:

    Temporal          a valid question, answer B, citing the first clip's start: kept
    Goal & Purpose    valid, but the text-only pass answers it: dropped by the filter
    Plot & Narrative  cites [999.0s], outside every clip: dropped by validation
    Spatial           prose instead of JSON: dropped as unreadable
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEndpoint(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, delay_s: float = 0.0, slow_s: float = 0.0, always_fail: str = ""):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s, self.slow_s = delay_s, slow_s
        self.always_fail = always_fail  # requests whose text holds this get HTTP 503 every time
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.calls = 0
        self.auth: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def _text(body: dict) -> str:
    out = []
    for message in body["messages"]:
        content = message["content"]
        out.append(content if isinstance(content, str) else " ".join(p.get("text", "") for p in content))
    return "\n".join(out)


def _question(category: str, first: float) -> str:
    cite = 999.0 if category == "Plot & Narrative" else first
    return json.dumps(
        {
            "question": f"In the {category} sense, what happens around {first:.1f}s?",
            "options": ["the red object leaves", "the blue object enters", "nothing moves", "it rains"],
            "answer": "B",
            "reasoning": f"At [{cite:.1f}s] the blue object enters, so B.",
        }
    )


def reply_texts(body: dict) -> list[str]:
    text = _text(body)
    n = body.get("n", 1)
    if "timestamped timeline" in text:
        category = re.search(r"of the category (.+?) \(", text).group(1)
        if category == "Spatial":
            return ["I would ask where the objects are, but I cannot write JSON today."]
        first = float(re.search(r"\[(\d+\.\d)s - ", text).group(1))
        return [f"<think>plan</think>Here it is: {_question(category, first)}"]
    if "Answer with the letter of the best option only" in text:
        return ["B" if "Goal & Purpose" in text else "D"]
    if "Video timeline:" in text:
        return [
            "<think>x</think><answer>B</answer>" if i % 2 == 0 else "<think>y</think><answer>C</answer>"
            for i in range(n)
        ]
    clip = re.search(r"from (\d+\.\d)s to (\d+\.\d)s", text)
    if clip:
        return [f"clip {clip.group(1)}-{clip.group(2)}: a blue square moves to the top left"]
    return ["?"]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server: FakeEndpoint = self.server
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        digest = hashlib.sha256(raw).hexdigest()
        with server.lock:
            first = digest not in server.seen
            server.seen.add(digest)
            server.calls += 1
            server.auth.add(self.headers.get("Authorization", ""))
        time.sleep(server.delay_s)
        bucket = int(digest[:8], 16) % 6
        if server.always_fail and server.always_fail in _text(body):
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if first and bucket == 0:
            return self._send(500, b'{"error": {"message": "try again"}}')
        if first and bucket == 1:
            return self._send(200, b"<html>gateway hiccup</html>")
        if first and bucket == 2 and server.slow_s:
            time.sleep(server.slow_s)
        texts = reply_texts(body)
        payload = {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": len(_text(body)) // 4, "completion_tokens": sum(len(t) // 4 for t in texts)},
        }
        self._send(200, json.dumps(payload).encode())

    def _send(self, status: int, payload: bytes):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left
