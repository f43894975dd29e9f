"""The GRPO family (issue 29): loss types, aggregations, masks, entropy terms and advantage estimators against
hand-computed values and loops written out token by token, as each paper or peer defines them."""

import math
import re

import pytest
import torch

from r1lab.engine.base import Completion, Prompt
from r1lab.policy import SINGLE
from r1lab.rl import grpo
from r1lab.rl.advantages import (
    batch_zscore,
    get_advantage,
    leave_one_out,
    reinforce_plus_plus,
    reinforce_plus_plus_baseline,
)
from r1lab.rl.batch import train_batch
from r1lab.rl.losses import Objective, grpo_loss, token_weights
from r1lab.rollout import Group

LENGTHS = [3, 1, 4]
SEQ = torch.repeat_interleave(torch.arange(3), torch.tensor(LENGTHS))  # (8,) each token's completion
ADV_SEQ = [1.0, -0.5, 2.0]
ADV = torch.tensor([ADV_SEQ[i] for i in SEQ.tolist()])


def random_logprobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(8, generator=g, dtype=torch.float64) * 0.3 - 1).requires_grad_()
    old = torch.randn(8, generator=g, dtype=torch.float64) * 0.3 - 1
    return lp, old


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ------------------------------------------------------------------------------------------- loss types
def test_gspo_uses_the_clipped_length_normalised_sequence_ratio():
    lp, old = random_logprobs()
    lo, hi = 0.05, 0.08
    w = token_weights(LENGTHS, "sequence").double()
    loss, _ = grpo_loss(lp, old, ADV.double(), w, Objective("gspo", lo, hi), sequences=SEQ)
    # the GSPO objective written out: J = 1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log ratio)
    terms, start = [], 0
    for i, n in enumerate(LENGTHS):
        s = torch.exp((lp[start:start + n] - old[start:start + n]).mean())
        a = ADV_SEQ[i]
        terms.append(-torch.minimum(s * a, s.clamp(1 - lo, 1 + hi) * a))
        start += n
    loop = sum(terms) / len(LENGTHS)
    assert loss.item() == pytest.approx(loop.item(), rel=1e-6)  # the weights are fp32
    assert torch.allclose(grad_of(loss, lp), grad_of(loop, lp))
    # every token of a sequence gets the same share of its sequence's gradient (the ratio is one number)
    lp0 = old.clone().requires_grad_()  # on-policy: s = 1, nothing clipped
    g = grad_of(grpo_loss(lp0, old, ADV.double(), w, Objective("gspo", lo, hi), sequences=SEQ)[0], lp0)
    assert torch.allclose(g, torch.tensor([-ADV_SEQ[i] / (LENGTHS[i] * 3) for i in SEQ.tolist()], dtype=g.dtype))


def test_gspo_needs_the_sequences():
    with pytest.raises(ValueError, match="sequence"):
        grpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2) / 2, Objective("gspo"))


def test_cispo_is_reinforce_with_a_clipped_detached_weight():
    lp, old = random_logprobs(1)
    with torch.no_grad():
        lp[0] = old[0] + math.log(3.0)  # ratio 3: clipped to 1 + clip_high
        lp[5] = old[5] + math.log(0.1)  # ratio 0.1: no lower bound with clip_low 1
    w = token_weights(LENGTHS, "token").double()
    objective = Objective("cispo", clip_low=1.0, clip_high=1.0)
    loss, stats = grpo_loss(lp, old, ADV.double(), w, objective, sequences=SEQ)
    ratio = torch.exp(lp - old).detach()
    weight = ratio.clamp(max=2.0)
    assert loss.item() == pytest.approx((-(weight * ADV * lp) * w).sum().item(), rel=1e-9)
    # the gradient is -w_t A_t / N per token: a clipped token still learns, with the bounded weight
    assert torch.allclose(grad_of(loss, lp), -weight * ADV.double() * w)
    assert weight[0] == 2.0 and weight[5] == pytest.approx(0.1)
    assert stats["clip_frac"].item() == pytest.approx(w[0].item())


