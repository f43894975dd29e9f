"""The real server on a loopback port, driven by the official openai client and by raw HTTP."""

import concurrent.futures
import json
import logging
import re
import socket
import threading
import time

import httpx
import pytest
import torch

from r1lab.chat import render
from r1lab.engine import TorchEngine
from r1lab.serve.app import create_app

from conftest import make_model, make_tokenizer
from serving import ScriptedEngine, running, thinking_tokenizer

openai = pytest.importorskip("openai")


def client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def streamed(c, **kw):
    """Reasoning, content, finish reasons and usage of a streamed request, concatenated."""
    reasoning, content, finish, usage = "", "", None, None
    for chunk in c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return reasoning, content, finish, usage


def reasoning_of(message):
    return (message.model_extra or {}).get("reasoning_content") or ""


@pytest.fixture(scope="module")
def tiny_server():
    tok = make_tokenizer()
    engine = TorchEngine(make_model(tok, seed=3), tok)
    with running(create_app(engine, "tiny", template="native")) as url:
        yield url, engine


def test_two_turns_non_streamed_and_streamed_agree_at_temperature_0(tiny_server):
    url, engine = tiny_server
    c = client(url)
    turn = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    for _ in range(2):
        full = c.chat.completions.create(model="tiny", messages=turn, temperature=0, max_tokens=24)
        message = full.choices[0].message
        r, content, finish, usage = streamed(c, model="tiny", messages=turn, temperature=0, max_tokens=24)
        assert (r, content, finish) == (reasoning_of(message), message.content, full.choices[0].finish_reason)
        # usage matches the tokenizer: the rendered prompt (system folded in) and the tokens generated
        prompt = render([{"role": m["role"], "content": m["content"]} for m in turn], "native", engine.tokenizer)
        assert full.usage.prompt_tokens == len(engine.encode(prompt.text)) == usage.prompt_tokens
        assert full.usage.completion_tokens == usage.completion_tokens <= 24
        assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
        assert full.object == "chat.completion" and full.id.startswith("chatcmpl-") and full.model == "tiny"
        # the next turn sends the reply back with its reasoning, which the server must drop
        turn = turn + [{"role": "assistant", "content": message.content, "reasoning_content": "old thoughts"},
                       {"role": "user", "content": "And 3+4?"}]


def test_models_and_health(tiny_server):
    url, _ = tiny_server
    assert [m.id for m in client(url).models.list().data] == ["tiny"]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "DeepThink" in page.text


def test_reasoning_comes_apart_from_content_streamed_and_not():
    tok = thinking_tokenizer()
    engine = ScriptedEngine(tok, "Two and two.\n</think>\n\nThe answer is 4.")
    with running(create_app(engine, "scripted")) as url:
        c = client(url)
        ask = dict(model="scripted", messages=[{"role": "user", "content": "2+2?"}])
        message = c.chat.completions.create(**ask).choices[0].message
        assert reasoning_of(message) == "Two and two.\n" and message.content == "The answer is 4."
        assert message.model_extra["reasoning"] == "Two and two.\n"  # for clients that read `reasoning`
        # one character per token: the </think> tag arrives split over eight chunks
        assert streamed(c, **ask)[:3] == ("Two and two.\n", "The answer is 4.", "stop")
        # cut at max_tokens inside the think block: everything is reasoning, finish_reason length
        cut = c.chat.completions.create(max_tokens=5, **ask)
        assert reasoning_of(cut.choices[0].message) == "Two a" and cut.choices[0].message.content == ""
        assert cut.choices[0].finish_reason == "length"
        assert streamed(c, max_tokens=5, **ask)[:3] == ("Two a", "", "length")


