"""The static decode path (state on the device, sampling without host syncs, CUDA graphs on a GPU), run eagerly on
the CPU: it must give the dynamic path's completions token for token, and its log-probs to rounding."""

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine, onednn, static_decode, torch_engine
from r1lab.engine.sampling import inverse_cdf, sample, top_k_top_p, top_k_top_p_sorted


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def assert_same(dynamic, static, atol=1e-5):
    assert len(dynamic) == len(static)
    for group_d, group_s in zip(dynamic, static):
        assert len(group_d) == len(group_s)
        for d, s in zip(group_d, group_s):
            assert (s.prompt_index, s.token_ids, s.finish_reason, s.text) == \
                   (d.prompt_index, d.token_ids, d.finish_reason, d.text)
            assert torch.allclose(torch.tensor(s.logprobs), torch.tensor(d.logprobs), atol=atol)


def run_both(model, tok, prompts, params, on_token=None, **static_kwargs):
    dynamic = TorchEngine(model, tok, decode="dynamic").generate(prompts, params, on_token=on_token)
    engine = TorchEngine(model, tok, decode="static", **static_kwargs)
    return dynamic, engine.generate(prompts, params, on_token=on_token), engine


# (prompts, params): each a behaviour both paths must share; the "e" stop id and high temperatures make rows end at
# different steps
CASES = {
    "greedy": (("What is 2+3?", "Hi"), dict(n=2, temperature=0, max_new_tokens=14)),
    "sampled": (("What is 2+3?", "Hi", "abc"), dict(n=3, temperature=0.8, max_new_tokens=14, seed=1)),
    "top_p": (("What is 2+3?", "Hi"), dict(n=4, temperature=1.2, top_p=0.7, max_new_tokens=14, seed=2)),
    "top_k_top_p": (("x", "yy"), dict(n=3, temperature=0.7, top_k=10, top_p=0.9, max_new_tokens=14, seed=4)),
    "stop_id": (("aaaa", "b", "cc"), dict(n=5, temperature=1.5, max_new_tokens=20, seed=3, stop_token_ids=["e"])),
    "stop_strings": (("aaaa", "b", "cc"), dict(n=3, temperature=1.5, max_new_tokens=20, seed=5, stop=["e", "ab"])),
    "stop_string_kept": (("aaaa", "b"), dict(n=3, temperature=1.5, max_new_tokens=20, seed=6, stop=["e"],
                                             include_stop_str_in_output=True)),
    "ignore_eos": (("Q", "rst"), dict(n=2, temperature=3.0, max_new_tokens=20, seed=8, ignore_eos=True)),
    "eos": (("Q", "rst"), dict(n=4, temperature=3.0, max_new_tokens=30, seed=8)),
}


def case(tok, name):
    texts, kwargs = CASES[name]
    if "stop_token_ids" in kwargs:
        kwargs = {**kwargs, "stop_token_ids": [tok.convert_tokens_to_ids(t) for t in kwargs["stop_token_ids"]]}
    return prompts_of(tok, *texts), SamplingParams(**kwargs)


@pytest.mark.parametrize("sync_every", [1, 6])  # every token; blocks that do not divide max_new_tokens
@pytest.mark.parametrize("name", list(CASES))
def test_the_static_path_gives_the_dynamic_paths_completions(tiny, name, sync_every):
    model, tok = tiny
    prompts, params = case(tok, name)
    dynamic, static, _ = run_both(model, tok, prompts, params, sync_every=sync_every)
    assert_same(dynamic, static)


def test_the_eos_case_ends_rows_at_different_steps(tiny):
    model, tok = tiny
    prompts, params = case(tok, "eos")
    out = TorchEngine(model, tok, decode="static").generate(prompts, params)
    lengths = {len(c) for g in out for c in g}
    assert len(lengths) > 2 and {c.finish_reason for g in out for c in g} == {"stop", "length"}


def test_rows_that_fit_a_smaller_bucket_are_compacted(tiny, monkeypatch):
    model, tok = tiny
    moves = []
    compact = static_decode.StaticDecoding._compact

    def spy(self, buf, slots, live):
        slots, B = compact(self, buf, slots, live)
        moves.append((len(live), B))
        return slots, B

    monkeypatch.setattr(static_decode.StaticDecoding, "_compact", spy)
    prompts = prompts_of(tok, "aaaa", "b", "cc")  # 15 rows: bucket 16
    params = SamplingParams(n=5, temperature=3.0, max_new_tokens=20, seed=3,
                            stop_token_ids=[tok.convert_tokens_to_ids(c) for c in "aeiou0123"])
    dynamic, static, _ = run_both(model, tok, prompts, params, sync_every=2)
    assert_same(dynamic, static)
    assert len(moves) >= 2 and all(live <= B < 16 for live, B in moves)  # 16 -> 8 -> 4 ...


