"""Packed log-probs equal one forward per sequence; packed sequences never see each other."""

import torch

from r1lab.packing import pack, token_logprobs


def unpacked_logprobs(model, prompt, completions, temperature):
    out = []
    for c in completions:
        logits = model(torch.tensor([prompt + c])).logits[0].float() / temperature
        logp = torch.log_softmax(logits, -1)
        out += [logp[len(prompt) + j - 1, t].item() for j, t in enumerate(c)]
    return out


def test_packed_logprobs_equal_separate_forwards(tiny):
    model, tok = tiny
    groups = [([5, 6, 7, 8], [[9, 10, 11], [12], [13, 14, 15, 16, 17]]), ([20, 21], [[22, 23]])]
    packed = pack(groups, pad_id=tok.pad_token_id)
    got = token_logprobs(model, packed, temperature=0.7)
    expected = [lp for p, cs in groups for lp in unpacked_logprobs(model, p, cs, 0.7)]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
    assert packed.lengths == [3, 1, 5, 2]
    assert packed.input_ids.shape == (2, 4 + 3 + 1 + 5)  # one row per group, no prompt repeated


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


def test_selective_log_softmax_gradient_matches_autograd():
    from r1lab.packing import SelectiveLogSoftmax

    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    assert torch.autograd.gradcheck(SelectiveLogSoftmax.apply, (logits, targets))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(SelectiveLogSoftmax.apply(logits, targets), expected)