def test_a_wrong_loss_type_is_refused_with_the_list():
    with pytest.raises(ValueError, match="grpo, gspo, cispo"):
        grpo_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1), Objective("ppo"))


# --------------------------------------------------------------------------------------------- aggregations
def test_constant_and_micro_batch_aggregations_match_a_loop():
    torch.manual_seed(2)
    lengths, max_len = [3, 1, 5, 2], 6
    lp, old = torch.randn(11) * 0.1 - 1, torch.randn(11) * 0.1 - 1
    adv = torch.cat([torch.full((n,), a) for n, a in zip(lengths, [1.0, -1.0, 0.5, -0.5])])
    per_token, _ = grpo_loss(lp, old, adv, torch.ones(11), Objective())  # the unweighted sum
    terms = [0.0] * 11
    for t in range(11):  # each token's term, from a loss with only that token's weight
        terms[t] = grpo_loss(lp, old, adv, torch.eye(11)[t], Objective())[0].item()
    assert sum(terms) == pytest.approx(per_token.item(), rel=1e-5)
    constant = grpo_loss(lp, old, adv, token_weights(lengths, "constant", max_length=max_len), Objective())[0]
    assert constant.item() == pytest.approx(sum(terms) / (4 * max_len), rel=1e-5)  # Dr. GRPO: / (G x L_max)
    parts = [0, 0, 1, 1]  # micro-batches of two completions: tokens 0-3, then 4-10
    bnpo = grpo_loss(lp, old, adv, token_weights(lengths, "micro_batch", micro_batches=parts), Objective())[0]
    assert bnpo.item() == pytest.approx((sum(terms[:4]) / 4 + sum(terms[4:]) / 7) / 2, rel=1e-5)


def test_a_completion_out_of_the_loss_counts_in_no_average_but_the_constant_one():
    assert token_weights([2, 2], "sequence", kept=[True, False]).tolist() == [0.5, 0.5, 0.0, 0.0]
    assert token_weights([2, 2], "micro_batch", kept=[True, False], micro_batches=[0, 1]).tolist() == \
        [0.25, 0.25, 0.0, 0.0]  # the second micro-batch has no token left but still counts (TRL's bnpo)
    assert token_weights([2, 2], "constant", kept=[True, False], max_length=4).tolist() == [0.125] * 2 + [0.0] * 2
    with pytest.raises(ValueError, match="max_length"):
        token_weights([2], "constant")


def completions_group(finish, sizes=(2, 3, 4), rewards=(1.0, 0.0, 1.0)):
    g = Group(example={"prompt": "q"}, prompt=Prompt((1, 2)),
              completions=[Completion(0, list(range(n)), [-1.0] * n, f) for n, f in zip(sizes, finish)])
    g.rewards = list(rewards)
    grpo.set_advantages([g], "grpo")
    return g


def test_overlong_filtering_takes_truncated_completions_out_of_the_loss():
    g = completions_group(["stop", "length", "stop"])
    plain = train_batch([g], False, "token", 2, 0, SINGLE, "cpu")
    masked = train_batch([g], False, "token", 2, 0, SINGLE, "cpu", mask_truncated=True)
    assert plain.weights.tolist() == pytest.approx([1 / 9] * 9) and plain.truncated == 0
    assert masked.weights.tolist() == pytest.approx([1 / 6] * 2 + [0.0] * 3 + [1 / 6] * 4) and masked.truncated == 1
    assert g.advantages[1] != 0  # its advantage was computed with the others (DAPO masks the loss only)


def test_each_pack_knows_the_completion_of_each_token():
    g = completions_group(["stop"] * 3)
    batch = train_batch([g, g], False, "token", 2, 0, SINGLE, "cpu")
    assert batch.sequences[0].tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5]


