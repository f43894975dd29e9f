"""SFT rows: the shared prompt prefix is computed once, log-probs stay exactly those of each sample alone, and
attention work and memory follow the samples, not the square of the row."""

import torch
import torch.nn.functional as F

from r1lab.packing import pack_samples, token_logprobs
from r1lab.sft.data import pack_rows


def alone(model, prompt, response):
    """Log-probs of the response tokens from one plain forward of the sample by itself."""
    logp = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0].float(), -1)
    return [logp[len(prompt) + j - 1, t].item() for j, t in enumerate(response)]


def test_a_shared_prompt_prefix_is_laid_out_once_and_changes_no_log_prob(tiny):
    model, tok = tiny
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = ids("[system]Think first.\n[user]")
    samples = [(head + ids("2+2?\n[assistant]"), ids("4")), (head + ids("3+4?\n[assistant]"), ids("seven")),
               (head + ids("9-1?\n[assistant]"), ids("8 it is"))]
    packed = pack_samples([samples], tok.pad_token_id)
    # the common start ("[system]Think first.\n[user]" and the digit-less part) once, then each sample's rest
    shared = len(head)
    assert packed.input_ids.shape[1] == shared + sum(len(p) + len(r) - shared for p, r in samples)
    expected = [lp for p, r in samples for lp in alone(model, p, r)]
    assert torch.allclose(token_logprobs(model, packed), torch.tensor(expected), atol=1e-5)


def test_rows_respect_row_tokens_with_the_prefix_counted_once():
    head = list(range(100, 150))  # a 50-token template prompt every sample shares
    samples = [(head + [i, i + 1], [7] * (3 + i % 5)) for i in range(40)]
    rows = pack_rows(samples, row_tokens=120)
    assert sorted(id(s) for row in rows for s in row) == sorted(id(s) for s in samples)
    for row in rows:
        assert pack_samples([row], pad_id=0).input_ids.shape[1] <= 120
    assert len(rows) < sum(len(p) + len(r) for p, r in samples) / 120  # the prefix is not paid per sample


def test_attention_runs_per_sample_with_no_row_sized_mask(tiny, monkeypatch):
    model, tok = tiny
    samples = [([3 + i, 20, 21, 22], [30 + i, 31, 32, 33, 34]) for i in range(8)]  # no common prefix
    packed = pack_samples([samples], tok.pad_token_id)
    width = packed.input_ids.shape[1]
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], key.shape[-2], None if attn_mask is None else attn_mask.numel()))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    token_logprobs(model, packed).sum().backward()
    assert calls and packed.attention_mask is None
    assert all(q <= 9 and k <= 9 for q, k, _ in calls)  # one sample's tokens at a time, never the row's
    assert all(m is None or m < width * width for _, _, m in calls)


def test_saved_activations_grow_linearly_with_the_row(tiny):
    """Memory follows the tokens: a row of 2n samples keeps about twice what a row of n keeps for the backward
    pass, not four times (a dense (L, L) mask per row grows with the square)."""
    model, tok = tiny
    model.train()

    def saved_bytes(n_samples):
        samples = [([1 + i % 90, 40, 41, 42], list(range(50, 50 + 28))) for i in range(n_samples)]
        packed = pack_samples([samples], tok.pad_token_id)
        storages = {}

        def keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            token_logprobs(model, packed).sum()
        return sum(storages.values())

    small, large = saved_bytes(48), saved_bytes(96)  # rows of 1536 and 3072 tokens
    assert large < 2.3 * small
