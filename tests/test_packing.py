"""Packed log-probs equal one forward per sequence, in value and gradient, through every attention kernel and
LM-head path; packed sequences never see each other."""

import functools
import math

import pytest
import torch

import r1lab.packing as packing
from r1lab.models import checkpoint_activations
from r1lab.packing import LinearLogSoftmax, SelectiveLogSoftmax, pack, segment_block_mask, token_logprobs

from conftest import make_model

GROUPS = [([5, 6, 7, 8], [[9, 10, 11], [12], [13, 14, 15, 16, 17]]), ([20, 21], [[22, 23]]), ([], [[30, 31], [32]])]


def unpacked_logprobs(model, prompt, completions, temperature):
    out = []
    for c in completions:
        logits = model(torch.tensor([prompt + c])).logits[0].float() / temperature
        logp = torch.log_softmax(logits, -1)
        out += [logp[len(prompt) + j - 1, t] for j, t in enumerate(c) if prompt or j]
    return out


def reference(model, groups, temperature=1.0):
    """Log-probs of every scored token, one plain forward per sequence, shape (N,)."""
    return torch.stack([lp for p, cs in groups for lp in unpacked_logprobs(model, p, cs, temperature)])


def grads(model, logprobs_fn, weights):
    """Gradients of ``sum(weights * logprobs)`` for every parameter that gets one."""
    model.zero_grad(set_to_none=True)
    (logprobs_fn() * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, expected, atol=1e-5):
    assert got.keys() == expected.keys() and len(got) > 3
    for name in got:
        assert torch.allclose(got[name], expected[name], atol=atol, rtol=1e-4), name


@pytest.fixture
def model64(tokenizer):
    """Hidden 64, 2 layers, 4 query heads sharing 2 key/value heads, tied embeddings; train mode (no dropout)."""
    return make_model(tokenizer, hidden=64).train()


def test_packed_logprobs_equal_separate_forwards(tiny):
    model, tok = tiny
    groups = GROUPS[:2]
    packed = pack(groups, pad_id=tok.pad_token_id)
    got = token_logprobs(model, packed, temperature=0.7)
    assert torch.allclose(got, reference(model, groups, 0.7), atol=1e-5)
    assert packed.lengths == [3, 1, 5, 2]
    assert packed.input_ids.shape == (2, 4 + 3 + 1 + 5)  # one row per group, no prompt repeated
    assert packed.attention_mask is None and packed.segments[1] == [(0, 2, 0), (2, 4, 2)]  # no (L, L) mask


def test_packed_gradients_equal_separate_forwards(model64):
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    got = grads(model64, lambda: token_logprobs(model64, packed, 0.7), weights)
    expected = grads(model64, lambda: reference(model64, GROUPS, 0.7), weights)
    assert_same_grads(got, expected)


def test_a_packed_sequence_does_not_attend_to_its_neighbour(tiny):
    model, tok = tiny
    a, b1, b2 = [30, 31, 32], [40, 41, 42], [50, 51, 52]
    with_b1 = token_logprobs(model, pack([([], [b1, a])], tok.pad_token_id))
    with_b2 = token_logprobs(model, pack([([], [b2, a])], tok.pad_token_id))
    # the last two scores belong to `a` (its first token has no predictor): identical whatever precedes it
    assert torch.allclose(with_b1[-2:], with_b2[-2:], atol=1e-6)
    alone = token_logprobs(model, pack([([], [a])], tok.pad_token_id))
    assert torch.allclose(alone, with_b1[-2:], atol=1e-5)


def test_gradient_flows_through_the_shared_prompt(tiny):
    model, tok = tiny
    packed = pack([([5, 6, 7], [[8, 9], [10, 11]])], tok.pad_token_id)
    token_logprobs(model, packed).sum().backward()
    assert model.model.embed_tokens.weight.grad[5].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ flex attention
def brute_force_mask(segments, L):
    """(R, L, L) who may see whom, token by token, straight from the segments' definition."""
    dense = torch.zeros(len(segments), L, L, dtype=torch.bool)
    for r, row in enumerate(segments):
        end = row[-1][1] if row else 0
        for start, stop, shared in [*row, (end, L, 0)]:  # padding: one more segment
            for q in range(start, stop):
                dense[r, q, start:q + 1] = True
                dense[r, q, :shared] = True
    return dense


