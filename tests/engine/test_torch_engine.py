import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine, onednn


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_logprobs_equal_teacher_forced_forward(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    prompts = prompts_of(tok, "What is 2+3?", "Hi")  # different lengths: exercises left padding
    out = engine.generate(prompts, SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=1))
    for prompt, group in zip(prompts, out):
        assert len(group) == 3
        for c in group:
            ids = torch.tensor([prompt + c.token_ids])
            logits = model(ids).logits[0].float() / 0.8
            logp = torch.log_softmax(logits, -1)
            expected = [logp[len(prompt) + j - 1, t].item() for j, t in enumerate(c.token_ids)]
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(expected), atol=1e-4)


def test_seed_makes_it_reproducible_and_samples_differ(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=7)
    a = engine.generate(prompts_of(tok, "abc"), params)
    b = engine.generate(prompts_of(tok, "abc"), params)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1  # the n samples are not copies of one another


def test_greedy_matches_hf_generate(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    prompt = prompts_of(tok, "hello there")[0]
    ours = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=8))[0][0]
    ref = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=[],
                         pad_token_id=tok.pad_token_id)
    assert ours.token_ids == ref[0, len(prompt):].tolist()[:len(ours.token_ids)]


def test_max_new_tokens_gives_length_finish(tiny):
    model, tok = tiny
    c = TorchEngine(model, tok).generate(prompts_of(tok, "x"), SamplingParams(max_new_tokens=5, seed=0))[0][0]
    assert c.finish_reason in ("length", "stop")
    if c.finish_reason == "length":
        assert len(c.token_ids) == 5


def test_stop_token_and_stop_string(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    prompt = prompts_of(tok, "the quick")[0]
    free = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=20))[0][0]
    assert len(free.token_ids) >= 4
    # a stop id: the greedy path's 3rd token ends generation right there
    stop_id = free.token_ids[2]
    first = free.token_ids.index(stop_id)
    c = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=[stop_id]))[0][0]
    assert c.finish_reason == "stop" and c.token_ids == free.token_ids[:first + 1]
    # a stop string: the text of tokens 2..3 of the greedy path
    stop = tok.decode(free.token_ids[2:4])
    cut = free.text.find(stop)
    for include in (False, True):
        c = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=20, stop=[stop],
                                                     include_stop_str_in_output=include))[0][0]
        assert c.finish_reason == "stop"
        assert c.text == free.text[:cut + (len(stop) if include else 0)]


def test_finished_rows_are_compacted_and_results_stay_in_order(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok, compact_fraction=0.01)  # compact as soon as any row finishes
    prompts = prompts_of(tok, "aaaa", "b", "cc")
    params = SamplingParams(n=5, temperature=1.5, max_new_tokens=30, seed=3, stop_token_ids=[tok.convert_tokens_to_ids("e")])
    out = engine.generate(prompts, params)
    slow = TorchEngine(model, tok, compact_fraction=1e9).generate(prompts, params)  # never compacts
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in slow]
    assert [g[0].prompt_index for g in out] == [0, 1, 2]


def test_top_k_one_is_greedy(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    prompt = prompts_of(tok, "zz")
    greedy = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=6))[0][0].token_ids
    topk = engine.generate(prompt, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=6, seed=5))[0][0].token_ids
    assert greedy == topk


def test_bad_params_are_refused():
    import pytest

    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"n": 0}, {"temperature": float("nan")}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_two_level_inverse_cdf_samples_the_distribution():
    from r1lab.engine.sampling import inverse_cdf

    torch.manual_seed(0)
    probs = torch.tensor([0.05, 0.0, 0.25, 0.1, 0.0, 0.3, 0.15, 0.1, 0.05, 0.0])  # V=10, not a block multiple
    u = torch.rand(200_000)
    tokens = inverse_cdf(probs.expand(len(u), -1).contiguous(), u, block=4)
    freq = torch.bincount(tokens, minlength=10).float() / len(u)
    assert torch.allclose(freq, probs, atol=0.005)
    assert freq[probs == 0].sum() == 0  # never a zero-probability token