class GatedEngine(ScriptedEngine):
    """A scripted engine whose every generate call waits for ``gate`` (a minute at most): requests pile up behind
    the first by construction, not because generating happened to take longer than sending them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def generate(self, *args, **kwargs):
        self.gate.wait(60)
        return super().generate(*args, **kwargs)


def test_several_requests_are_batched_together():
    tok = make_tokenizer()
    engine = GatedEngine(tok, "x" * 30)
    app = create_app(engine, "s")
    with running(app) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lambda i=i: httpx.post(url + "/v1/chat/completions", timeout=90, json={
            "messages": [{"role": "user", "content": f"hi {i}"}]}).status_code) for i in range(8)]
        try:
            until(lambda: app.state.batcher.pending == 8, 60)  # one held in generate, seven waiting behind it
        finally:
            engine.gate.set()
        codes = [f.result() for f in futures]
    assert codes == [200] * 8 and len(engine.calls) < 8 and max(engine.calls) > 1


BAD = [
    ("not json", b"{messages: oops", None),
    ("not an object", b"[1, 2]", None),
    ("nested 100k deep", b'{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}", None),
    ("no messages", b'{"model": "x"}', "messages"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("empty messages", {"messages": []}, "messages"),
    ("message not an object", {"messages": ["hi"]}, "messages[0]"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("temperature not finite", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    ("temperature infinite", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature"),
    ("temperature a string", {"temperature": "hot"}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("top_p above one", {"top_p": 1.5}, "top_p"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens a float", {"max_tokens": 2.5}, "max_tokens"),
    ("max_tokens beyond the context", {"max_tokens": 10_000}, "max_tokens"),
    ("prompt longer than the context", {"messages": [{"role": "user", "content": "word " * 200}]}, "messages"),
    ("n too large", {"n": 99}, "n"),
    ("n zero", {"n": 0}, "n"),
    ("stream not a bool", {"stream": "yes"}, "stream"),
    ("stop wrong type", {"stop": 7}, "stop"),
    ("top_k negative", {"top_k": -1}, "top_k"),
    ("seed beyond 64 bits", {"seed": 10**26}, "seed"),
    ("a lone surrogate", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ("stream_options without stream", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("include_usage not a bool", {"stream": True, "stream_options": {"include_usage": "no"}}, "include_usage"),
    ("last turn from the assistant", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
]
REFUSED = [  # what r1lab would ignore although it asks for something: refused, not answered as if applied
    ("presence_penalty not 0", {"presence_penalty": 0.5}, "presence_penalty"),
    ("frequency_penalty not 0", {"frequency_penalty": -1}, "frequency_penalty"),
    ("logprobs wanted", {"logprobs": True}, "logprobs"),
    ("top_logprobs wanted", {"top_logprobs": 3}, "top_logprobs"),
    ("logit_bias given", {"logit_bias": {"42": 10}}, "logit_bias"),
    ("a JSON response format", {"response_format": {"type": "json_object"}}, "response_format"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "add"}}]}, "tools"),
    ("a tool required", {"tool_choice": "required"}, "tool_choice"),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ("reasoning_effort", {"reasoning_effort": "low"}, "reasoning_effort"),
    ("a field OpenAI does not have", {"min_p": 0.1}, "min_p"),
]
BAD += REFUSED


@pytest.mark.parametrize("name, body, param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_400_with_an_openai_error_object(bad_server, name, body, param):
    if isinstance(body, dict):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
        body = json.dumps(body).encode()
    r = httpx.post(bad_server + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert "Traceback" not in r.text
    if name in [n for n, _, _ in REFUSED]:
        assert "r1lab serve" in error["message"] and f"leave {param} out" in error["message"]  # why, what to do


@pytest.fixture(scope="module")
def bad_server():
    tok = make_tokenizer()
    with running(create_app(ScriptedEngine(tok, "ok", context=512), "s")) as url:
        yield url


def test_unknown_route_and_method_get_error_objects(bad_server):
    assert httpx.get(bad_server + "/v1/nothing").json()["error"]["message"].startswith("no route")
    assert httpx.get(bad_server + "/v1/chat/completions").status_code == 405


def test_api_key_guards_v1_only():
    tok = make_tokenizer()
    with running(create_app(ScriptedEngine(tok, "ok"), "s", api_key="sekret")) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert client(url, api_key="sekret").models.list().data[0].id == "s"
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200


def test_fifty_clients_that_hang_up_after_the_first_chunk_leave_nothing_running():
    tok = make_tokenizer()
    engine = ScriptedEngine(tok, "y" * 2000, delay=0.005, context=4096)  # 2000 steps: ~10 s a batch if nobody stopped it
    with running(create_app(engine, "s", max_pending=64, max_batch_rows=64)) as url:
        def hang_up(i):
            with httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json={
                    "stream": True, "max_tokens": 2000, "messages": [{"role": "user", "content": f"hi {i}"}]}) as r:
                next(r.iter_lines())  # the first chunk, then close the connection
            return r.status_code

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            assert list(pool.map(hang_up, range(50))) == [200] * 50
        deadline = time.monotonic() + 60  # generous: fifty hang-ups on a busy machine; a batch left running fails
        while time.monotonic() < deadline:
            health = httpx.get(url + "/health").json()
            if health["running"] == 0 and health["pending"] == 0:
                break
            time.sleep(0.1)
        assert health["running"] == 0 and health["pending"] == 0, health
        made = engine.tokens_made
        time.sleep(0.5)
        assert engine.tokens_made == made  # no generation still going
        # stopped early (the tokens made are the measure, not the clock, which only guards against a hang)
        assert made < 50 * 2000 / 4 and time.monotonic() - t0 < 120


def test_overload_answers_429_with_retry_after_and_never_5xx():
    tok = make_tokenizer()
    engine = GatedEngine(tok, "z" * 60, delay=0.01)  # holds the first four (max_pending) however slow the clients
    with running(create_app(engine, "s", max_pending=4, max_batch_rows=2)) as url:
        def ask(i):
            r = httpx.post(url + "/v1/chat/completions", timeout=90,
                           json={"messages": [{"role": "user", "content": f"q{i}"}]})
            return r.status_code, r.headers.get("retry-after"), r.json()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(ask, i) for i in range(30)]
            try:
                until(lambda: sum(f.done() for f in futures) >= 26, 60)  # the 26 beyond the four admitted: refused
            finally:
                engine.gate.set()
            results = [f.result() for f in futures]
    codes = [code for code, _, _ in results]
    assert codes.count(429) >= 10 and codes.count(200) >= 4 and set(codes) <= {200, 429}, codes
    for code, retry, body in results:
        if code == 429:
            assert retry == "1" and body["error"]["type"] == "rate_limit_error"


def test_fields_at_values_that_change_nothing_are_accepted(bad_server):
    c = client(bad_server)
    neutral = dict(presence_penalty=0, frequency_penalty=0.0, logprobs=False, top_logprobs=0, logit_bias={},
                   response_format={"type": "text"}, tools=[], tool_choice="none", parallel_tool_calls=True,
                   user="me", store=False, metadata={"run": "1"}, service_tier="auto")
    ask = dict(model="s", messages=[{"role": "user", "content": "hi"}], **neutral)
    assert c.chat.completions.create(**ask).choices[0].message.content == "ok"
    assert streamed(c, **ask)[1:3] == ("ok", "stop")
    # include_usage: as OpenAI, usage is null on every chunk but the last, which has it and no choices
    with httpx.stream("POST", bad_server + "/v1/chat/completions", json={
            "stream": True, "stream_options": {"include_usage": True}, "messages": ask["messages"]}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1) and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3  # "o", "k", end of sequence


def test_models_retrieve_answers_for_the_served_model_only():
    tok = make_tokenizer()
    with running(create_app(ScriptedEngine(tok, "ok"), "org/tiny-r1")) as url:  # a hub id, slash and all
        c = client(url)
        model = c.models.retrieve("org/tiny-r1")
        assert (model.id, model.object, model.owned_by) == ("org/tiny-r1", "model", "r1lab")
        with pytest.raises(openai.NotFoundError) as caught:
            c.models.retrieve("gpt-4o")
        assert caught.value.body["code"] == "model_not_found" and "org/tiny-r1" in caught.value.body["message"]


def until(condition, seconds=30.0):
    """Wait for ``condition()``: generous, so a slow machine passes; a server that never gets there fails."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_client_that_hangs_up_mid_generation_stops_it_and_frees_the_server(stream):
    tok = make_tokenizer()
    engine = ScriptedEngine(tok, "y" * 5000, delay=0.01, context=8192)  # ~50 s of tokens if nobody stopped it
    with running(create_app(engine, "s")) as url:
        body = json.dumps({"stream": stream, "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]})
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:  # curl -m: send, wait, hang up
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            until(lambda: engine.tokens_made > 50)  # tokens come every 10 ms: the server is never idle
        until(lambda: httpx.get(url + "/health").json()["running"] == 0)
        made = engine.tokens_made
        time.sleep(0.3)
        assert engine.tokens_made == made < 5000  # stopped, not finished
        short = httpx.post(url + "/v1/chat/completions", timeout=30,
                           json={"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 3


def test_each_request_is_logged_in_one_line(caplog):
    tok = make_tokenizer()
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    with caplog.at_level(logging.INFO, logger="r1lab.serve"):
        with running(create_app(ScriptedEngine(tok, "four"), "s")) as url:
            usage = httpx.post(url + "/v1/chat/completions", json=ask).json()["usage"]
            httpx.post(url + "/v1/chat/completions", json={"stream": True, **ask}).raise_for_status()
            httpx.get(url + "/v1/nothing")
        with running(create_app(ScriptedEngine(tok, "four"), "quiet", access_log=False)) as url:
            httpx.post(url + "/v1/chat/completions", json=ask).raise_for_status()
    lines = [r.getMessage() for r in caplog.records if r.name == "r1lab.serve"]
    completion = r"127\.0\.0\.1:\d+ POST /v1/chat/completions 200 \d+\.\d{3}s " + re.escape(
        f"tokens {usage['prompt_tokens']}+{usage['completion_tokens']}")
    assert len(lines) == 3, lines  # the stream's line is written when it ends; the quiet server wrote none
    assert re.fullmatch(completion, lines[0]) and re.fullmatch(completion, lines[1]), lines
    assert re.fullmatch(r"127\.0\.0\.1:\d+ GET /v1/nothing 404 \d+\.\d{3}s", lines[2])


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1])
def test_any_64_bit_seed_is_answered(bad_server, seed):
    r = httpx.post(bad_server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "seed": seed, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_the_batcher_thread_runs_on_the_threads_the_engine_was_opened_with():
    """--threads 1: a new thread's OpenMP team is its own (every core), whatever torch.get_num_threads says, and vLLM's
    CPU attention fails when the batcher's thread runs on another count than the one the engine was built with."""
    import ctypes
    import glob
    import os

    gomp = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*"))
    if not gomp or (os.cpu_count() or 1) < 2:
        pytest.skip("needs torch's libgomp and two cores to tell one OpenMP team size from another")
    omp_threads = ctypes.CDLL(gomp[0]).omp_get_max_threads
    tok = make_tokenizer()
    engine = ScriptedEngine(tok, "four")
    seen, real = [], engine.generate
    engine.generate = lambda *a, **k: (seen.append(omp_threads()), real(*a, **k))[1]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with running(create_app(engine, "s")) as url:
            assert httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                  "max_tokens": 2}).status_code == 200
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