# ---------------------------------------------------------------------------------------------------- masks
def test_off_policy_sequence_mask_drops_drifted_negative_sequences_only():
    lp = torch.full((8,), -1.0, requires_grad=True)
    old = lp.detach().clone()
    sampler = torch.tensor([-1.0, -1.0, -1.0, 0.5, -1.0, -1.0, -1.0, -1.0])  # completion 1 drifted by 1.5 nats
    adv = torch.tensor([ADV_SEQ[i] for i in SEQ.tolist()])  # completion 1's advantage is negative
    w = token_weights(LENGTHS, "token")
    loss, stats = grpo_loss(lp, old, adv, w, Objective(off_policy_threshold=1.0), sequences=SEQ,
                            sampler_logprobs=sampler)
    g = grad_of(loss, lp)
    assert g[3] == 0 and (g[:3] != 0).all() and (g[4:] != 0).all()
    assert stats["off_policy_masked"].item() == pytest.approx(1 / 8)
    adv_pos = adv.clone()
    adv_pos[3] = 0.5  # the same drift with a positive advantage is kept
    g = grad_of(grpo_loss(lp, old, adv_pos, w, Objective(off_policy_threshold=1.0), sequences=SEQ,
                          sampler_logprobs=sampler)[0], lp)
    assert g[3] != 0


def test_high_entropy_mask_gives_gradient_to_the_top_share_only():
    lp = torch.full((8,), -1.0, requires_grad=True)
    entropies = torch.tensor([0.1, 5.0, 0.2, 0.3, 4.0, 0.4, 0.5, 0.6])
    w = token_weights(LENGTHS, "token")
    loss, _ = grpo_loss(lp, lp.detach(), ADV, w, Objective(top_entropy=0.25), entropies=entropies)
    g = grad_of(loss, lp)
    assert (g != 0).tolist() == [False, True, False, False, True, False, False, False]
    assert g[1] == pytest.approx(-ADV[1] / 8)  # the normaliser is not changed by the mask (as the paper, TRL)
    with pytest.raises(ValueError, match="entropies"):
        grpo_loss(lp, lp.detach(), ADV, w, Objective(top_entropy=0.5))


def test_entropy_bonus_raises_the_entropy_of_the_policy():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4])
    from r1lab.packing import SelectiveLogSoftmax

    def entropy_after_a_step(coef):
        z = logits.detach().clone().requires_grad_()
        lp, ent = SelectiveLogSoftmax.apply(z, targets, True)
        loss, _ = grpo_loss(lp, lp.detach(), torch.zeros(4), torch.full((4,), 0.25), Objective(entropy_coef=coef),
                            entropies=ent)
        loss.backward()
        with torch.no_grad():
            z -= 1.0 * z.grad
            return SelectiveLogSoftmax.apply(z, targets, True)[1].mean().item()

    before = SelectiveLogSoftmax.apply(logits.detach(), targets, True)[1].mean().item()
    assert entropy_after_a_step(0.0) == pytest.approx(before)  # advantages 0: no gradient at all
    assert entropy_after_a_step(0.5) > before + 1e-3
    assert entropy_after_a_step(-0.5) < before - 1e-3  # a negative coefficient is an entropy penalty


# ----------------------------------------------------------------------------------------------- advantages
def test_rloo_baseline_is_the_mean_of_the_other_samples():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    expected = [[r[p, i] - (r[p].sum() - r[p, i]) / 3 for i in range(4)] for p in range(2)]
    assert torch.allclose(leave_one_out(r), torch.tensor(expected))
    nan = float("nan")
    assert leave_one_out(torch.tensor([[1.0, nan, 0.0]])).tolist() == [[1.0, 0.0, -1.0]]
    assert leave_one_out(torch.tensor([[1.0, nan]])).tolist() == [[0.0, 0.0]]  # nothing to compare with


