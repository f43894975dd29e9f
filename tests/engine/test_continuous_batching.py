"""Continuous batching: at most ``max_rows`` rows decode at once, finished rows' slots are refilled from the queue;
greedy tokens are the ones the engine decodes without it, seeded samples do not depend on the row budget."""

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine
from r1lab.engine.kv_cache import BufferLayer, slot_cache
from r1lab.engine.torch_engine import row_uniforms

TEXTS = ["a", "What is 2+3? Think step by step and answer.", "bb", "the quick brown fox jumps over", "x y",
         "hello there, how are you doing today my friend?", "1", "cc dd ee"]


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def outputs(groups):
    return [[(c.token_ids, c.finish_reason) for c in group] for group in groups]


def mixed(tok, **kw):
    """Rows of very different lengths: a common token stops some early, ``cut`` ends most (aborts them) after a
    few tokens of their own, a few run to max_new_tokens."""
    stop = [tok.convert_tokens_to_ids(t) for t in ("e", "a")]
    return SamplingParams(max_new_tokens=40, stop_token_ids=stop, **kw)


def cutter():
    """on_token that aborts sample j of prompt i after a length of its own (every 5th row runs on)."""
    counts = {}

    def on_token(i, j, token):
        counts[i, j] = counts.get((i, j), 0) + 1
        return (2 * i + j) % 5 == 0 or counts[i, j] < 1 + (7 * i + 3 * j) % 11

    return on_token


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_outputs_match_decoding_without_continuous_batching(tiny, fast):
    model, tok = tiny
    prompts = prompts_of(tok, *TEXTS)
    params = mixed(tok, n=2, temperature=0)
    off = TorchEngine(model, tok, use_fast_decode=fast, max_rows=0, max_batch=6).generate(prompts, params, cutter())
    for max_rows in (1, 5) if fast else (5,):  # 5 splits a prompt's samples across admissions
        on = TorchEngine(model, tok, use_fast_decode=fast, max_rows=max_rows).generate(prompts, params, cutter())
        assert outputs(on) == outputs(off)
    lengths = {len(c.token_ids) for group in off for c in group}
    assert len(lengths) > 3 and max(lengths) == 40  # the mix this test is about


def test_seeded_samples_do_not_depend_on_the_row_budget(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, *TEXTS)
    params = mixed(tok, n=2, temperature=1.2, top_p=0.9, seed=5)
    runs = [outputs(TorchEngine(model, tok, max_rows=max_rows).generate(prompts, params, cutter()))
            for max_rows in (3, 3, 7)]
    assert runs[0] == runs[1] == runs[2]
    other = outputs(TorchEngine(model, tok, max_rows=3).generate(prompts, mixed(tok, n=2, temperature=1.2, top_p=0.9,
                                                                                seed=6), cutter()))
    assert other != runs[0]
    # rows that fit the budget draw the stream they always drew (the static path's on a CPU)
    fits = TorchEngine(model, tok, max_rows=64).generate(prompts, params, cutter())
    assert outputs(fits) == outputs(TorchEngine(model, tok, max_rows=0).generate(prompts, params, cutter()))


def test_the_batch_never_holds_more_than_max_rows_and_slots_are_refilled(tiny, monkeypatch):
    model, tok = tiny
    engine = TorchEngine(model, tok, max_rows=4)
    prompts = prompts_of(tok, *TEXTS)
    sizes = []
    fast = engine._fast_decoder(4, torch.float32)
    step = fast.step
    monkeypatch.setattr(fast, "step", lambda token, *a: sizes.append(len(token)) or step(token, *a))
    out = engine.generate(prompts, mixed(tok, n=2, temperature=0), cutter())
    assert max(sizes) == 4
    rows = sum(len(c.token_ids) for group in out for c in group)
    # fewer steps than waves of 4 rows each running to its longest row would take
    waves = sum(max(len(c.token_ids) for group in out[i:i + 2] for c in group) for i in range(0, len(out), 2))
    assert len(sizes) < waves and sum(sizes) >= rows - len(prompts) * 2


def test_on_token_gets_global_indices_and_can_abort(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, *TEXTS[:5])
    seen = {}

    def on_token(i, j, token):
        seen.setdefault((i, j), []).append(token)
        return not (i == 3 and j == 1 and len(seen[(i, j)]) == 2)

    out = TorchEngine(model, tok, max_rows=3).generate(prompts, SamplingParams(n=2, temperature=0.8, seed=2,
                                                                               max_new_tokens=12), on_token)
    for i, group in enumerate(out):
        for j, c in enumerate(group):
            stopped = c.finish_reason == "stop"  # on_token does not see the stop token
            assert c.prompt_index == i and seen[(i, j)] == c.token_ids[:len(c.token_ids) - stopped]
    assert out[3][1].finish_reason == "abort" and len(out[3][1].token_ids) == 2


def test_row_uniforms_are_a_function_of_seed_row_and_step():
    rows = torch.arange(1000)
    a = row_uniforms(3, rows, torch.zeros(1000, dtype=torch.long))
    assert ((a >= 0) & (a < 1)).all() and abs(a.mean().item() - 0.5) < 0.03
    assert torch.equal(a[[7, 500]], row_uniforms(3, torch.tensor([7, 500]), [0, 0]))
    assert not torch.equal(a, row_uniforms(4, rows, torch.zeros(1000, dtype=torch.long)))
    assert not torch.equal(a, row_uniforms(3, rows, torch.ones(1000, dtype=torch.long)))


def test_place_and_shift_keep_each_rows_columns():
    like = torch.zeros(1, 2, 1, 4)
    layer = slot_cache([(like, like)], rows=3, length=5, capacity=6).layers[0]
    assert isinstance(layer, BufferLayer) and layer.keys.shape == (0, 2, 5, 4)
    prompt = torch.arange(1.0, 4.0)[None, None, :, None].expand(2, 2, 3, 4)  # 2 rows, 3 positions
    layer.place(0, prompt, prompt, spare_rows=3)
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 0, 1, 2, 3]] * 2
    layer.shift_columns(3)  # widen in front: grows past the 6-column reservation
    assert layer.keys.shape == (2, 2, 8, 4) and layer.keys[0, 0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    layer.shift_columns(-5)
    assert layer.keys[1, 1, :, 0].tolist() == [1, 2, 3]
    layer.place(2, prompt[:1, :, 1:], prompt[:1, :, 1:], spare_rows=3)
    assert layer.keys[:, 0, :, 0].tolist() == [[1, 2, 3], [1, 2, 3], [0, 2, 3]]
    with pytest.raises(ValueError):
        layer.place(3, torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
