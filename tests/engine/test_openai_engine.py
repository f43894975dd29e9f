"""OpenAIEngine against real servers on loopback ports: ``r1lab serve`` (a tiny random model, or a scripted one
whose replies are known), and llama.cpp's own server (llama-cpp-python) on a tiny model exported to GGUF."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from r1lab.engine import OpenAIEngine, Prompt, SamplingParams, TorchEngine, open_engine
from r1lab.engine.base import render_prompt
from r1lab.engine.openai_engine import CONNECT_TIMEOUT, reply_text, sample_seed
from r1lab.models import save_checkpoint
from r1lab.serve.app import create_app

from conftest import make_model

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from serving import ScriptedEngine, running, thinking_tokenizer  # noqa: E402

pytest.importorskip("openai")

SCRIPT = "Adding them up.\n</think>\n\n<answer>7</answer>"


def ask(i: int) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i}+3?"}]


@pytest.fixture(scope="module")
def tiny_server():
    """r1lab serve on a tiny random model whose template opens the think block, as R1's does."""
    tok = thinking_tokenizer()
    with running(create_app(TorchEngine(make_model(tok, seed=3), tok), "tiny", access_log=False)) as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def tiny_tokenizer_folder(tmp_path_factory):
    """A saved checkpoint of the tiny model, for the engine's ``tokenizer`` option."""
    tok = thinking_tokenizer()
    return str(save_checkpoint(make_model(tok, seed=3), tok, tmp_path_factory.mktemp("tok") / "tiny"))


def test_split_reasoning_comes_back_in_r1_form_one_request_per_sample_with_usage():
    scripted = ScriptedEngine(thinking_tokenizer(), SCRIPT)
    with running(create_app(scripted, "teacher", access_log=False)) as url:
        engine = OpenAIEngine("teacher", base_url=url + "/v1", concurrency=3)
        prompts = [engine.prompt(ask(i), "native") for i in range(2)]
        assert prompts[0].messages == ({"role": "user", "content": "Be brief.\n\nWhat is 0+3?"},)
        assert prompts[0].token_ids == () and not prompts[0].thinking and prompts[0].prefill == ""
        groups = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=64))
        cut = engine.generate(prompts[:1], SamplingParams(max_new_tokens=5))[0][0]
        engine.close()
    assert [len(g) for g in groups] == [3, 3] and sum(scripted.calls) == 7  # one request (n=1) per sample
    tok = scripted.tokenizer
    for i, group in enumerate(groups):
        rendered = render_prompt(tok, ask(i), "native")  # what the server counts: its rendering, its script + EOS
        for c in group:
            assert c.prompt_index == i and c.finish_reason == "stop" and c.token_ids == [] and c.logprobs == []
            assert c.text == "<think>\nAdding them up.\n</think>\n\n<answer>7</answer>"  # reasoning_content, R1's form
            assert c.usage == {"prompt_tokens": len(rendered), "completion_tokens": len(tok.encode(SCRIPT)) + 1,
                               "retries": 0, "finish_reason": "stop"}
    # cut at the length limit inside the reasoning: the think block stays open, so no answer is read from it
    assert (cut.text, cut.finish_reason, cut.usage["completion_tokens"]) == ("<think>\nAddin", "length", 5)


def test_busy_server_429s_are_retried_with_backoff_until_every_sample_arrives():
    scripted = ScriptedEngine(thinking_tokenizer(), SCRIPT, delay=0.003)
    with running(create_app(scripted, "teacher", max_pending=1, access_log=False)) as url:
        engine = OpenAIEngine("teacher", base_url=url + "/v1", concurrency=4, backoff=0.01, max_retries=12)
        groups = engine.generate([engine.prompt(ask(i), "native") for i in range(2)],
                                 SamplingParams(n=3, max_new_tokens=64))
    completions = [c for g in groups for c in g]
    assert len(completions) == 6 and all(c.text.endswith("<answer>7</answer>") for c in completions)
    assert sum(c.usage["retries"] for c in completions) > 0  # one request at a time: the others got 429s
    assert sum(scripted.calls) == 6  # and each sample was generated once