def test_batch_std_is_the_group_mean_over_the_std_of_the_batchs_rewards():
    r = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    std = torch.tensor([1.0, 0, 0, 1, 1, 1]).std().item()  # 0.5164: the raw rewards', not the centred ones'
    got = batch_zscore(r, eps=0).flatten().tolist()
    assert got == pytest.approx([(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0, 0, 0])


def test_reinforce_plus_plus_whitens_over_the_batchs_tokens():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    n = torch.tensor([[3, 1], [2, 2]])
    tokens = [1.0] * 3 + [0.0] * 5  # the batch as verl's masked_whiten sees it: a value per token
    mean = sum(tokens) / 8
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 7)
    assert reinforce_plus_plus(r, n, eps=0).flatten().tolist() == pytest.approx(
        [(1 - mean) / std, -mean / std, -mean / std, -mean / std])
    centred = [0.5] * 3 + [-0.5] + [0.0] * 4  # REINFORCE++-baseline: the group mean first
    m = sum(centred) / 8
    s = math.sqrt(sum((t - m) ** 2 for t in centred) / 7)
    assert reinforce_plus_plus_baseline(r, n, eps=0).flatten().tolist() == pytest.approx(
        [(0.5 - m) / s, (-0.5 - m) / s, -m / s, -m / s])


class HalfOfTwo:
    """Rank 0 of two processes whose other half of the batch is ``other`` (what a real gather would return)."""

    size, rank, main = 2, 0, True

    def __init__(self, other):
        self.other = other

    def gather(self, value):
        return [value, self.other]


@pytest.mark.parametrize("estimator", ["batch_std", "reinforce_plus_plus", "grpo"])
def test_batch_estimators_see_every_processs_rewards(estimator):
    mine = [completions_group(["stop"] * 3, rewards=(1.0, 0.0, 0.0))]
    together = [completions_group(["stop"] * 3, rewards=(1.0, 0.0, 0.0)),
                completions_group(["stop"] * 3, rewards=(1.0, 1.0, 5.0))]
    grpo.set_advantages(together, estimator)
    other = ([[1.0, 1.0, 5.0]], [[2, 3, 4]])
    grpo.set_advantages(mine, estimator, HalfOfTwo(other))
    assert mine[0].advantages == pytest.approx(together[0].advantages)
    alone = [completions_group(["stop"] * 3, rewards=(1.0, 0.0, 0.0))]
    grpo.set_advantages(alone, estimator)
    assert (alone[0].advantages == pytest.approx(mine[0].advantages)) == (estimator == "grpo")


def test_a_wrong_estimator_is_refused_with_the_list():
    with pytest.raises(ValueError, match="rloo, batch_std, reinforce_plus_plus"):
        get_advantage("ppo")


def test_a_reward_that_reads_the_verifier_judges_what_evaluation_judges():
    """cosine, like accuracy, sees a reply cut at the length limit only up to the answer it had closed: an unfinished
    '... so 8' is wrong for both, not right because its last number happens to be the answer."""
    from r1lab.rewards.build import build_rewards
    from r1lab.rollout import score_group
    from r1lab.tasks import build_task

    task = build_task("arithmetic", {"n_train": 5, "n_test": 5})
    rewards = build_rewards({"accuracy": 1.0, "cosine": 1.0}, task, max_length=10)
    g = Group(example={"prompt": "What is 3 + 5?", "answer": "8"}, prompt=Prompt((1, 2)),
              completions=[Completion(0, list(range(n)), [-1.0] * n, finish, text=t) for n, finish, t in
                           [(5, "stop", "3 + 5 = 8"), (10, "length", "3 + 5 is 7, no wait so 8"),
                            (10, "length", "<answer>8</answer> and then")]])
    score_group(g, rewards)
    assert g.per_reward["accuracy"] == [1.0, 0.0, 1.0]
    assert g.per_reward["cosine"] == pytest.approx([0.75, -0.5, 0.5])  # right at 5/10; wrong at 10/10; right at 10/10