def test_on_token_sees_each_token_in_order_and_an_abort_keeps_nothing_after_it(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=3, ignore_eos=True)
    runs = {}
    for decode in ("dynamic", "static"):
        seen = {}

        def watch(prompt, sample, token, seen=seen):
            seen.setdefault((prompt, sample), []).append(token)
            return not (prompt == 1 and sample == 0 and len(seen[(1, 0)]) == 4)  # stop this one after 4 tokens

        out = TorchEngine(model, tok, decode=decode, sync_every=5).generate(prompts, params, on_token=watch)
        runs[decode] = out
        for i in range(2):
            for j in range(2):
                assert seen[(i, j)] == out[i][j].token_ids  # streamed = returned, nothing after an abort
        assert out[1][0].finish_reason == "abort" and len(out[1][0].token_ids) == 4
    assert_same(runs["dynamic"], runs["static"])


def test_a_generation_past_the_reservation_grows_the_cache_and_widens_attention(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(static_decode, "CAPACITY_STEP", 8)  # windows of 8, 16, 32 columns
    monkeypatch.setattr(torch_engine, "RESERVE_TOKENS", 3)  # room for 3 new tokens: the cache grows twice
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=24, seed=1, ignore_eos=True)
    dynamic, static, engine = run_both(model, tok, prompts, params, sync_every=4)
    assert_same(dynamic, static)
    width = max(len(p) for p in prompts)
    assert engine._static.buffers.capacity == -(-(width + 24) // 8) * 8


def test_more_prompts_than_one_batch_are_decoded_in_chunks(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, "a", "bb", "What is 2+3?", "Hi", "zz")
    params = SamplingParams(n=2, temperature=0, max_new_tokens=10)
    dynamic = TorchEngine(model, tok, decode="dynamic", max_batch=4).generate(prompts, params)
    static = TorchEngine(model, tok, decode="static", max_batch=4).generate(prompts, params)
    assert_same(dynamic, static)
    assert [g[0].prompt_index for g in static] == [0, 1, 2, 3, 4]


def test_buffers_are_kept_for_the_next_call_that_fits(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok, decode="static")
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=0)
    first = engine.generate(prompts_of(tok, "Hi", "abc"), params)
    buffers = engine._static.buffers
    again = engine.generate(prompts_of(tok, "Hi", "abc"), params)
    assert engine._static.buffers is buffers  # the same addresses: captured graphs would be replayed
    assert_same(first, again, atol=0)
    engine.generate(prompts_of(tok, "x"), params)  # fewer rows fit too
    assert engine._static.buffers is buffers
    engine.generate(prompts_of(tok, *"abcdefghijk"), params)  # 22 rows do not
    assert engine._static.buffers is not buffers and engine._static.buffers.rows >= 22


def test_a_weight_update_refreshes_the_snapshot_in_place(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok, decode="static", dtype=torch.bfloat16)  # a plain (not oneDNN) snapshot
    prompts, params = prompts_of(tok, "Hi", "abc"), SamplingParams(n=2, temperature=0, max_new_tokens=8)
    before = engine.generate(prompts, params)
    decoder, buffers = engine._fast[2], engine._static.buffers
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # in place, as an optimizer step
    after = engine.generate(prompts, params)
    assert engine._fast[2] is decoder and engine._static.buffers is buffers  # graphs would stay valid
    assert_same(TorchEngine(model, tok, decode="static", dtype=torch.bfloat16).generate(prompts, params), after,
                atol=0)
    assert [c.token_ids for g in after for c in g] != [c.token_ids for g in before for c in g]


def test_the_decode_option_is_checked(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="decode="):
        TorchEngine(model, tok, decode="graphs")
    with pytest.raises(ValueError, match="fast decoder"):
        TorchEngine(model, tok, decode="static", use_fast_decode=False)
    assert TorchEngine(model, tok).generate(prompts_of(tok, "Hi"), SamplingParams(max_new_tokens=2))  # auto: CPU


@pytest.mark.parametrize("params", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_p=0.9),
                                    dict(temperature=1.3, top_p=0.5), dict(temperature=1.0, top_k=50),
                                    dict(temperature=0.6, top_k=400, top_p=0.95)])
def test_the_sync_free_sampler_picks_what_sample_picks_for_the_same_uniforms(params):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3000, generator=g) * 3  # (B, V), V not a multiple of the CDF block
    logits[::4] *= 0.05  # nearly flat rows: the nucleus reaches past the 256 candidates
    uniform = torch.rand(64, generator=g)
    sp = SamplingParams(**params)
    token, logprob = sample(logits, sp, uniform)
    token_free, logprob_free = sample(logits, sp, uniform, sync_free=True)
    assert torch.equal(token, token_free)
    assert torch.allclose(logprob, logprob_free, atol=1e-6)


