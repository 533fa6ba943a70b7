"""The HTTP routes: /v1/chat/completions (plain and SSE), /v1/models, /health.

Every request is bounded before it costs anything: the body is read up to `serve.max_body_bytes`
(413 past it), the bearer token (when configured) compared in constant time (401), the fields
checked (400/404), prompt plus reply held to the model's context (400), and the queue to
`serve.max_queue` (429). Only then does the generation worker see it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from dreamd.daemon.serve import protocol
from dreamd.daemon.serve.chatlog import ChatLog, record
from dreamd.daemon.serve.engine import Engine, Job, Overloaded
from dreamd.daemon.serve.protocol import ApiError, ChatRequest
from dreamd.daemon.serve.settings import ServeSettings
from dreamd.daemon.serve.versions import MODELS, Versions
from dreamd.trainers.decoder import Row

log = structlog.get_logger("dreamd.serve")


@dataclass
class Counters:
    requests_served: int = 0
    requests_refused: int = 0
    started_at: float = field(default_factory=time.time)


@dataclass
class ServerParts:
    settings: ServeSettings
    versions: Versions
    engine: Engine
    chatlog: ChatLog | None  # None: serve.log_conversations is off
    api_key: str | None
    counters: Counters = field(default_factory=Counters)


def build_app(parts: ServerParts) -> FastAPI:
    app = FastAPI(title="dreamd", docs_url=None, redoc_url=None, openapi_url=None)
    settings = parts.settings

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        if exc.status in (401, 413, 429):
            parts.counters.requests_refused += 1
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):  # unknown routes, wrong methods
        return JSONResponse(protocol.error_body(str(exc.detail), "invalid_request_error", code=str(exc.status_code)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception):
        log.exception("serve.request_failed", error=str(exc))
        return JSONResponse(protocol.error_body("the server failed to answer; see its log", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "checkpoint": parts.versions.checkpoint_of("dreamd"),
                "queue": parts.engine.admitted}

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(request, parts.api_key)
        return protocol.model_list(_checkpoints(parts), int(parts.counters.started_at))

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request):
        _authorize(request, parts.api_key)
        checkpoints = _checkpoints(parts)
        if name not in checkpoints:
            raise ApiError(404, f"The model `{name}` does not exist", code="model_not_found", param="model")
        return protocol.model_card(name, checkpoints[name], int(parts.counters.started_at))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(request, parts.api_key)
        body = await _read_json(request, settings.max_body_bytes)
        chat = protocol.parse_chat_request(body, MODELS, settings.max_tokens)
        row = _row(parts, chat)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def send(event):  # called on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                row.cancelled = lambda: True

        job = Job(chat.model, row, send)
        try:
            parts.engine.submit(job)
        except Overloaded as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry later", type="requests",
                           code="rate_limit_exceeded") from None
        if chat.stream:
            return StreamingResponse(_stream(parts, chat, job, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(parts, chat, job, events)

    return app


def _checkpoints(parts: ServerParts) -> dict[str, str]:
    return {name: parts.versions.checkpoint_of(name) for name in MODELS}


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes as long whatever the first differing byte: the key cannot be guessed by timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; at most {limit} are accepted "
                            "(serve.max_body_bytes)", code="request_too_large")
    received = bytearray()
    async for piece in request.stream():  # a chunked body has no length to check up front
        received += piece
        if len(received) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes (serve.max_body_bytes)",
                           code="request_too_large")
    try:
        return json.loads(received)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None


def _row(parts: ServerParts, chat: ChatRequest) -> Row:
    """The request as the worker's row: the prompt in the model's own chat template, its budget checked."""
    _, loaded = parts.versions.get(chat.model)
    tokenizer = loaded.tokenizer
    text = tokenizer.apply_chat_template(chat.messages, add_generation_prompt=True, tokenize=False)
    # The template writes the special tokens itself; adding them again would double the BOS.
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = parts.settings.max_context_tokens or getattr(loaded.model.config, "max_position_embeddings", 2048)
    room = limit - len(prompt_ids)
    wanted = chat.max_tokens if chat.max_tokens is not None else min(parts.settings.default_max_tokens, room)
    if room < 1 or wanted > room:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{len(prompt_ids) + max(wanted, 0)} tokens ({len(prompt_ids)} in the messages, "
                            f"{max(wanted, 0)} in the completion). Please reduce the length of the messages or "
                            "completion.", code="context_length_exceeded", param="messages")
    return Row(prompt_ids=prompt_ids, max_tokens=wanted, temperature=chat.temperature, top_p=chat.top_p,
               stop=chat.stop, seed=chat.seed, logit_bias=chat.logit_bias)


async def _complete(parts: ServerParts, chat: ChatRequest, job: Job, events: asyncio.Queue) -> JSONResponse:
    cid = protocol.completion_id()
    try:
        finish = await _drain(events)
    except BaseException:
        job.cancelled.set()  # the client went away: the worker drops the row at its next step
        raise
    _finished(parts, chat, job, finish)
    return JSONResponse(protocol.completion(cid, chat.model, job.checkpoint, job.row.text, finish,
                                            len(job.row.prompt_ids), len(job.row.tokens)))


async def _drain(events: asyncio.Queue) -> str:
    while True:
        kind, value = await events.get()
        if kind == "end":
            return value
        if kind == "error":
            raise ApiError(500, value, type="server_error")


async def _stream(parts: ServerParts, chat: ChatRequest, job: Job, events: asyncio.Queue) -> AsyncIterator[str]:
    cid = protocol.completion_id()
    finish = None
    try:
        while True:
            kind, value = await events.get()
            if kind == "start":
                yield _sse(protocol.chunk(cid, chat.model, value, {"role": "assistant", "content": ""}))
            elif kind == "delta":
                yield _sse(protocol.chunk(cid, chat.model, job.checkpoint, {"content": value}))
            elif kind == "error":
                yield _sse(protocol.error_body(value, "server_error"))
                return
            else:
                finish = value
                break
        if finish == "cancelled":
            return
        # Counted and logged before the last chunks: a client may hang up as soon as it has [DONE].
        _finished(parts, chat, job, finish)
        yield _sse(protocol.chunk(cid, chat.model, job.checkpoint, finish=finish))
        if chat.include_usage:
            counts = protocol.usage(len(job.row.prompt_ids), len(job.row.tokens))
            yield _sse(protocol.chunk(cid, chat.model, job.checkpoint, usage_counts=counts))
        yield "data: [DONE]\n\n"
    finally:
        if finish is None:
            job.cancelled.set()  # the client disconnected mid-stream


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _finished(parts: ServerParts, chat: ChatRequest, job: Job, finish: str) -> None:
    parts.counters.requests_served += 1
    if parts.chatlog is not None and chat.store and finish in ("stop", "length"):
        parts.chatlog.add(record(chat.messages, job.row.text, job.checkpoint))
