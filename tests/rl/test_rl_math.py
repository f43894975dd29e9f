"""Advantages and losses against hand-computed values and a per-token loop."""

import math

import pytest
import torch

from r1lab.rl.advantages import batch_zscore, get_advantage, group_mean, group_zscore
from r1lab.rl.losses import Objective, clipped_surrogate, grpo_loss, kl_k3, token_weights


def test_group_zscore_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_zscore(r, eps=0.0)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # sample std of [1, 0, 0, 0]
    assert a[0].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    assert group_zscore(r)[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # no signal, no NaN


def test_drgrpo_and_batch_std():
    r = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert group_mean(r).tolist() == [[0.5, -0.5], [1.0, -1.0]]
    # Lite PPO / TRL scale_rewards="batch": the group mean, over the std of the batch's raw rewards
    std = math.sqrt(sum((x - 1.25) ** 2 for x in (1, 0, 3, 1)) / 3)  # 1.258
    assert batch_zscore(r, eps=0).flatten().tolist() == pytest.approx([0.5 / std, -0.5 / std, 1 / std, -1 / std])
    with pytest.raises(ValueError, match="grpo"):
        get_advantage("nope")


def test_kl_estimator_matches_formula_and_is_nonnegative():
    lp, ref = torch.tensor([-0.5, -2.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0])
    expected = [math.exp(r - l) - (r - l) - 1 for l, r in zip(lp.tolist(), ref.tolist())]
    assert kl_k3(lp, ref).tolist() == pytest.approx(expected)
    x = torch.randn(1000)
    assert (kl_k3(x, torch.randn(1000)) >= 0).all()
    # unbiased: E_pi[k3] = KL(pi || ref) for a categorical pi
    pi, ref_p = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = (pi * (pi / ref_p).log()).sum()
    estimate = (pi * kl_k3(pi.log(), ref_p.log())).sum()
    assert estimate.item() == pytest.approx(exact.item(), abs=1e-6)


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = clipped_surrogate(ratio.log(), old, adv, clip_low=0.2, clip_high=0.28)
    # A>0: min(1.5, 1.28) = 1.28 (clipped); min(0.5, 0.8) = 0.5. A<0: min(-1.1, -1.1) = -1.1; min(-0.7, -0.8) = -0.8
    assert (-loss).tolist() == pytest.approx([1.28, 0.5, -1.1, -0.8])
    assert clipped.tolist() == [True, False, False, True]


def test_token_level_and_sequence_level_aggregation_match_a_loop():
    torch.manual_seed(0)
    lengths = [3, 1, 5, 2]
    N = sum(lengths)
    lp, old = torch.randn(N) * 0.1 - 1, torch.randn(N) * 0.1 - 1
    ref = torch.randn(N) * 0.1 - 1
    seq_adv = torch.randn(len(lengths))
    adv = torch.cat([seq_adv[i].repeat(n) for i, n in enumerate(lengths)])
    beta, lo, hi = 0.04, 0.2, 0.28
    for mode in ("token", "sequence"):
        vec, _ = grpo_loss(lp, old, adv, token_weights(lengths, mode), Objective("grpo", lo, hi, beta),
                           ref_logprobs=ref)
        # the loop: the GRPO formula written out token by token
        per_seq, all_tokens, start = [], [], 0
        for i, n in enumerate(lengths):
            terms = []
            for t in range(start, start + n):
                ratio = math.exp(lp[t] - old[t])
                surr = min(ratio * seq_adv[i].item(), max(min(ratio, 1 + hi), 1 - lo) * seq_adv[i].item())
                kl = math.exp(ref[t] - lp[t]) - (ref[t] - lp[t]).item() - 1
                terms.append(-surr + beta * kl)
            per_seq.append(sum(terms) / n)
            all_tokens.extend(terms)
            start += n
        loop = sum(all_tokens) / N if mode == "token" else sum(per_seq) / len(per_seq)
        assert vec.item() == pytest.approx(loop, rel=1e-5)


def test_micro_batch_accumulation_is_exact():
    torch.manual_seed(1)
    lengths = [4, 2, 3]
    N = sum(lengths)
    lp = (torch.randn(N) * 0.1).requires_grad_()
    old, adv = torch.zeros(N), torch.randn(N)
    w = token_weights(lengths, "token")
    whole, _ = grpo_loss(lp, old, adv, w, Objective(clip_high=0.2))
    (g_whole,) = torch.autograd.grad(whole, lp)
    parts = sum(grpo_loss(lp[s], old[s], adv[s], w[s], Objective(clip_high=0.2))[0] for s in (slice(0, 6), slice(6, N)))
    (g_parts,) = torch.autograd.grad(parts, lp)
    assert torch.allclose(g_whole, g_parts) and whole.item() == pytest.approx(parts.item())


def test_beta_needs_reference():
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2) / 2, Objective(beta=0.1))


def test_truncated_importance_weights_scale_the_surrogate_only():
    from r1lab.rl.losses import truncated_is_weights

    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    old, sampler = lp.detach(), torch.tensor([-1.0, -4.0])  # the sampler gave token 2 less mass than the trainer
    w_is = truncated_is_weights(old, sampler, cap=2.0)
    assert w_is.tolist() == [1.0, 2.0] and not w_is.requires_grad  # exp(2) is truncated at the cap
    assert truncated_is_weights(old, sampler, cap=0) is None  # off
    adv, w = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])
    plain, _ = grpo_loss(lp, old, adv, w, Objective(beta=0.1), ref_logprobs=old, sampler_logprobs=sampler)
    weighted, _ = grpo_loss(lp, old, adv, w, Objective(beta=0.1, tis_cap=2.0), ref_logprobs=old,
                            sampler_logprobs=sampler)
    # ratio 1, KL 0 at old == ref: the surrogate is -A per token, so the loss goes from -(0.5 + 0.5) to -(0.5 + 1.0)
    assert plain.item() == pytest.approx(-1.0) and weighted.item() == pytest.approx(-1.5)
