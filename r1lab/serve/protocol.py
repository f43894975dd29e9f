"""Checking a chat-completions request by hand, so every mistake gets a 400 that names the field.

Errors follow OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``. Every field of OpenAI's
request is in one of the tables below: honoured, accepted because it asks nothing of the reply, accepted only at
the value that changes nothing, or refused. A field OpenAI does not define is refused too, as OpenAI does, so a
request is never answered as if a setting had been applied when it was not. Fields of the wrong type are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "developer")
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.6, 0.95  # DeepSeek's advice for R1

# OpenAI's chat-completions request fields and what r1lab serve does with each; null is taken as absent.
#: Honoured.
SUPPORTED = ("messages", "model", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
             "max_completion_tokens", "n", "stop", "seed")
#: Accepted with any value: they ask nothing of the reply (bookkeeping, billing and caching hints).
IGNORED = ("user", "safety_identifier", "store", "metadata", "service_tier", "prompt_cache_key",
           "prompt_cache_retention", "prompt_cache_options", "parallel_tool_calls")
#: Accepted only at the values that change nothing; any other value is refused.
NEUTRAL = {"frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},), "logprobs": (False,),
           "top_logprobs": (0,), "response_format": ({"type": "text"},), "tools": ([],), "functions": ([],),
           "tool_choice": ("none", "auto"), "function_call": ("none", "auto"), "modalities": (["text"],)}
#: Refused at any value: r1lab has no such feature.
UNSUPPORTED = ("audio", "prediction", "reasoning_effort", "verbosity", "web_search_options", "moderation")


class ApiError(Exception):
    """An error answered as JSON with ``status``; ``param`` names the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    model: str | None = None
    stream: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0  # not OpenAI's, but vLLM's and others'; 0 = off
    max_tokens: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    include_usage: bool = False


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code=code)


def parse_chat_request(raw: bytes, max_n: int) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise bad("the body is nested too deeply to be a chat request") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {type(body).__name__}")
    for name, value in body.items():
        _check_field(name, value)
    messages = body.get("messages")
    if messages is None:
        raise bad("'messages' is required: a list of {role, content} objects", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: only text is understood
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}] must be a text part {{type: text, text: ...}}",
                              f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string, got {type(content).__name__}", f"{where}.content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"{where}.content is not valid Unicode text (a lone surrogate such as \\ud800)",
                      f"{where}.content") from None
        checked.append({"role": "system" if role == "developer" else role, "content": content})
    if checked[-1]["role"] == "assistant":
        raise bad("the last message must be from the user (r1lab does not continue an assistant turn)", "messages")
    req = ChatRequest(messages=checked)
    req.model = _typed(body, "model", str, None)
    req.stream = _typed(body, "stream", bool, False)
    req.temperature = _number(body, "temperature", DEFAULT_TEMPERATURE)
    if req.temperature < 0:
        raise bad(f"temperature must be >= 0, got {req.temperature}", "temperature")
    req.top_p = _number(body, "top_p", DEFAULT_TOP_P)
    if not 0 < req.top_p <= 1:
        raise bad(f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    req.top_k = _typed(body, "top_k", int, 0)
    if req.top_k < 0:
        raise bad(f"top_k must be 0 (off) or positive, got {req.top_k}", "top_k")
    for name in ("max_tokens", "max_completion_tokens"):
        value = _typed(body, name, int, None)
        if value is not None:
            if value < 1:
                raise bad(f"{name} must be at least 1, got {value}", name)
            req.max_tokens = value
    req.n = _typed(body, "n", int, 1)
    if not 1 <= req.n <= max_n:
        raise bad(f"n must be between 1 and {max_n}, got {req.n}", "n")
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise bad("stop must be a string or a list of at most 4 strings", "stop")
        req.stop = [s for s in stop if s]
    req.seed = _typed(body, "seed", int, None)
    if req.seed is not None and not -2**63 <= req.seed < 2**63:
        raise bad(f"seed must fit in 64 bits, got {req.seed}", "seed")
    options = body.get("stream_options")
    if options is not None:
        if not req.stream:
            raise bad("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
            raise bad("stream_options must be an object with include_usage (a boolean)", "stream_options")
        req.include_usage = _typed(options, "include_usage", bool, False)
    return req


def _check_field(name: str, value) -> None:
    """Refuse a field r1lab would otherwise ignore while it asks for something (see the tables above)."""
    if name in SUPPORTED or name in IGNORED or value is None and (name in NEUTRAL or name in UNSUPPORTED):
        return
    if name in NEUTRAL:
        if not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in NEUTRAL[name]):
            accepted = " or ".join(json.dumps(v) for v in NEUTRAL[name])
            raise bad(f"{name} is not supported by r1lab serve: it accepts only {accepted}, which changes "
                      f"nothing; leave {name} out", name)
    elif name in UNSUPPORTED:
        raise bad(f"{name} is not supported by r1lab serve; leave {name} out", name)
    else:
        raise bad(f"unknown field {name!r}: r1lab serve takes the fields of OpenAI's chat-completions request "
                  f"and honours {', '.join(SUPPORTED)}; leave {name} out", name)


def _typed(body: dict, name: str, kind: type, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad(f"{name} must be {'an integer' if kind is int else 'a ' + kind.__name__}, got {value!r}", name)
    return value


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{name} must be a finite number, got {value!r}", name)
    return float(value)
