"""A chat-completions client for the data pipeline: timeouts, retries with backoff, token counts.

Standard library only, like the judge's client (``longrl.rewards.judge``). A call returns the
reply texts and usage; transient failures (timeouts, connection errors, HTTP 429 / 5xx, a body
that is not a chat completion) are retried with exponential backoff and then raise
``EndpointError``, which the pipeline counts and leaves for the next run. The API key is read from
the environment once and only ever sent in the Authorization header; errors are redacted.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from longrl.datagen.config import EndpointConfig


class EndpointError(RuntimeError):
    """A call that failed after its retries, or that the endpoint refused (HTTP 4xx)."""


class EndpointAuthError(ValueError):
    """HTTP 401/403: every later call would fail the same way, so the run stops with this message."""


class _Transient(Exception):
    pass


@dataclass
class Reply:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int


class ChatClient:
    def __init__(self, cfg: EndpointConfig, *, base_url: str = "", model: str = ""):
        base = (base_url or cfg.base_url).rstrip("/")
        self.model = model or cfg.model
        if not base or not self.model:
            raise ValueError("datagen needs endpoint.base_url (e.g. http://127.0.0.1:8000/v1) and endpoint.model")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.cfg = cfg
        self._key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self._lock = threading.Lock()
        self.requests = self.retries = self.prompt_tokens = self.completion_tokens = 0

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.model!r}, key from ${self.cfg.api_key_env})"

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, n: int = 1, seed: int | None = None
    ) -> Reply:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "n": n}
        if seed is not None:
            body["seed"] = seed
        data = json.dumps(body).encode()
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self._post(data)
            except _Transient as error:
                last = str(error)
                continue
            with self._lock:
                self.prompt_tokens += reply.prompt_tokens
                self.completion_tokens += reply.completion_tokens
            return reply
        raise EndpointError(self._redact(f"{self.url} failed after {self.cfg.max_retries + 1} attempts: {last}"))

    def _post(self, data: bytes) -> Reply:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        with self._lock:
            self.requests += 1
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = self._redact(error.read(300).decode("utf-8", "replace")) if error.fp else ""
            message = f"HTTP {error.code}: {detail}".strip()
            if error.code == 429 or error.code >= 500:
                raise _Transient(message) from None
            if error.code in (401, 403):
                raise EndpointAuthError(
                    f"{self.url} refused the API key (HTTP {error.code}); set the key in "
                    f"${self.cfg.api_key_env} (endpoint.api_key_env)"
                ) from None
            raise EndpointError(f"{self.url} refused the request: {message}") from None
        except TimeoutError:
            raise _Transient(f"timed out after {self.cfg.timeout_s}s") from None
        except urllib.error.URLError as error:
            raise _Transient(f"connection failed: {self._redact(str(error.reason))}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise _Transient(f"connection failed: {type(error).__name__}") from None
        try:
            body = json.loads(raw)
            texts = [choice["message"]["content"] or "" for choice in body["choices"]]
            usage = body.get("usage") or {}
            return Reply(texts, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise _Transient(
                f"the reply is not a chat completion: {self._redact(raw[:120].decode('utf-8', 'replace'))!r}"
            ) from None

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text