@pytest.mark.parametrize("block", [16, 128])
def test_segment_block_mask_is_create_block_masks(block):
    from torch.nn.attention.flex_attention import create_block_mask

    groups = [(list(range(1, 41)), [[7] * n for n in (3, 37, 0, 20)]), ([], [[8] * 50, [9] * 21]),
              (list(range(1, 17)), [[7] * 16, [7] * 33])]
    packed = pack(groups, pad_id=0)
    got = segment_block_mask(packed.segments, packed.input_ids.shape[1], "cpu", block=block)
    L = got.seq_lengths[0]
    assert L % block == 0 and L >= packed.input_ids.shape[1]
    q, k = torch.arange(L)[None, :, None], torch.arange(L)[None, None, :]
    assert torch.equal(got.mask_mod(torch.arange(3)[:, None, None], 0, q, k), brute_force_mask(packed.segments, L))
    want = create_block_mask(got.mask_mod, 3, None, L, L, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(got.to_dense(), want.to_dense())
    assert torch.equal(got.kv_num_blocks, want.kv_num_blocks)
    assert torch.equal(got.full_kv_num_blocks, want.full_kv_num_blocks)
    if block == 16:  # both kinds of block occur: full ones (no mask_mod call) and partial ones
        assert (got.full_kv_num_blocks > 0).any() and (got.kv_num_blocks > 0).any()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_both_kernels_equal_one_dense_masked_attention():
    """Hand-made segments, one of them sharing a prefix that ends inside a segment; grouped-query heads."""
    segments = [[(0, 3, 0), (3, 5, 0), (5, 9, 4), (9, 12, 3)], [(0, 6, 0), (6, 7, 6)]]
    R, L, d = 2, 13, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(R, heads, L, d, generator=g, requires_grad=True) for heads in (4, 2, 2))
    mask = brute_force_mask(segments, L)[:, None]  # (R, 1, L, L)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    want = want.transpose(1, 2)  # (R, L, heads, d)
    real = torch.zeros(R, L, 1, 1)
    real[0, :12], real[1, :7] = 1, 1  # padding rows are not compared: no kernel promises them anything
    got = packing._sdpa_per_segment(q, k, v, 0.3, 0.0, packing._with_masks(segments, "cpu"))
    assert torch.allclose(got * real, want * real, atol=1e-6)
    weights = torch.randn(R, L, 4, d, generator=g) * real
    expected = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for a, b in zip(torch.autograd.grad((got * weights).sum(), (q, k, v)), expected):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():
        flex = packing._flex_attention(q, k, v, 0.3, 0.0, block_mask=segment_block_mask(segments, L, "cpu", block=16))
    assert torch.allclose(flex * real, want * real, atol=1e-6)


def flex_on_this_device(monkeypatch, block=16):
    """Route packed attention through the CUDA path's flex kernel and block mask, eager, on any device."""
    def flex(segments, width, device):
        return lambda q, k, v, scaling, dropout: packing._flex_attention(
            q, k, v, scaling, dropout, block_mask=segment_block_mask(segments, width, device, block=block))
    monkeypatch.setattr(packing, "packed_attention", flex)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_kernel_gives_the_per_sequence_logprobs(model64, monkeypatch):
    """Flex attention has no backward on the CPU in this torch: the forward checks the CUDA path's mask and
    padding; the CUDA tests (test_packing_gpu.py) check its gradients."""
    packed = pack(GROUPS, pad_id=0)
    with torch.no_grad():
        expected = reference(model64, GROUPS, 0.7)
        flex_on_this_device(monkeypatch)
        got = token_logprobs(model64, packed, 0.7)
        with torch.autocast("cpu", torch.bfloat16):  # q, k (fp32 after rotary) and v are cast to one dtype
            low = token_logprobs(model64, packed, 0.7)
    assert torch.allclose(got, expected, atol=1e-5)
    assert low.dtype == torch.float32 and torch.allclose(low, expected, atol=0.1)