def test_the_servers_reasoning_is_read_and_seeded_samples_differ_and_repeat(tiny_server):
    import openai

    engine = OpenAIEngine("tiny", base_url=tiny_server, concurrency=4)
    prompts = [engine.prompt(ask(i), "native") for i in range(2)]
    (mine,), = engine.generate(prompts[:1], SamplingParams(max_new_tokens=12, seed=7), stream_ids=[10])
    raw = openai.OpenAI(base_url=tiny_server, api_key="unused").chat.completions.create(  # the same request by hand
        model="tiny", messages=ask(0), temperature=1.0, top_p=1.0, max_tokens=12, seed=sample_seed(7, 10, 0))
    choice = raw.choices[0]
    reasoning = choice.message.model_extra["reasoning_content"]  # the template opened <think>: all of it reasoning
    assert reasoning and mine.text == reply_text(reasoning, choice.message.content, choice.finish_reason)
    assert mine.text.startswith("<think>\n" + reasoning.strip()) and mine.finish_reason == choice.finish_reason
    assert mine.usage["completion_tokens"] == raw.usage.completion_tokens

    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    first = engine.generate(prompts[:2], params, stream_ids=[10, 11])
    again = engine.generate(prompts[1:2], params, stream_ids=[11])  # alone in its call: the same samples
    assert [c.text for c in again[0]] == [c.text for c in first[1]]
    assert all(len({c.text for c in group}) == 2 for group in first)  # each sample its own seed
    other = engine.generate(prompts[1:2], SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=8), None, [11])
    assert [c.text for c in other[0]] != [c.text for c in first[1]]


def test_a_local_tokenizer_gives_token_ids_and_on_token_sees_them(tiny_server, tiny_tokenizer_folder):
    engine = open_engine("tiny", "openai", {"base_url": tiny_server, "tokenizer": tiny_tokenizer_folder})
    prompt = engine.prompt(ask(1), "native")
    params = SamplingParams(max_new_tokens=12, seed=1)  # sampled: this random model's greedy tokens are special
    (whole,), = engine.generate([prompt], params)
    assert whole.token_ids == engine.encode(whole.text) and whole.token_ids
    seen = []
    (cut,), = engine.generate([prompt], params, on_token=lambda i, j, t: seen.append(t) or len(seen) < 3)
    assert seen == whole.token_ids[:3] and cut.token_ids == whole.token_ids[:3] and cut.finish_reason == "abort"
    assert whole.text.startswith(cut.text)


def test_errors_name_the_endpoint_and_what_to_check(tiny_server, tiny_tokenizer_folder):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    engine = OpenAIEngine("tiny", base_url=dead, max_retries=2, backoff=0.01)
    with pytest.raises(ConnectionError, match=rf"{dead} \(model 'tiny'\) failed after 2 retries: APIConnectionError"):
        engine.generate([engine.prompt(ask(0), "native")], SamplingParams(max_new_tokens=4))
    no_v1 = OpenAIEngine("tiny", base_url=tiny_server.removesuffix("/v1"), max_retries=0)
    with pytest.raises(ConnectionError, match=r"NotFoundError.*usually ends in /v1"):  # 404: not retried
        no_v1.generate([no_v1.prompt(ask(0), "native")], SamplingParams(max_new_tokens=4))
    completions = OpenAIEngine("tiny", base_url=tiny_server, api="completions", tokenizer=tiny_tokenizer_folder)
    with pytest.raises(ConnectionError, match=r"404.*does it serve the completions API"):  # r1lab serve: chat only
        completions.generate([completions.prompt(ask(0), "native")], SamplingParams(max_new_tokens=4))
    asks_logprobs = OpenAIEngine("tiny", base_url=tiny_server, logprobs=True)
    with pytest.raises(ConnectionError, match=r"BadRequestError.*logprobs is not supported by r1lab serve"):
        asks_logprobs.generate([asks_logprobs.prompt(ask(0), "native")], SamplingParams(max_new_tokens=4))