@pytest.mark.parametrize("args, message", [
    ({"repetition": {"ngram_size": 0}}, "reward_args: repetition: ngram_size must be at least 1"),
    ({"repetition": {"ngram_size": "abc"}}, "ngram_size='abc': give an int (default 3)"),
    ({"repetition": {"ngram_size": 2.5}}, "ngram_size=2.5: give an int"),
    ({"repetition": {"max_penalty": 1.0}}, "max_penalty must be 0 or negative"),
    ({"cosine": {"max_value_correct": "abc"}}, "max_value_correct='abc': give a finite number"),
    ({"cosine": {"max_value_correct": float("nan")}}, "max_value_correct=nan: give a finite number"),
    ({"code_format": {"code_language": 3}}, "code_language=3: give a str"),
    ({"overlong": {"cache_length": 500}}, "cache_length must be in [0, max_length=64]"),
    ({"code": {"tests": []}}, "'tests' is not an option of code; it takes partial"),
])
def test_a_rewards_option_values_are_checked_when_the_rewards_are_built(args, message):
    """A bad option value is refused before the run starts, not at the first scoring hours into it."""
    from r1lab.rewards.build import build_rewards
    from r1lab.tasks import build_task

    task = build_task("arithmetic", {"n_train": 5, "n_test": 5})
    weights = {"accuracy": 1.0, "repetition": 0.1, "cosine": 0.1, "code_format": 0.1, "overlong": 0.1, "code": 0.1}
    with pytest.raises(ValueError, match=re.escape(message)):
        build_rewards(weights, task, args=args, max_length=64)
    built = build_rewards(weights, task, args={"repetition": {"ngram_size": 2}, "overlong": {"cache_length": 16}},
                          max_length=64)
    assert built["repetition"][0]("a b a b") == pytest.approx(-1 / 3)  # bigrams ab ba ab: 2 unique of 3
    assert built["overlong"][0]("", completion_length=56) == -0.5  # the ramp over the last 16 of 64 tokens


def test_an_entropy_bonus_or_kl_term_trains_groups_without_an_advantage():
    same = completions_group(["stop"] * 3, rewards=(1.0, 1.0, 1.0))  # no advantage: nothing but the bonus acts
    assert train_batch([same], False, "token", 2, 0, SINGLE, "cpu").active == []
    assert train_batch([same], True, "token", 2, 0, SINGLE, "cpu").active == [0]


def test_normalized_rewards_drive_the_advantages_and_the_logs_keep_the_weighted_totals():
    """GDPO / TRL's normalize_then_sum: each reward z-scored in its group, summed with its weight, then (advantage
    batch_std) over the batch's std. The logged reward stays the plain weighted total."""
    from r1lab.rollout import score_group

    rewards = {"acc": (lambda c, **_: {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}[c], 1.0),
               "len": (lambda c, **_: {"a": 100.0, "b": 300.0, "c": 100.0, "d": 300.0}[c], 0.5)}
    groups = []
    for texts in (["a", "b", "c", "d"], ["a", "a", "b", "b"]):
        g = Group(example={}, prompt=Prompt((1,)), completions=[Completion(0, [5], [-1.0], "stop", text=t)
                                                                 for t in texts])
        score_group(g, rewards, normalize=True)
        groups.append(g)
    assert groups[0].rewards == [51.0, 151.0, 50.0, 150.0]  # 1 x acc + 0.5 x len, as logged
    acc = torch.tensor([1.0, 1, 0, 0])
    length = torch.tensor([100.0, 300, 100, 300])
    expected = (acc - acc.mean()) / (acc.std() + 1e-4) + 0.5 * (length - length.mean()) / (length.std() + 1e-4)
    assert groups[0].normalized == pytest.approx(expected.tolist(), abs=1e-6)
    grpo.set_advantages(groups, "batch_std")
    signal = torch.tensor([groups[0].normalized, groups[1].normalized])
    want = (signal - signal.mean(1, keepdim=True)) / (signal.flatten().std() + 1e-4)
    assert groups[0].advantages == pytest.approx(want[0].tolist(), abs=1e-5)