def test_every_tensor_lives_on_the_models_device(model64, monkeypatch):
    """On the meta device a tensor made on the CPU and mixed in fails: the SDPA kernel, the chunked head, and the
    flex path's block mask (flex attention itself refuses meta; a stand-in checks what it would be given)."""
    packed = pack(GROUPS, pad_id=0)
    model = model64.to("meta")
    for budget in (None, 1):
        logprobs = token_logprobs(model, packed, 0.7, logits_budget=budget)
        assert logprobs.device.type == "meta"
        logprobs.sum().backward()

    def flex_stand_in(q, k, v, block_mask, scale, enable_gqa):
        blocks = [getattr(block_mask, f"{kind}_{x}") for kind in ("kv", "full_kv", "q", "full_q")
                  for x in ("num_blocks", "indices")]
        assert {t.device.type for t in (q, k, v, *blocks)} == {"meta"}
        index = torch.zeros(1, dtype=torch.long, device="meta")
        block_mask.mask_mod(index, index, index, index)  # indexes the (R, L) tensors it closes over
        return torch.zeros_like(q)

    monkeypatch.setattr(packing, "_flex", lambda device_type: flex_stand_in)
    flex_on_this_device(monkeypatch)
    assert token_logprobs(model, packed, 0.7).device.type == "meta"


# ------------------------------------------------------------------------------------------------ LM head
def test_selective_log_softmax_gradient_matches_autograd():
    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    assert torch.autograd.gradcheck(lambda *a: SelectiveLogSoftmax.apply(*a)[0], (logits, targets))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(SelectiveLogSoftmax.apply(logits, targets)[0], expected)
    assert SelectiveLogSoftmax.apply(logits, targets)[1] is None  # no entropy unless asked for


def head_inputs(seed: int):
    """``(h, W, b, targets)`` of a small LM head in fp64 (for gradcheck): 7 positions, hidden 5, vocabulary 11."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    return h, w, b, torch.randint(0, 11, (7,), generator=g)


def entropy_of(logits):
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def test_entropy_and_its_gradient_match_autograd():
    """Log-probs and entropies together: values and gradients (each alone, and both in one loss) as autograd's."""
    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    logprobs, entropies = SelectiveLogSoftmax.apply(logits, targets, True)
    assert torch.allclose(entropies, entropy_of(logits))
    assert torch.autograd.gradcheck(lambda *a: SelectiveLogSoftmax.apply(*a, True)[1], (logits, targets))
    assert torch.autograd.gradcheck(lambda *a: sum(SelectiveLogSoftmax.apply(*a, True)), (logits, targets))
    h, w, b, targets = head_inputs(seed=1)
    for rows in (1, 3, 7):
        assert torch.allclose(LinearLogSoftmax.apply(h, w, b, targets, rows, True)[1], entropy_of(h @ w.T + b))
        entropy = functools.partial(lambda *a, rows: LinearLogSoftmax.apply(*a, rows, True)[1], rows=rows)
        assert torch.autograd.gradcheck(entropy, (h, w, b, targets))
        both = functools.partial(lambda *a, rows: (lambda lp, ent: 2 * lp - ent)(*LinearLogSoftmax.apply(*a, rows, True)),
                                 rows=rows)
        assert torch.autograd.gradcheck(both, (h, w, b, targets))


def test_token_entropies_are_chunked_and_equal_the_whole_head(model64):
    """token_logprobs(entropy=True): the entropy of each scored position's distribution at temperature T, the same
    through the chunked head (one row of logits at a time) as through the whole one."""
    packed = pack(GROUPS, pad_id=0)
    with torch.no_grad():
        logprobs, entropies = token_logprobs(model64, packed, 0.7, entropy=True)
        _, chunked = token_logprobs(model64, packed, 0.7, logits_budget=1, entropy=True)
        assert torch.equal(logprobs, token_logprobs(model64, packed, 0.7))
        assert torch.allclose(chunked, entropies, atol=1e-6)
        one = pack([GROUPS[1]], pad_id=0)  # one completion: plain causal attention sees what the packing does
        logits = model64(input_ids=one.input_ids).logits.reshape(-1, model64.config.vocab_size)[one.score_index]
        assert torch.allclose(token_logprobs(model64, one, 0.7, entropy=True)[1], entropy_of(logits / 0.7), atol=1e-6)
        assert (entropies > 0).all() and (entropies <= math.log(model64.config.vocab_size) + 1e-6).all()


