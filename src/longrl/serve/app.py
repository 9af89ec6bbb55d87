"""The FastAPI app: routes, API-key check, errors in OpenAI's shape, and server start-up.

    POST /v1/chat/completions   GET /v1/models   GET /health

Every refusal is a JSON ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; an
internal failure is a 500 in the same shape and the server keeps serving. The API key, when one is
configured, is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

try:
    from fastapi import FastAPI, Request
except ImportError:  # pragma: no cover - the message is the fix
    raise ImportError("longrl serve needs FastAPI and uvicorn: pip install 'longrl[serve]'") from None
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from longrl.serve.batcher import Batcher
from longrl.serve.config import ServeConfig
from longrl.serve.errors import APIError, bad_request
from longrl.serve.media import template_messages
from longrl.serve.policy import Completion, Job, Policy
from longrl.serve.protocol import (
    chunk_body,
    completion_body,
    completion_id,
    logprobs_block,
    not_found_model,
    parse_request,
)

log = logging.getLogger("longrl.serve")


def api_key_from_env(cfg: ServeConfig) -> str:
    if not cfg.api_key_env:
        return ""
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ValueError(
            f"--api-key-env {cfg.api_key_env}: that environment variable is unset or empty; "
            "export it or drop the flag to serve without a key"
        )
    return key


def create_app(model, tokenizer, cfg: ServeConfig) -> FastAPI:
    name = cfg.served_model_name or Path(cfg.model or "longrl-policy").name
    api_key = api_key_from_env(cfg)
    policy = Policy(model, tokenizer, cfg)
    batcher = Batcher(
        policy.run, wait_s=cfg.batch_wait_ms / 1000, max_prompts=cfg.max_batch_prompts, max_queue=cfg.max_queue
    )
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        task = batcher.start()
        yield
        task.cancel()
        batcher.close()

    app = FastAPI(title="longrl serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.policy, app.state.batcher = policy, batcher

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", type=kind).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return bad_request(str(error.errors()[0].get("msg", error))).response()

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"internal error: {type(error).__name__}", type="server_error").response()

    def authorize(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                type="invalid_request_error",
                code="invalid_api_key",
            )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "queued": batcher.queue.qsize() if batcher.queue else 0,
            "batches": batcher.batches,
            "generate_calls": policy.generate_calls,
            "prompts_generated": policy.prompts_generated,
        }

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "longrl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request, cfg.max_request_bytes)
        chat = parse_request(body, cfg.max_n)
        if chat.model != name:
            raise not_found_model(chat.model, name)
        messages, media = template_messages(chat.messages, cfg)
        completion: Completion = await batcher.submit(Job(chat, messages, media))
        cid = completion_id()
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(
                sse_events(cid, name, completion, chat.logprobs, include_usage), media_type="text/event-stream"
            )
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs_block(c.pieces, c.logprobs) if chat.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(completion.choices)
        ]
        return completion_body(cid, name, choices, usage(completion))

    return app


def usage(completion: Completion) -> dict:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


async def read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413,
            f"the request body is {int(declared)} bytes, over this server's limit of {limit} (--max-request-bytes)",
            code="request_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(
                413,
                f"the request body is over this server's limit of {limit} bytes (--max-request-bytes)",
                code="request_too_large",
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON ({error})") from None


def sse_events(cid: str, model: str, completion: Completion, logprobs: bool, include_usage: bool):
    """Server-sent events in OpenAI's chunk format: a role delta, one delta per token, the finish.

    The engine decodes a batch in lock-step with no per-token callback, so the tokens of a reply are
    sent once its batch has finished."""
    created = int(time.time())

    def event(choices, usage_body=None) -> str:
        return f"data: {json.dumps(chunk_body(cid, model, created, choices, usage_body))}\n\n"

    for i, choice in enumerate(completion.choices):
        yield event(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )
        for piece, lp in zip(choice.pieces, choice.logprobs):
            if not piece and not logprobs:
                continue
            yield event(
                [
                    {
                        "index": i,
                        "delta": {"content": piece},
                        "logprobs": logprobs_block([piece], [lp]) if logprobs else None,
                        "finish_reason": None,
                    }
                ]
            )
        yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}])
    if include_usage:
        yield event([], usage(completion))
    yield "data: [DONE]\n\n"


# -- running it ----------------------------------------------------------------------------------


def load_policy(cfg: ServeConfig):
    import torch

    from longrl.models.adapter import load_model
    from longrl.models.config import ModelConfig

    if not cfg.model or not Path(cfg.model).is_dir():
        raise FileNotFoundError(
            f"--model {cfg.model!r} is not a directory; point it at a model saved by longrl "
            "(runs/NAME/model, or `longrl export` output)"
        )
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # ModelConfig checks the dtype string itself
    model, tokenizer = load_model(ModelConfig(path=cfg.model, dtype=cast(Any, cfg.dtype)), device=device)
    model.eval()
    return model, tokenizer


def run_server(cfg: ServeConfig) -> None:
    """Load the model and serve until interrupted (``longrl serve``)."""
    import uvicorn

    model, tokenizer = load_policy(cfg)
    app = create_app(model, tokenizer, cfg)
    log.info(
        "serving %s on http://%s:%d/v1 (API key %s)",
        cfg.model,
        cfg.host,
        cfg.port,
        f"from ${cfg.api_key_env}" if cfg.api_key_env else "not required",
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")


class ServerThread:
    """A uvicorn server on 127.0.0.1 and a free port, in a background thread (tests, datagen runs)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
