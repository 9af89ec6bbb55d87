"""Open-ended answers scored by an LLM judge behind any OpenAI-compatible chat endpoint.

Standard library only (urllib). Calls run concurrently up to `max_concurrency`, each with a
timeout (per socket operation), retried with exponential backoff on timeouts, HTTP 429 / 5xx and
connection errors. Answers are cached in memory and, optionally, in a jsonl file keyed by a hash
of model + messages, so a resumed run or a repeated sample does not pay twice. A call that still
fails raises `JudgeError`; the reward model then logs it and uses the fallback score.

The API key is read from the environment variable named in the config and is only ever put in
the Authorization header: never in logs, exceptions, reprs or the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from longrl.rewards.multiple_choice import parse_response
from longrl.rewards.registry import RewardInput, register_reward

logger = logging.getLogger("longrl.rewards")
T = TypeVar("T")

SYSTEM_PROMPT = (
    "You are a strict grader. Given a question, a reference answer and a model's answer, judge "
    "whether the model's answer is correct and complete with respect to the reference. Reply with "
    "one line, 'Score: N', where N is an integer from 0 (wrong) to 10 (fully correct)."
)
MAX_ANSWER_CHARS = 8000  # longer answers are cut: the judge sees the start


class JudgeError(RuntimeError):
    """A judge call failed (after retries) or its reply could not be read."""


class _Retryable(Exception):
    pass


class JudgeClient:
    """Chat-completions client with bounded concurrency, retries and a response cache."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 8,
        cache_path: str = "",
        max_tokens: int = 512,
    ):
        if not base_url or not model:
            raise ValueError(
                "the judge reward needs reward.judge_base_url (e.g. http://localhost:8000/v1) and reward.judge_model"
            )
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env, "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self.cache_path = Path(cache_path) if cache_path else None
        self.num_requests = 0  # HTTP attempts made
        self.cache_hits = 0
        if self.cache_path is not None and self.cache_path.exists():
            self._load_cache()

    def __repr__(self) -> str:
        key = "set" if self._api_key else "not set"
        return (
            f"JudgeClient(url={self.url!r}, model={self.model!r}, key from ${self.api_key_env} ({key}), "
            f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
            f"max_concurrency={self.max_concurrency})"
        )

    # -- cache -----------------------------------------------------------------------------------

    def cache_key(self, messages: list[dict]) -> str:
        payload = json.dumps({"model": self.model, "messages": messages}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _load_cache(self) -> None:
        assert self.cache_path is not None
        for number, line in enumerate(self.cache_path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                entry = json.loads(line)
                self._cache[entry["key"]] = entry["content"]
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("judge cache %s line %d is not a cache entry; skipped", self.cache_path, number)

    def _store(self, key: str, content: str) -> None:
        with self._lock:
            self._cache[key] = content
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "content": content}, ensure_ascii=False) + "\n")

    # -- calls -----------------------------------------------------------------------------------

    def ask(self, messages: list[dict], parse: Callable[[str], T]) -> T:
        """parse(reply text) for `messages`, from the cache or the endpoint. Only replies that parse
        are cached. Raises JudgeError."""
        key = self.cache_key(messages)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return parse(cached)
        content = self._complete(messages)
        value = parse(content)
        self._store(key, content)
        return value

    def _complete(self, messages: list[dict]) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        ).encode()
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self._slots:
                    with self._lock:
                        self.num_requests += 1
                    return self._post(body)
            except _Retryable as error:
                last_error = str(error)
                logger.debug("judge attempt %d/%d failed: %s", attempt + 1, self.max_retries + 1, last_error)
        raise JudgeError(
            self._redact(f"judge call to {self.url} failed after {self.max_retries + 1} attempts: {last_error}")
        )

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = self._redact(error.read(300).decode("utf-8", "replace")) if error.fp else ""
            message = f"HTTP {error.code} {error.reason}: {detail}".strip()
            if error.code == 429 or error.code >= 500:
                raise _Retryable(message) from None
            raise JudgeError(f"judge endpoint {self.url} refused the request: {message}") from None
        except TimeoutError as error:
            raise _Retryable(f"timed out after {self.timeout_s}s ({error})") from None
        except urllib.error.URLError as error:
            raise _Retryable(f"connection failed: {self._redact(str(error.reason))}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise _Retryable(f"connection failed: {type(error).__name__}: {self._redact(str(error))}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            snippet = self._redact(raw[:200].decode("utf-8", "replace"))
            raise JudgeError(
                f"judge endpoint {self.url} sent a reply that is not a chat completion: {snippet!r}"
            ) from None

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


_SCORE = re.compile(
    r"score\s*(?:of|is|was)?\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE
)
_BARE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?")
_VERDICTS = {"correct": 1.0, "yes": 1.0, "true": 1.0, "incorrect": 0.0, "wrong": 0.0, "no": 0.0, "false": 0.0}


def parse_judge_score(text: str) -> float:
    """The judge's verdict as a number in [0, 1]: "Score: 7" -> 0.7, "8/10" -> 0.8, "correct" -> 1."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
    matches = _SCORE.findall(text)
    if matches:
        value, scale = matches[-1]
    elif bare := _BARE.fullmatch(text.rstrip(".")):
        value, scale = bare.groups()
    elif text.lower().rstrip(".!") in _VERDICTS:
        return _VERDICTS[text.lower().rstrip(".!")]
    else:
        raise JudgeError(f"judge reply has no score: {text[:200]!r}")
    value, scale = float(value), float(scale or 10)
    if scale <= 0 or not 0 <= value <= scale:
        raise JudgeError(f"judge score {value:g} is outside 0..{scale:g}: {text[:200]!r}")
    return value / scale


def judge_messages(sample: RewardInput) -> list[dict]:
    parsed = parse_response(sample.response)
    answer = parsed.answer if parsed.answer_source in ("tag", "unclosed_tag") and parsed.answer else sample.response
    user = (
        f"Question:\n{sample.question}\n\nReference answer:\n{sample.answer_text}\n\n"
        f"Model answer:\n{answer[:MAX_ANSWER_CHARS]}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class JudgeReward:
    """Reward function: the judge's score of the answer, in [0, 1]."""

    def __init__(self, client: JudgeClient):
        self.client = client
        self.max_concurrency = client.max_concurrency  # RewardModel calls it from this many threads

    def __call__(self, sample: RewardInput) -> float:
        return self.client.ask(judge_messages(sample), parse_judge_score)

    def __repr__(self) -> str:
        return f"JudgeReward({self.client!r})"


@register_reward("judge", factory=True)
def make_judge_reward(cfg) -> JudgeReward:
    return JudgeReward(
        JudgeClient(
            cfg.judge_base_url,
            cfg.judge_model,
            api_key_env=cfg.judge_api_key_env,
            timeout_s=cfg.judge_timeout_s,
            max_retries=cfg.judge_max_retries,
            backoff_s=cfg.judge_retry_backoff_s,
            max_concurrency=cfg.judge_max_concurrency,
            cache_path=cfg.judge_cache_path,
        )
    )