def test_what_an_endpoint_cannot_do_is_refused_with_what_to_do_instead(tiny_server):
    engine = OpenAIEngine("tiny", base_url=tiny_server)
    assert engine.tokenizer is None and engine.context_length == 512  # the model card r1lab serve gives (max_model_len)
    assert OpenAIEngine("another", base_url=tiny_server).context_length is None  # a card it does not hold
    with pytest.raises(ValueError, match="cannot be sent; leave the prefill out, or use engine_args {api: completions"):
        engine.prompt(ask(0), "native", prefill="<think>\nOkay")
    with pytest.raises(ValueError, match="template='r1' renders the prompt text itself.*use --template native or "
                                         "native-zero"):
        engine.prompt(ask(0), "r1")
    with_instruction = engine.prompt(ask(0), "native-zero").messages[-1]["content"]  # the server's template, R1-Zero's
    assert with_instruction.startswith("A conversation between User and Assistant") and with_instruction.endswith(
        ask(0)[-1]["content"])
    with pytest.raises(ValueError, match="no tokenizer.*give the engine arg tokenizer"):
        engine.encode("hello")
    with pytest.raises(ValueError, match="make each prompt with engine.prompt"):
        engine.generate([[1, 2, 3]], SamplingParams())
    with pytest.raises(ValueError, match="cannot take trained weights: sample for training with --engine torch"):
        engine.load_weights([])
    engine.sleep(), engine.wake_up()  # nothing to give back
    with pytest.raises(ValueError, match="api=completions renders prompts here and needs the model's tokenizer"):
        OpenAIEngine("tiny", base_url=tiny_server, api="completions")
    with pytest.raises(ValueError, match=r"base_url=None.*concurrency=0"):
        OpenAIEngine("tiny", concurrency=0)
    with pytest.raises(ValueError, match="engine 'openai' takes no 'max_rows'"):
        open_engine("tiny", "openai", {"base_url": tiny_server, "max_rows": 3})
    # a reply is not streamed, so it may take max_tokens at 10 tokens/s (at least 600 s); a dead host fails fast
    assert engine.request_timeout(32768) >= 3276 and engine.request_timeout(64) == 600 and CONNECT_TIMEOUT <= 10
    assert OpenAIEngine("tiny", base_url=tiny_server, timeout=30).request_timeout(32768) == 30


def test_ctrl_c_returns_at_once_and_abandons_the_requests_in_flight():
    slow = ScriptedEngine(thinking_tokenizer(), "x" * 100, delay=0.3)  # 30 s a reply (until the delay is lifted)
    app = create_app(slow, "slow", access_log=False)
    with running(app) as url:
        engine = OpenAIEngine("slow", base_url=url + "/v1", concurrency=2)
        prompts = [engine.prompt(ask(i), "native") for i in range(4)]
        sent = {}

        def ctrl_c_once_both_are_generating():
            deadline = time.monotonic() + 20
            while slow.tokens_made < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            sent["at"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=ctrl_c_once_both_are_generating, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            engine.generate(prompts, SamplingParams(max_new_tokens=100))
        took = time.monotonic() - sent["at"]
        slow.delay = 0  # the abandoned requests may finish now
        deadline = time.monotonic() + 10
        while app.state.batcher.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        engine.close()
    assert took < 10, f"Ctrl-C took {took:.1f} s"  # the two requests in flight (30 s each) were not awaited
    assert sum(slow.calls) == 2  # and the other two were never sent


# ------------------------------------------------------------------------------------------------ llama.cpp's server
@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on a tiny random Llama (byte-level BPE, ChatML) exported to GGUF
    f16: ``(base url, checkpoint folder)``."""
    pytest.importorskip("llama_cpp.server", reason="llama.cpp's server: pip install 'llama-cpp-python[server]'")
    from test_export import byte_tokenizer, tiny_model  # tests/, importable as conftest is

    from r1lab.export import export_model

    folder = tmp_path_factory.mktemp("llama")
    tok = byte_tokenizer()
    model = tiny_model(tok)
    with torch.no_grad():  # replies in printable ASCII, so their text, what a server returns, keeps every token
        for i in range(model.get_input_embeddings().weight.shape[0]):
            text = tok.decode([i]) if i < len(tok) else ""
            printable = text.isascii() and text.isprintable() and text and i not in tok.all_special_ids
            if not printable and i != tok.eos_token_id:
                model.get_input_embeddings().weight[i] = 0  # tied: its logit is 0, below the best of the rest
    checkpoint = save_checkpoint(model, tok, folder / "final", meta={"template": "native", "prefill": None})
    export_model(str(checkpoint), str(folder / "tiny.gguf"), check=False, log=lambda _: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (folder / "server.log").open("w") as log:  # a file: a pipe nobody reads would fill and stall the server
        server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(folder / "tiny.gguf"),
                                   "--model_alias", "tiny", "--host", "127.0.0.1", "--port", str(port), "--n_ctx",
                                   "256", "--n_threads", "1"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"llama.cpp's server died: {(folder / 'server.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "llama.cpp's server did not start in 60 s"
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, str(checkpoint)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_llama_cpp_server_greedy_replies_are_r1labs_own(llama_server, api):
    """The same greedy tokens as r1lab's engine on the checkpoint: through the chat API the server renders the
    GGUF's template (r1lab's, written by the export); through the completions API r1lab renders the prompt. The
    server's default repeat_penalty (1.1) is switched off through extra_body: with it, temperature 0 is not greedy."""
    url, checkpoint = llama_server
    engine = OpenAIEngine("tiny", base_url=url, api=api, tokenizer=checkpoint, concurrency=3,
                          extra_body={"repeat_penalty": 1.0})
    local = open_engine(checkpoint, "torch", device="cpu", dtype="fp32")
    params = SamplingParams(temperature=0, max_new_tokens=12)
    mine = local.generate([local.prompt(ask(i), "native") for i in range(3)], params)
    theirs = engine.generate([engine.prompt(ask(i), "native") for i in range(3)], params)
    for i, ((m,), (t,)) in enumerate(zip(mine, theirs)):
        assert (t.text, t.token_ids, t.finish_reason) == (m.text, m.token_ids, m.finish_reason)
        assert t.usage["prompt_tokens"] == len(local.prompt(ask(i), "native"))  # the server saw r1lab's prompt


