"""The real server on a loopback port, driven by the official openai client and by raw HTTP."""

import concurrent.futures
import json
import time

import httpx
import pytest

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


def test_several_requests_are_batched_together():
    tok = make_tokenizer()
    engine = ScriptedEngine(tok, "x" * 30, delay=0.01)
    with running(create_app(engine, "s")) as url:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: httpx.post(url + "/v1/chat/completions", timeout=30, json={
                "messages": [{"role": "user", "content": f"hi {i}"}]}).status_code, range(8)))
    assert codes == [200] * 8 and len(engine.calls) < 8 and max(engine.calls) > 1


BAD = [
    ("not json", b"{messages: oops", None),
    ("not an object", b"[1, 2]", None),
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
    ("last turn from the assistant", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
]


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
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            health = httpx.get(url + "/health").json()
            if health["running"] == 0 and health["pending"] == 0:
                break
            time.sleep(0.1)
        assert health["running"] == 0 and health["pending"] == 0, health
        made = engine.tokens_made
        time.sleep(0.5)
        assert engine.tokens_made == made  # no generation still going
        assert made < 50 * 2000 / 4 and time.monotonic() - t0 < 15


def test_overload_answers_429_with_retry_after_and_never_5xx():
    tok = make_tokenizer()
    engine = ScriptedEngine(tok, "z" * 60, delay=0.01)
    with running(create_app(engine, "s", max_pending=4, max_batch_rows=2)) as url:
        def ask(i):
            r = httpx.post(url + "/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": f"q{i}"}]})
            return r.status_code, r.headers.get("retry-after"), r.json()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            results = list(pool.map(ask, range(30)))
    codes = [code for code, _, _ in results]
    assert codes.count(429) >= 10 and codes.count(200) >= 4 and set(codes) <= {200, 429}, codes
    for code, retry, body in results:
        if code == 429:
            assert retry == "1" and body["error"]["type"] == "rate_limit_error"
