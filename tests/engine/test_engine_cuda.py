"""The engine on a CUDA GPU: captured graphs decode what the same steps decode eagerly, graphs are reused across
calls and survive an optimizer step, bf16 rollouts of fp32 weights stay finite, and CUDA agrees with the CPU.
Skipped where torch sees no GPU."""

import copy

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine, static_decode, torch_engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def cuda_tiny(tiny):
    model, tok = tiny
    return copy.deepcopy(model).to("cuda"), tok


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def ids(out):
    return [[c.token_ids for c in g] for g in out]


def assert_same(a, b, atol=1e-5):
    assert ids(a) == ids(b)
    assert [[c.finish_reason for c in g] for g in a] == [[c.finish_reason for c in g] for g in b]
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol)


def captured(engine) -> int:
    graphs = engine._static.graphs
    assert all(g is not None for g in graphs.values()), "a capture failed and fell back to eager steps"
    return len(graphs)


@pytest.mark.parametrize("params", [
    dict(temperature=0, max_new_tokens=40),
    dict(temperature=0.8, max_new_tokens=40, seed=1),
    dict(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=40, seed=2),
])
def test_graph_replays_decode_what_the_eager_steps_decode(cuda_tiny, params):
    model, tok = cuda_tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi", "abc")
    params = SamplingParams(n=3, **params)
    eager = TorchEngine(model, tok, decode="static", cuda_graphs=False).generate(prompts, params)
    engine = TorchEngine(model, tok, sync_every=8)  # auto: the static path on CUDA
    assert_same(eager, engine.generate(prompts, params))
    graphs = captured(engine)
    assert graphs >= 1
    assert_same(eager, engine.generate(prompts, params))  # a second call replays the same graphs
    assert captured(engine) == graphs


def test_rows_ending_early_stop_strings_and_aborts_under_graphs(cuda_tiny):
    model, tok = cuda_tiny
    prompts = prompts_of(tok, "aaaa", "b", "cc")
    params = SamplingParams(n=5, temperature=1.5, max_new_tokens=30, seed=3, stop=["ab"],
                            stop_token_ids=[tok.convert_tokens_to_ids(c) for c in "eiou"])

    def abort_sample_1_after_3():
        seen = {}

        def watch(prompt, sample, token):
            seen[(prompt, sample)] = seen.get((prompt, sample), 0) + 1
            return not (prompt == 0 and sample == 1 and seen[(prompt, sample)] == 3)

        return watch

    graphed = TorchEngine(model, tok, decode="static", sync_every=4)
    a = TorchEngine(model, tok, decode="static", cuda_graphs=False, sync_every=4).generate(
        prompts, params, on_token=abort_sample_1_after_3())
    b = graphed.generate(prompts, params, on_token=abort_sample_1_after_3())
    assert_same(a, b)
    assert b[0][1].finish_reason == "abort" and len(b[0][1].token_ids) == 3
    assert len({len(c) for g in b for c in g}) > 2  # rows ended at different steps (the batch shrank)
    captured(graphed)


def test_the_cache_grows_past_its_reservation_under_graphs(cuda_tiny, monkeypatch):
    model, tok = cuda_tiny
    monkeypatch.setattr(static_decode, "CAPACITY_STEP", 8)
    monkeypatch.setattr(torch_engine, "RESERVE_TOKENS", 3)
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=40, seed=1, ignore_eos=True)
    eager = TorchEngine(model, tok, decode="static", cuda_graphs=False).generate(prompts, params)
    engine = TorchEngine(model, tok, decode="static")
    assert_same(eager, engine.generate(prompts, params))
    captured(engine)


def test_graphs_survive_an_optimizer_step_and_decode_the_new_weights(cuda_tiny):
    model, tok = cuda_tiny
    engine = TorchEngine(model, tok, dtype=torch.bfloat16)  # fp32 master weights, bf16 rollouts
    prompts = prompts_of(tok, "Hi", "abc")
    params = SamplingParams(n=2, temperature=0, max_new_tokens=24, ignore_eos=True)
    before = engine.generate(prompts, params)
    decoder, graphs = engine._fast[2], dict(engine._static.graphs)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    after = engine.generate(prompts, params)
    assert engine._fast[2] is decoder and all(engine._static.graphs[k] is g for k, g in graphs.items())
    assert_same(TorchEngine(model, tok, dtype=torch.bfloat16, cuda_graphs=False).generate(prompts, params), after)
    assert ids(after) != ids(before)


def test_bf16_rollouts_of_fp32_weights_are_finite_and_score_like_fp32(cuda_tiny):
    model, tok = cuda_tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    out = TorchEngine(model, tok, dtype=torch.bfloat16).generate(
        prompts, SamplingParams(n=4, temperature=0.8, max_new_tokens=20, seed=0))
    for prompt, group in zip(prompts, out):
        for c in group:
            logprobs = torch.tensor(c.logprobs)
            assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids], device="cuda")).logits[0].float() / 0.8
            fp32 = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(
                -1, torch.tensor(c.token_ids, device="cuda")[:, None])[:, 0].cpu()
            assert (logprobs - fp32).abs().max() < 0.05


@pytest.mark.parametrize("decode", ["static", "dynamic"])
def test_cuda_log_probs_agree_with_the_cpu_model(tiny, decode):
    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.9, max_new_tokens=20, seed=5)
    out = TorchEngine(copy.deepcopy(model).to("cuda"), tok, decode=decode).generate(prompts, params)
    for prompt, group in zip(prompts, out):
        for c in group:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0].float() / 0.9  # on the CPU
            cpu = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(c.token_ids)[:, None])
            assert torch.allclose(torch.tensor(c.logprobs), cpu[:, 0], atol=1e-4)


@pytest.mark.parametrize("engine", [dict(decode="dynamic"), dict(decode="dynamic", use_fast_decode=False),
                                    dict(decode="dynamic", compact_fraction=0.01),
                                    dict(decode="dynamic", use_fast_decode=False, dtype=torch.bfloat16)])
def test_the_dynamic_path_runs_on_cuda_and_a_seed_repeats_it(cuda_tiny, engine):
    model, tok = cuda_tiny
    prompts = prompts_of(tok, "aaaa", "b")
    params = SamplingParams(n=3, temperature=1.2, top_p=0.9, max_new_tokens=20, seed=7, stop=["ab"],
                            stop_token_ids=[tok.convert_tokens_to_ids("e")])
    first = TorchEngine(model, tok, **engine).generate(prompts, params)
    assert ids(first) == ids(TorchEngine(model, tok, **engine).generate(prompts, params))
    assert all(torch.isfinite(torch.tensor(c.logprobs)).all() for g in first for c in g)