def test_llama_cpp_server_honours_each_samples_seed(llama_server):
    url, checkpoint = llama_server
    engine = OpenAIEngine("tiny", base_url=url, tokenizer=checkpoint, concurrency=2)
    prompt = engine.prompt(ask(0), "native")
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    first = [c.text for c in engine.generate([prompt], params, stream_ids=[4])[0]]
    again = [c.text for c in engine.generate([prompt], params, stream_ids=[4])[0]]
    assert first == again and len(set(first)) == 3  # each sample its own seed, the same one each time


def test_a_stop_string_to_keep_is_cut_here_so_every_server_keeps_it_and_a_key_error_names_the_variable(monkeypatch):
    scripted = ScriptedEngine(thinking_tokenizer(), SCRIPT + " and more after it")
    with running(create_app(scripted, "teacher", access_log=False, api_key="right")) as url:
        monkeypatch.setenv("MY_KEY", "right")
        engine = OpenAIEngine("teacher", base_url=url + "/v1", api_key_env="MY_KEY")
        prompt = engine.prompt(ask(0), "native")
        kept, = engine.generate([prompt], SamplingParams(max_new_tokens=64, stop=["</answer>"],
                                                         include_stop_str_in_output=True))[0]
        dropped, = engine.generate([prompt], SamplingParams(max_new_tokens=64, stop=["</answer>"]))[0]
        engine.close()
        monkeypatch.delenv("MY_KEY")
        keyless = OpenAIEngine("teacher", base_url=url + "/v1", api_key_env="MY_KEY")
        with pytest.raises(ConnectionError, match=r"read from \$MY_KEY, which is not set, so 'unused' was sent"):
            keyless.generate([prompt], SamplingParams(max_new_tokens=4))
        keyless.close()
    # r1lab serve (like OpenAI and llama.cpp) does not say which stop string it matched: after its first reply
    # shows that, the engine stops sending the ones to keep and cuts the reply at them itself
    assert kept.text.endswith("<answer>7</answer>") and kept.finish_reason == "stop"
    assert engine.names_stop is False
    assert dropped.text.endswith("<answer>7") and dropped.finish_reason == "stop"  # OpenAI's stop: left out