@pytest.mark.parametrize("top_k", [0, 7, 2999])
@pytest.mark.parametrize("top_p", [0.5, 0.95, 1.0])
def test_the_sorted_filter_keeps_what_the_candidate_search_keeps(top_k, top_p):
    g = torch.Generator().manual_seed(top_k)
    logits = torch.randn(16, 3000, generator=g) * 4
    logits[::3] *= 0.01  # nucleus wider than the candidates
    assert torch.equal(top_k_top_p_sorted(logits, top_k, top_p), top_k_top_p(logits, top_k, top_p))


def test_the_sync_free_inverse_cdf_samples_the_distribution_and_never_a_zero():
    torch.manual_seed(0)
    probs = torch.tensor([0.05, 0.0, 0.25, 0.1, 0.0, 0.3, 0.15, 0.1, 0.05, 0.0])
    u = torch.rand(200_000)
    tokens = inverse_cdf(probs.expand(len(u), -1).contiguous(), u, block=4, sync_free=True)
    freq = torch.bincount(tokens, minlength=10).float() / len(u)
    assert torch.allclose(freq, probs, atol=0.005)
    # u = 0 before a zero block, and u just below 1 past the last entry with probability: the two-level search
    # lands on zero-probability entries there; the repair picks the nearest entries that have probability
    edge = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0]] * 2)
    picked = inverse_cdf(edge, torch.tensor([0.0, 1 - 2 ** -24]), block=2, sync_free=True)
    assert picked.tolist() == [4, 5]


class RecordedStep:
    """Stands in for a CUDA graph on the CPU: ``replay`` runs the step with everything bound when it was recorded
    (decoder, buffers, batch, window, sampling), so replaying it after any of those changed decodes wrongly here,
    as a real graph would."""

    def __init__(self, step):
        self.step = step

    def replay(self):
        self.step()


@pytest.fixture
def recorded(monkeypatch):
    """The graph bookkeeping of the static path on the CPU, with :class:`RecordedStep` for graphs; yields the keys
    captured."""
    captures = []

    def capture(self, step, key):
        captures.append(key)
        return RecordedStep(step)

    monkeypatch.setattr(static_decode.StaticDecoding, "_captures", lambda self, buf: self.cuda_graphs)
    monkeypatch.setattr(static_decode.StaticDecoding, "_on_side_stream", lambda self, step: step())
    monkeypatch.setattr(static_decode.StaticDecoding, "_capture", capture)
    return captures


# a oneDNN-packed snapshot (rebuilt after a weight change) and a plain one (refreshed in place)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recorded_steps_are_replayed_across_calls_until_what_they_recorded_changes(tiny, recorded, monkeypatch,
                                                                                  dtype):
    model, tok = tiny
    monkeypatch.setattr(static_decode, "CAPACITY_STEP", 8)  # several attention windows per call
    monkeypatch.setattr(torch_engine, "RESERVE_TOKENS", 8)  # long generations grow the cache
    eager = TorchEngine(model, tok, decode="static", cuda_graphs=False, dtype=dtype, sync_every=4)
    graphed = TorchEngine(model, tok, decode="static", dtype=dtype, sync_every=4)

    def both(prompts, params):
        assert_same(eager.generate(prompts, params), graphed.generate(prompts, params), atol=0)

    two = prompts_of(tok, "What is 2+3?", "Hi")
    sampled = SamplingParams(n=3, temperature=1.5, top_p=0.9, max_new_tokens=20, seed=1,
                             stop_token_ids=[tok.convert_tokens_to_ids(c) for c in "eiou"])
    both(two, sampled)  # the cache grows during this call; the next one starts with the grown buffers
    assert recorded and all(key[0] in (8, 4, 2, 1) for key in recorded)  # 6 rows: bucket 8, then compacted
    both(two, sampled)
    count = len(recorded)
    both(two, sampled)
    assert len(recorded) == count  # the same shapes: every step replayed
    both(two, SamplingParams(n=3, temperature=0, max_new_tokens=20))  # another sampling mode: new graphs
    both(two, SamplingParams(n=3, temperature=1.5, max_new_tokens=20, seed=1))  # no top-p: others still
    both(prompts_of(tok, *"abcdefgh"), sampled)  # more rows: new buffers, every graph recaptured
    long = SamplingParams(n=2, temperature=0.8, max_new_tokens=60, seed=2, ignore_eos=True)
    both(two, long)  # the cache grows
    both(two, long)
    count = len(recorded)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # an optimizer step
    both(two, long)
    assert (len(recorded) == count) == (dtype == torch.bfloat16 or not onednn.available())
