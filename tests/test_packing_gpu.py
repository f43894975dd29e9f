"""The CUDA path of r1lab.packing (compiled flex attention over a block mask, the chunked LM head) against the
CPU fp32 reference: one plain forward per sequence. Skipped without a CUDA GPU."""

import copy

import pytest
import torch

import r1lab.packing as packing
from r1lab.models import checkpoint_activations
from r1lab.packing import pack, token_logprobs

from conftest import make_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

# rows of different lengths, an empty-prompt group, a prompt past one flex block (128 tokens)
GROUPS = [([5, 6, 7, 8], [[9, 10, 11], [12], [13, 14, 15, 16, 17]]), ([20, 21], [[22, 23]]), ([], [[30, 31], [32]]),
          ([40 + i % 50 for i in range(150)], [[60 + i % 30 for i in range(n)] for n in (40, 7, 90)])]


def reference(model, groups, temperature):
    """CPU fp32 log-probs of every scored token, one plain forward per sequence."""
    out = []
    for prompt, completions in groups:
        for c in completions:
            logp = torch.log_softmax(model(torch.tensor([prompt + c])).logits[0].float() / temperature, -1)
            out += [logp[len(prompt) + j - 1, t] for j, t in enumerate(c) if prompt or j]
    return torch.stack(out)


def grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    (fn() * weights.to(next(model.parameters()).device)).sum().backward()
    return {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(got, expected, tol):
    assert got.keys() == expected.keys() and len(got) > 3
    for name in got:
        scale = expected[name].abs().max().clamp(min=1e-6)
        assert (got[name] - expected[name]).abs().max() <= tol * scale, name


@pytest.fixture
def cpu_model(tokenizer):
    return make_model(tokenizer, hidden=64).train()


def test_cuda_uses_flex_attention():
    attend = packing.packed_attention([[(0, 4, 0), (4, 9, 4)]], 9, torch.device("cuda"))
    assert attend.func is packing._flex_attention and attend.keywords["block_mask"].kv_indices.is_cuda


@pytest.mark.parametrize("budget", [None, 1 << 12])  # the whole head, and chunks of a few rows
def test_flex_fp32_matches_the_cpu_reference(cpu_model, budget):
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    gpu = copy.deepcopy(cpu_model).cuda()
    expected = grads(cpu_model, lambda: reference(cpu_model, GROUPS, 0.7), weights)
    got = grads(gpu, lambda: token_logprobs(gpu, packed, 0.7, logits_budget=budget), weights)
    assert_close_grads(got, expected, tol=2e-3)  # flex's fp32 products may use TF32
    with torch.no_grad():
        values = token_logprobs(gpu, packed, 0.7, logits_budget=budget).cpu()
        assert torch.allclose(values, reference(cpu_model, GROUPS, 0.7), atol=2e-3)


def test_new_row_lengths_reuse_the_compiled_kernel(cpu_model):
    """Each micro-batch has its own row length: compiled once with dynamic shapes, still right every time."""
    gpu = copy.deepcopy(cpu_model).cuda()
    with torch.no_grad():
        for k in range(1, 5):
            groups = [([5, 6, 7], [[8] * (20 * k), [9] * (33 * k)])] * k
            got = token_logprobs(gpu, pack(groups, pad_id=0), 0.7).cpu()
            assert torch.allclose(got, reference(cpu_model, groups, 0.7), atol=2e-3)


def test_bf16_weights_and_bf16_autocast_are_close(cpu_model):
    packed = pack(GROUPS, pad_id=0)
    with torch.no_grad():
        expected = reference(cpu_model, GROUPS, 0.7)
        bf16 = copy.deepcopy(cpu_model).cuda().to(torch.bfloat16)
        for budget in (None, 1 << 12):
            assert torch.allclose(token_logprobs(bf16, packed, 0.7, logits_budget=budget).cpu(), expected, atol=0.15)
    fp32 = copy.deepcopy(cpu_model).cuda()
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    want = grads(cpu_model, lambda: reference(cpu_model, GROUPS, 0.7), weights)
    for budget in (None, 1 << 12):
        with torch.autocast("cuda", torch.bfloat16):
            got = grads(fp32, lambda b=budget: token_logprobs(fp32, packed, 0.7, logits_budget=b), weights)
        assert all(p.grad.dtype == torch.float32 for p in fp32.parameters() if p.grad is not None)
        assert_close_grads(got, want, tol=0.1)


def test_gradient_checkpointing_on_cuda(cpu_model):
    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    gpu = copy.deepcopy(cpu_model).cuda()
    plain = grads(gpu, lambda: token_logprobs(gpu, packed, 0.7), weights)
    checkpoint_activations(gpu)
    checkpointed = grads(gpu, lambda: token_logprobs(gpu, packed, 0.7, logits_budget=1 << 12), weights)
    assert_close_grads(checkpointed, plain, tol=1e-4)


def test_lora_on_cuda(cpu_model):
    pytest.importorskip("peft")
    from r1lab.models import add_lora

    packed = pack(GROUPS, pad_id=0)
    weights = torch.randn(len(packed.targets), generator=torch.Generator().manual_seed(1))
    model = add_lora(cpu_model, r=4, lora_alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    gpu = copy.deepcopy(model).cuda().train()
    expected = grads(model, lambda: reference(model, GROUPS, 0.7), weights)
    got = grads(gpu, lambda: token_logprobs(gpu, packed, 0.7), weights)
    assert_close_grads(got, expected, tol=2e-3)