def test_fast_decode_matches_the_hf_forward_path(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=3, temperature=0.9, max_new_tokens=12, seed=4, stop_token_ids=[tok.convert_tokens_to_ids("e")])
    fast = TorchEngine(model, tok).generate(prompts, params)
    slow = TorchEngine(model, tok, use_fast_decode=False).generate(prompts, params)
    for gf, gs in zip(fast, slow):
        for a, b in zip(gf, gs):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_a_generation_longer_than_the_kv_reservation_grows_the_cache(tiny, monkeypatch):
    from r1lab.engine import torch_engine

    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=20, seed=1, ignore_eos=True)
    reserved = TorchEngine(model, tok).generate(prompts, params)
    monkeypatch.setattr(torch_engine, "RESERVE_TOKENS", 3)  # rows outgrow the buffer and it doubles, twice
    grown = TorchEngine(model, tok).generate(prompts, params)
    for ga, gb in zip(reserved, grown):
        for a, b in zip(ga, gb):
            assert a.token_ids == b.token_ids and len(a.token_ids) == 20
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_on_token_sees_every_token_and_can_stop_one_sample(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=3, ignore_eos=True)
    plain = TorchEngine(model, tok).generate(prompts, params)
    seen = {}

    def watch(prompt, sample, token):
        seen.setdefault((prompt, sample), []).append(token)
        return not (prompt == 1 and sample == 0 and len(seen[(1, 0)]) == 4)  # stop this one after 4 tokens

    watched = TorchEngine(model, tok).generate(prompts, params, on_token=watch)
    for i in range(2):
        for j in range(2):
            assert seen[(i, j)] == watched[i][j].token_ids
            if (i, j) == (1, 0):
                assert watched[i][j].finish_reason == "abort" and watched[i][j].token_ids == plain[i][j].token_ids[:4]
            else:
                assert watched[i][j].token_ids == plain[i][j].token_ids  # the others are untouched


def _nucleus_by_full_sort(logits, top_p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    p = torch.softmax(sorted_logits, dim=-1)
    drop = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, p.cumsum(-1) - p > top_p)
    return logits.masked_fill(drop, float("-inf"))


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])  # flat (nucleus past the candidates) to peaked
@pytest.mark.parametrize("top_p", [0.5, 0.95, 0.999])
def test_nucleus_from_candidates_equals_the_full_sort(scale, top_p):
    from r1lab.engine.sampling import top_k_top_p

    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(16, 3000, generator=g) * scale
    logits[::3] *= 0.01  # some rows nearly uniform in every case
    fast = top_k_top_p(logits, 0, top_p)
    assert torch.equal(fast == float("-inf"), _nucleus_by_full_sort(logits, top_p) == float("-inf"))
    kept = fast > float("-inf")
    assert torch.equal(fast[kept], logits[kept]) and kept.any(dim=-1).all()


def test_the_packed_decoder_is_reused_until_a_weight_changes(tiny):
    model, tok = tiny
    engine = TorchEngine(model, tok)
    prompts = prompts_of(tok, "Hi")
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)
    first = engine.generate(prompts, params)
    decoder = engine._fast[2]
    engine.generate(prompts, params)
    assert engine._fast[2] is decoder  # same weights: not rebuilt
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # in-place updates, as an optimizer step makes
    changed = engine.generate(prompts, params)
    # weights packed for oneDNN are packed anew; a plain snapshot is refreshed in place
    assert (engine._fast[2] is not decoder) == onednn.available()
    slow = TorchEngine(model, tok, use_fast_decode=False).generate(prompts, params)
    assert [c.token_ids for c in changed[0]] == [c.token_ids for c in slow[0]]
    assert [c.token_ids for c in changed[0]] != [c.token_ids for c in first[0]]
