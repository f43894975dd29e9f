"""``r1lab serve``: an OpenAI-compatible chat server that returns the reasoning apart from the answer.

``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``stream: true`` ending in
``data: [DONE]``), ``GET /v1/models`` and ``/v1/models/{id}``, ``GET /health`` and a chat page at ``/``. The
chain of thought goes to ``message.reasoning_content`` (and ``delta.reasoning_content`` when streaming), as
DeepSeek's API does, and is also given as ``reasoning`` for clients that read that name.

R1's usage rules are built in: temperature 0.6 and top-p 0.95 unless the request says otherwise; a system
message is folded into the first user turn; reasoning in earlier assistant turns is not sent back to the
model; with the R1 template (or a model whose own template ends in ``<think>``) the reply starts inside the
think block.

A client that hangs up stops its generation at the next token, streamed or not. Each request is logged in one
line (logger ``r1lab.serve``, to stderr unless logging is configured otherwise), whatever uvicorn's log level.

FastAPI handles routing and uvicorn the HTTP; requests are checked by hand
(:mod:`r1lab.serve.protocol`) so every bad input is a 400 that names the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from r1lab.engine import SamplingParams
from r1lab.serve.batcher import Batcher, Job, Overloaded
from r1lab.serve.protocol import ApiError, ChatRequest, bad, parse_chat_request

PAGE = Path(__file__).with_name("static") / "index.html"
log = logging.getLogger("r1lab.serve")


def create_app(engine, model_name: str, template: str = "native", api_key: str | None = None,
               max_pending: int = 16, max_batch_rows: int = 32, max_n: int = 8,
               default_max_tokens: int = 2048, access_log: bool = True) -> FastAPI:
    batcher = Batcher(engine, max_pending=max_pending, max_batch_rows=max_batch_rows)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="r1lab", docs_url=None, redoc_url=None, lifespan=lifespan)
    context = engine.context_length
    app.state.batcher = batcher
    created = int(time.time())
    # max_model_len, as vLLM's server says it: clients (r1lab's own endpoint engine) cut replies to it
    card = {"id": model_name, "object": "model", "created": created, "owned_by": "r1lab", "max_model_len": context}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(404)
    @app.exception_handler(405)
    async def _no_route(request: Request, exc):
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404
                   else f"{request.method} is not allowed on {request.url.path}")
        return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if (api_key and request.url.path.startswith("/v1/")
                and request.headers.get("authorization", "") != f"Bearer {api_key}"):
            error = ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY",
                             type_="authentication_error", code="invalid_api_key")
            return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    if access_log:  # added last, so it is outermost and sees every answer, 401s included
        app.add_middleware(AccessLog)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        if not log.hasHandlers():  # logging not configured (r1lab serve): to stderr
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
            log.addHandler(handler)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name, "running": batcher.running, "pending": batcher.pending}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")  # a hub id has a slash in it
    def model(model_id: str):
        if model_id != model_name:
            raise ApiError(404, f"no model {model_id[:100]!r}: this server serves {model_name!r}", "model",
                           code="model_not_found")
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_chat_request(await request.body(), max_n)
        prompt = engine.prompt(req.messages, template)
        prompt_ids = prompt.token_ids
        if len(prompt_ids) >= context:
            raise bad(f"the prompt is {len(prompt_ids)} tokens; the model's context is {context}: shorten the "
                      "conversation", "messages", code="context_length_exceeded")
        room = context - len(prompt_ids)
        if req.max_tokens is not None and req.max_tokens > room:
            raise bad(f"max_tokens {req.max_tokens} does not fit: the prompt takes {len(prompt_ids)} of the "
                      f"{context}-token context, leaving {room}", "max_tokens", code="context_length_exceeded")
        params = SamplingParams(n=req.n, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                max_new_tokens=req.max_tokens or min(room, default_max_tokens), stop=req.stop,
                                seed=req.seed)
        job = Job(prompt, params, asyncio.get_running_loop())
        try:
            batcher.submit(job)
        except Overloaded:
            raise ApiError(429, f"the server is busy ({batcher.pending} requests waiting or running); retry shortly",
                           type_="rate_limit_error", code="overloaded", headers={"Retry-After": "1"}) from None
        reply = request.state.reply = Reply(req, model_name, len(prompt_ids))  # the access log reads its tokens
        if req.stream:
            return StreamingResponse(_sse(job, reply, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, reply, request)

    return app


class Reply:
    """The response being built: ids, per-choice text so far, and OpenAI's JSON shapes."""

    def __init__(self, req: ChatRequest, model: str, prompt_tokens: int):
        self.req, self.model, self.prompt_tokens = req, model, prompt_tokens
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.reasoning = [""] * req.n
        self.content = [""] * req.n
        self.completion_tokens: int | None = None  # known when the generation ends

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}
        if self.req.include_usage:  # as OpenAI: null on every chunk but the last
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def usage(self, completions) -> dict:
        self.completion_tokens = sum(len(c.token_ids) for c in completions)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def full(self, completions) -> dict:
        choices = []
        for i, c in enumerate(completions):
            message = {"role": "assistant", "content": self.content[i], "reasoning_content": self.reasoning[i] or None,
                       "reasoning": self.reasoning[i] or None}
            choices.append({"index": i, "message": message, "finish_reason": _finish(c), "logprobs": None})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(completions)}


