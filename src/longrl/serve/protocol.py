"""The chat-completions request (validated with pydantic) and the response / stream-chunk shapes.

Supported: ``model, messages, n, temperature, top_p, max_tokens`` (or ``max_completion_tokens``),
``stop`` (strings), ``seed``, ``logprobs`` (the sampled token's log-prob; ``top_logprobs`` must be 0),
``stream`` and ``stream_options.include_usage``. Fields the server cannot honour (tools, response
formats, penalties, logit bias) are refused by name rather than silently ignored; other unknown
fields (``user``, ``metadata``, ...) are ignored as OpenAI-compatible servers do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from longrl.serve.errors import APIError, bad_request

# Fields whose meaning the engine cannot honour: refused when set to anything but their default.
UNSUPPORTED = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "logit_bias": None,
    "frequency_penalty": 0,
    "presence_penalty": 0,
}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


def parse_request(body: Any, max_n: int) -> ChatRequest:
    """Validate a decoded JSON body; raises APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    for name, default in UNSUPPORTED.items():
        if body.get(name) not in (default, None, [], {}):  # an empty tools list asks for nothing
            raise bad_request(
                f"{name} is not supported by longrl serve; remove it from the request",
                param=name,
                code="unsupported_parameter",
            )
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = _param(first["loc"])
        value = "" if first["type"] == "missing" else f" (got {first.get('input')!r:.80})"
        raise bad_request(f"{param}: {first['msg']}{value}", param=param) from None
    if request.n > max_n:
        raise bad_request(f"n={request.n} is above this server's limit of {max_n} (--max-n)", param="n")
    if request.top_logprobs:
        raise bad_request(
            "top_logprobs is not supported (the engine reports the sampled token's log-prob only); "
            "set logprobs=true and top_logprobs=0",
            param="top_logprobs",
            code="unsupported_parameter",
        )
    if len(request.stop_strings) > 4:
        raise bad_request(f"stop takes at most 4 strings, got {len(request.stop_strings)}", param="stop")
    return request


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def logprobs_block(tokens: list[str], logprobs: list[float]) -> dict:
    return {
        "content": [
            {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(tokens, logprobs)
        ]
    }


def completion_body(cid: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "longrl",
    }


def chunk_body(cid: str, model: str, created: int, choices: list[dict], usage: dict | None = None) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def not_found_model(name: str, served: str) -> APIError:
    return APIError(
        404,
        f"the model {name!r} does not exist; this server serves {served!r} (GET /v1/models)",
        param="model",
        code="model_not_found",
    )