def test_chunked_log_softmax_matches_autograd():
    h, w, b, targets = head_inputs(seed=0)
    for rows in (1, 3, 7):
        assert torch.autograd.gradcheck(lambda *a: LinearLogSoftmax.apply(*a)[0], (h, w, b, targets, rows))
        expected = torch.log_softmax(h @ w.T + b, -1).gather(-1, targets[:, None])[:, 0]
        assert torch.allclose(LinearLogSoftmax.apply(h, w, b, targets, rows)[0], expected)


def test_chunked_head_equals_the_whole_head(model64):
    """A budget of one row of logits: every row its own chunk. Same log-probs, same gradients, the tied
    embedding's included (it gets the head's gradient and the input embedding's)."""
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    whole = grads(model64, lambda: token_logprobs(model64, packed, 0.7), weights)
    chunked = grads(model64, lambda: token_logprobs(model64, packed, 0.7, logits_budget=1), weights)
    assert_same_grads(chunked, whole)
    assert model64.lm_head.weight is model64.model.embed_tokens.weight and "lm_head.weight" not in whole
    with torch.no_grad():
        assert torch.allclose(token_logprobs(model64, packed, 0.7, logits_budget=1),
                              token_logprobs(model64, packed, 0.7), atol=1e-6)


def test_chunked_head_with_bias_and_untied_weights():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13)
    h = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 13, (9,))
    want = torch.log_softmax(head(h) / 0.7, -1).gather(-1, targets[:, None])[:, 0]
    (want * torch.arange(9.0)).sum().backward()
    expected = [t.grad.clone() for t in (h, head.weight, head.bias)]
    h.grad = head.weight.grad = head.bias.grad = None
    got = LinearLogSoftmax.apply(h / 0.7, head.weight, head.bias / 0.7, targets, 2)[0]
    (got * torch.arange(9.0)).sum().backward()
    assert torch.allclose(got, want, atol=1e-6)
    for grad, e in zip((h.grad, head.weight.grad, head.bias.grad), expected):
        assert torch.allclose(grad, e, atol=1e-5)


def test_chunked_head_under_bf16_autocast(model64):
    """fp32 master weights under bf16 autocast: the chunked products run in bf16 as ``nn.Linear`` would (the
    result differs from fp32 by bf16 rounding, and equals the unchunked head's), gradients stay fp32."""
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))

    def logprobs(budget):
        with torch.autocast("cpu", torch.bfloat16):
            return token_logprobs(model64, packed, 0.7, logits_budget=budget)

    fp32 = token_logprobs(model64, packed, 0.7).detach()
    chunked, whole = logprobs(1), logprobs(None)
    assert chunked.dtype == torch.float32
    assert not torch.equal(chunked, fp32) and torch.allclose(chunked, fp32, atol=0.1)
    assert torch.allclose(chunked, whole, atol=2e-2)
    low, high = grads(model64, lambda: logprobs(1), weights), grads(model64, lambda: logprobs(None), weights)
    assert all(g.dtype == torch.float32 for g in low.values())
    for name in high:
        assert torch.allclose(low[name], high[name], atol=0.1, rtol=0.1), name


# ------------------------------------------------------------------------------------------------ training setups
def test_gradient_checkpointing_gives_the_same_gradients(model64):
    """The recomputed layers must see the segments too (the backward pass runs after the forward has put the
    model's attention implementation back)."""
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    plain = grads(model64, lambda: token_logprobs(model64, packed, 0.7), weights)
    checkpoint_activations(model64)  # r1lab's way in: the API transformers documents now
    checkpointed = grads(model64, lambda: token_logprobs(model64, packed, 0.7, logits_budget=1), weights)
    assert_same_grads(checkpointed, plain)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_logprobs_and_gradients_equal_separate_forwards(model64, checkpointing):
    pytest.importorskip("peft")
    from r1lab.models import add_lora

    model = add_lora(model64, r=4, lora_alpha=8)
    with torch.no_grad():  # LoRA starts with B = 0; make the adapters do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    if checkpointing:
        checkpoint_activations(model)
    model.train()
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    got = grads(model, lambda: token_logprobs(model, packed, 0.7), weights)
    expected = grads(model, lambda: reference(model, GROUPS, 0.7), weights)
    assert all("lora" in name for name in got)
    assert_same_grads(got, expected)