def test_a_stop_string_to_keep_is_sent_and_put_back_where_the_server_names_the_one_it_matched(tiny_tokenizer_folder):
    from openai.types import Completion as Reply

    engine = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", api="completions", tokenizer=tiny_tokenizer_folder)
    assert engine._body([1, 2], SamplingParams(stop=["</answer>"], include_stop_str_in_output=True))["stop"] == \
        ["</answer>"]  # the server stops there: no tokens paid for past it

    def reply(text, finish="stop", **extra):
        return Reply.model_validate({"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "text": text, "finish_reason": finish, "logprobs": None, **extra}]})

    stop = ["</answer>", "</think>"]
    named = engine._completion(0, reply("<answer>7", stop_reason="</answer>"), 0, stop, sent_stop=True)
    sglang = engine._completion(0, reply("<answer>7", matched_stop="</answer>"), 0, stop, sent_stop=True)
    at_eos = engine._completion(0, reply("<answer>7", stop_reason=None), 0, stop, sent_stop=True)
    assert (named.text, sglang.text, at_eos.text) == ("<answer>7</answer>",) * 2 + ("<answer>7",)
    assert engine.names_stop is True
    cut = engine._completion(0, reply("7", finish="length"), 0, stop, sent_stop=True)
    assert (cut.text, cut.finish_reason) == ("7", "length")
    from r1lab.engine.openai_engine import _UnnamedStop
    with pytest.raises(_UnnamedStop):  # ended at a stop, but at which? the engine asks again without them
        engine._completion(0, reply("<answer>7"), 0, stop, sent_stop=True)


def test_eval_through_an_endpoint_cuts_the_budget_to_its_context_and_counts_its_tokens(tmp_path):
    import json

    from r1lab.config import EvalConfig
    from r1lab.evaluate.runner import run_eval

    tok = thinking_tokenizer()
    model = make_model(tok, seed=3)
    model.config.max_position_embeddings = 160  # a short context: few tokens to generate
    with running(create_app(TorchEngine(model, tok), "tiny", access_log=False)) as url:
        cfg = EvalConfig(model="tiny", engine="openai", base_url=url + "/v1", benchmarks=["task:arithmetic"],
                         task_args={"n_test": 2, "n_train": 2}, greedy=True, out=str(tmp_path / "eval"))
        summary = run_eval(cfg, progress=False)  # 32,768 new tokens asked for: r1lab serve refuses beyond 160
    rows = [json.loads(line) for line in (tmp_path / "eval" / "task-arithmetic" / "samples.jsonl").open()]
    assert len(rows) == 2 and all(0 < r["tokens"] < 160 for r in rows)  # as the server counted them
    assert summary["engine"] == f"openai {url}/v1" and summary["benchmarks"]["task:arithmetic"]["mean_tokens"] > 0


def test_bad_option_values_are_refused_naming_the_option_and_a_bos_the_server_adds_is_not_sent_twice(
        tiny_tokenizer_folder):
    from r1lab.engine import check_engine

    url = {"base_url": "http://127.0.0.1:9/v1"}
    for bad, said in [({"tokenizer": 123}, "tokenizer=123"), ({"timeout": float("inf")}, "timeout=inf"),
                      ({"backoff": float("nan")}, "backoff=nan"), ({"extra_body": {"model": "x"}}, "extra_body: model"),
                      ({"max_tokens_field": "n"}, "max_tokens_field='n'"),
                      ({"api": "completions", "tokenizer": "x", "max_tokens_field": "max_completion_tokens"},
                       "chat-API field")]:
        with pytest.raises(ValueError, match=said):
            check_engine("openai", {**url, **bad})
    engine = OpenAIEngine("m", api="completions", tokenizer=tiny_tokenizer_folder, **url)
    body = OpenAIEngine("m", max_tokens_field="max_completion_tokens", **url)._body(
        Prompt((), ({"role": "user", "content": "hi"},), "hi"), SamplingParams(max_new_tokens=7))
    assert "max_tokens" not in body and body["extra_body"]["max_completion_tokens"] == 7

    class AddsBos:  # a tokenizer whose encoding starts with its BOS, as Llama's does
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1, 5]}

    engine.tokenizer = AddsBos()
    assert engine._server_text("<s>[INST] hi") == "[INST] hi"  # the server adds its own
    engine.tokenizer.__class__.__call__ = lambda self, text, add_special_tokens=True: {"input_ids": [5]}
    assert engine._server_text("<s>[INST] hi") == "<s>[INST] hi"  # it would not: the template's stays
