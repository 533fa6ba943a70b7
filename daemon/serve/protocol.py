"""OpenAI's chat-completions protocol: the request read and checked, the replies and errors shaped.

Requests are checked by hand, not by a schema library, so that every refusal reads like OpenAI's
(`{"error": {"message", "type", "param", "code"}}` with its status code) and names the field. Fields
OpenAI has and this server does not use (`user`, `metadata`, `frequency_penalty`, ...) are accepted
and ignored, as a client library sends some of them by default; fields that would change the
answer in a way this server cannot honour (`n` > 1, `tools`, images) are refused.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_STOP = 4  # OpenAI's own limit on stop strings


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # [{"role", "content"}], content as plain text
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    store: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)


def parse_chat_request(body: Any, models: tuple[str, ...], token_limit: int) -> ChatRequest:
    """Check a decoded JSON body; raise ApiError naming the field on anything unusable."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist (this server has: {', '.join(models)})",
                       code="model_not_found", param="model")
    messages = _messages(body.get("messages"))
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, f"n must be 1 here (got {n!r}): one reply per request", param="n")
    for unsupported in ("tools", "functions", "audio"):
        if body.get(unsupported):
            raise ApiError(400, f"{unsupported} are not supported by this server", param=unsupported)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise ApiError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format")

    max_tokens = body.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise ApiError(400, f"{param} must be a positive integer (got {max_tokens!r})", param=param)
        if max_tokens > token_limit:
            raise ApiError(400, f"{param} is too large: {max_tokens}; this server allows at most {token_limit} "
                                "(serve.max_tokens)", param=param, code="max_tokens_exceeded")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        temperature = 0.0  # nothing but the most likely token can be kept
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"seed must be an integer (got {seed!r})", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    store = body.get("store")
    return ChatRequest(
        model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        stop=_stop(body.get("stop")), seed=seed % (1 << 63) if seed is not None else None, stream=stream,
        include_usage=bool(options.get("include_usage")), store=store is not False,
        logit_bias=_logit_bias(body.get("logit_bias")),
    )


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", param="messages")
    messages = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = ROLES.get(item.get("role"))
        if role is None:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)} (got {item.get('role')!r})",
                           param=f"{where}.role")
        messages.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
    return messages


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""  # an assistant turn that only called a tool
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: only text parts are supported", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


def _stop(raw: Any) -> tuple[str, ...]:
    stops = [raw] if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP} strings", param="stop")
    return tuple(s for s in stops if s)


def _logit_bias(raw: Any) -> dict[int, float]:
    if raw is None:
        return {}
    try:
        bias = {int(k): float(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise ApiError(400, "logit_bias must map token ids to numbers from -100 to 100", param="logit_bias") from None
    if not all(-100 <= v <= 100 for v in bias.values()):
        raise ApiError(400, "logit_bias values must be from -100 to 100", param="logit_bias")
    return bias


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g} (got {value!r})", param=key)
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- replies ---------------------------------------------------------------------------------

def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, checkpoint: str, text: str, finish: str, prompt_tokens: int,
               completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": checkpoint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, checkpoint: str, delta: dict | None = None, finish: str | None = None,
          usage_counts: dict | None = None) -> dict:
    """A `chat.completion.chunk`; with `usage_counts`, the usage chunk (no choices) that ends a stream."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "system_fingerprint": checkpoint}
    if usage_counts is not None:
        body.update(choices=[], usage=usage_counts)
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    return body


def model_list(checkpoints: dict[str, str], created: int) -> dict:
    return {"object": "list",
            "data": [model_card(name, checkpoint, created) for name, checkpoint in checkpoints.items()]}


def model_card(name: str, checkpoint: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "dreamd", "checkpoint": checkpoint}
