"""``stream_ids``: sample j of a prompt keyed k draws from (seed, k, j) alone, so its tokens do not depend on the
other prompts of the call, their order, the row budget or (no refill at all) the whole-batch schedule."""

import pytest

from r1lab.engine import SamplingParams, TorchEngine, static_decode

TEXTS = ["a", "What is 2+3? Think step by step and answer.", "bb", "the quick brown fox jumps over", "x y"]


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def by_key(groups, keys):
    return {key: [c.token_ids for c in group] for key, group in zip(keys, groups)}


def test_a_keyed_prompt_samples_the_same_whatever_shares_its_call_and_the_row_budget(tiny):
    model, tok = tiny
    params = SamplingParams(n=2, temperature=1.2, top_p=0.9, max_new_tokens=12, seed=3)
    prompts = prompts_of(tok, *TEXTS)
    whole = by_key(TorchEngine(model, tok, max_rows=64).generate(prompts, params, stream_ids=range(5)), range(5))
    for max_rows, order in ((0, [4, 1]), (3, [1, 3, 0]), (64, [2])):
        engine = TorchEngine(model, tok, max_rows=max_rows, max_batch=4)
        part = engine.generate([prompts[i] for i in order], params, stream_ids=order)
        assert by_key(part, order) == {i: whole[i] for i in order}, (max_rows, order)
    other_seed = TorchEngine(model, tok).generate(prompts, SamplingParams(**{**params.__dict__, "seed": 4}),
                                                  stream_ids=range(5))
    assert by_key(other_seed, range(5)) != whole


def test_greedy_is_unchanged_by_stream_ids(tiny):
    model, tok = tiny
    params = SamplingParams(n=1, temperature=0, max_new_tokens=10)
    prompts = prompts_of(tok, *TEXTS)
    engine = TorchEngine(model, tok, max_rows=2)
    plain = [[c.token_ids for c in g] for g in engine.generate(prompts, params)]
    keyed = [[c.token_ids for c in g] for g in engine.generate(prompts, params, stream_ids=[7, 3, 9, 1, 0])]
    assert plain == keyed


def test_the_static_path_draws_the_keyed_streams_the_dynamic_path_draws(tiny):
    model, tok = tiny
    if not static_decode.supports(model):
        pytest.skip("the static path does not support this model")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1, ignore_eos=True)
    prompts = prompts_of(tok, "a", "bb")
    dynamic = TorchEngine(model, tok, decode="dynamic").generate(prompts, params, stream_ids=[4, 2])
    static = TorchEngine(model, tok, decode="static", cuda_graphs=False).generate(prompts, params, stream_ids=[4, 2])
    assert by_key(static, [4, 2]) == by_key(dynamic, [4, 2])


def test_bad_stream_ids_are_refused(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="stream_ids"):
        TorchEngine(model, tok).generate(prompts_of(tok, "a", "b"), SamplingParams(), stream_ids=[1])