def _finish(completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


@contextlib.contextmanager
def _watch_hang_up(request: Request, job: Job):
    """Within: a task stops ``job`` as soon as its client hangs up, however fast tokens come (once the body is
    read, the server's ``receive()`` returns only at ``http.disconnect``). On leaving, ``job`` is stopped: a
    no-op once it finished, and the end of its rows if the handler was cancelled (the client left)."""
    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled.set()  # the batcher ends its rows at their next token
        job.events.put_nowait(("gone",))

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        job.cancelled.set()


async def _collect(job: Job, reply: Reply, request: Request) -> Response:
    """Wait for a whole reply; stop the generation if the client goes away meanwhile."""
    with _watch_hang_up(request, job):
        while True:
            kind, *rest = await job.events.get()
            if kind == "delta":
                sample, reasoning, content = rest
                reply.reasoning[sample] += reasoning
                reply.content[sample] += content
            elif kind == "done":
                return JSONResponse(reply.full(rest[0]))
            elif kind == "gone":
                return Response(status_code=499)  # nobody reads it; for the access log
            else:
                raise ApiError(500, rest[0], type_="server_error")


async def _sse(job: Job, reply: Reply, request: Request):
    """Server-sent events: a role chunk, reasoning/content deltas as they come, finish chunks, [DONE]."""
    with _watch_hang_up(request, job):
        yield reply.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                           for i in range(reply.req.n)])
        while True:
            kind, *rest = await job.events.get()
            if kind == "gone":
                return
            if kind == "delta":
                sample, reasoning, content = rest
                delta = {}
                if reasoning:
                    delta["reasoning_content"] = delta["reasoning"] = reasoning
                if content:
                    delta["content"] = content
                yield reply.chunk([{"index": sample, "delta": delta, "finish_reason": None}])
            elif kind == "done":
                completions = rest[0]
                usage = reply.usage(completions)
                yield reply.chunk([{"index": i, "delta": {}, "finish_reason": _finish(c)}
                                   for i, c in enumerate(completions)])
                if reply.req.include_usage:
                    yield reply.chunk([], usage=usage)
                break
            else:
                error = ApiError(500, rest[0], type_="server_error").body()
                yield f"data: {json.dumps(error)}\n\n"
                break
        yield "data: [DONE]\n\n"


class AccessLog:
    """ASGI middleware: one line a request once its response is over (a stream: at its end), with the client,
    method, path, status, seconds and, for a completion, its prompt and completion tokens (``?`` when the
    client left before the end; a non-streamed one that did is logged as 499, as nginx does)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), 500  # 500 unless a response starts

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = "%s:%s" % tuple(scope["client"]) if scope.get("client") else "-"
            reply = scope.get("state", {}).get("reply")
            made = "?" if reply is None or reply.completion_tokens is None else reply.completion_tokens
            tokens = "" if reply is None else f" tokens {reply.prompt_tokens}+{made}"
            log.info("%s %s %s %d %.3fs%s", client, scope["method"], scope["path"], status,
                     time.monotonic() - start, tokens)
