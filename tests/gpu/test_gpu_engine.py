"""The engine and the training log-probs on a CUDA GPU, checked against the same model on the CPU.

Sampled tokens are not compared across devices (a rounding difference may flip a near-tie and the rows part ways);
instead each CUDA completion is teacher-forced through the CPU model, and the log-probs the engine returned with
its tokens must be the CPU's. That checks the whole decode path: prefill, left padding, the KV cache, the static
cache and its CUDA graphs, and that they see the weights as they are now."""

import copy

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine
from r1lab.packing import pack, pack_samples, token_logprobs

from conftest import make_model, make_tokenizer

pytestmark = pytest.mark.gpu

PROMPTS = ["What is 2+3?", "Hi", "A longer prompt, so the rows of a batch are left-padded differently."]


def cuda_copy(model, dtype=torch.float32):
    return copy.deepcopy(model).to("cuda", dtype)


def reference_logprobs(cpu_model, prompt_ids, completion, temperature):
    """Log-probs of ``completion``'s tokens after ``prompt_ids`` under the CPU model, as the trainer computes them."""
    packed = pack([(prompt_ids, [completion.token_ids])], pad_id=0)
    return token_logprobs(cpu_model, packed, temperature)


def check_against_cpu(engine, cpu_model, prompts, params, atol):
    prompt_ids = [engine.encode(p) for p in prompts]
    out = engine.generate(prompt_ids, params)
    assert [len(group) for group in out] == [params.n] * len(prompts)
    gaps = []
    for ids, group in zip(prompt_ids, out):
        for completion in group:
            assert len(completion.token_ids) == len(completion.logprobs) > 0
            got = torch.tensor(completion.logprobs)
            assert torch.isfinite(got).all()
            want = reference_logprobs(cpu_model, ids, completion, params.temperature or 1.0)
            gaps.append((got - want).abs().max().item())
    assert max(gaps) < atol, f"largest gap to the CPU log-probs: {max(gaps):.2e}"
    return out


@pytest.mark.parametrize("decode", ["static", "dynamic"])
def test_sampled_completions_carry_the_cpu_models_logprobs(decode):
    tok = make_tokenizer()
    cpu_model = make_model(tok, seed=1)
    engine = TorchEngine(cuda_copy(cpu_model), tok, decode=decode)
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=20, ignore_eos=True, seed=7)
    out = check_against_cpu(engine, cpu_model, PROMPTS, params, atol=2e-4)
    assert all(len(c.token_ids) == 20 and c.finish_reason == "length" for group in out for c in group)


@pytest.mark.parametrize("decode", ["static", "dynamic"])
def test_greedy_picks_the_cpu_models_top_token(decode):
    tok = make_tokenizer()
    cpu_model = make_model(tok, seed=2)
    engine = TorchEngine(cuda_copy(cpu_model), tok, decode=decode)
    prompt_ids = [engine.encode(p) for p in PROMPTS]
    out = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_new_tokens=16, ignore_eos=True))
    for ids, (completion,) in zip(prompt_ids, out):
        with torch.no_grad():
            logits = cpu_model(torch.tensor([ids + completion.token_ids])).logits[0, len(ids) - 1:-1]  # (T, V)
        chosen = logits.gather(-1, torch.tensor(completion.token_ids)[:, None])[:, 0]
        assert (logits.max(-1).values - chosen).max() < 1e-4  # the top token, or one tied with it to rounding


def test_static_path_sees_weight_updates_and_new_batch_sizes():
    """GRPO samples, steps the optimizer in place, samples again: the captured graphs must read the new weights."""
    tok = make_tokenizer()
    cpu_model = make_model(tok, seed=3)
    model = cuda_copy(cpu_model)
    engine = TorchEngine(model, tok, decode="static")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, ignore_eos=True, seed=0)
    check_against_cpu(engine, cpu_model, PROMPTS, params, atol=2e-4)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    loss = model(torch.tensor([engine.encode("0123456789")], device="cuda")).logits.float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    model.eval()
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    check_against_cpu(engine, cpu_model, PROMPTS, params, atol=2e-4)
    check_against_cpu(engine, cpu_model, PROMPTS[:2], params, atol=2e-4)  # another batch size
    check_against_cpu(engine, cpu_model, PROMPTS * 3, params, atol=2e-4)


@pytest.mark.parametrize("decode", ["static", "dynamic"])
def test_bf16_decoding_is_finite_and_close_to_fp32(decode):
    tok = make_tokenizer()
    cpu_model = make_model(tok, seed=4)
    engine = TorchEngine(cuda_copy(cpu_model, torch.bfloat16), tok, decode=decode)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, ignore_eos=True, seed=1)
    check_against_cpu(engine, cpu_model, PROMPTS, params, atol=0.1)


def test_stop_at_eos_and_max_tokens_on_cuda():
    tok = make_tokenizer()
    engine = TorchEngine(make_model(tok, seed=5).to("cuda"), tok)
    out = engine.generate([engine.encode(p) for p in PROMPTS],
                          SamplingParams(n=8, temperature=1.5, max_new_tokens=40, seed=3))
    for group in out:
        for c in group:
            assert c.finish_reason in ("stop", "length") and 0 < len(c.token_ids) <= 40
            assert tok.eos_token_id not in c.token_ids[:-1]  # a row ends at its first EOS
            assert (c.token_ids[-1] == tok.eos_token_id) == (c.finish_reason == "stop")


def grpo_groups(tok):
    gen = torch.Generator().manual_seed(0)
    groups = []
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        groups.append((ids, [torch.randint(2, len(tok), (int(n),), generator=gen).tolist() for n in (5, 9, 1, 14)]))
    return groups


def sft_rows(tok):
    def encode(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    return [[(encode("[user]What is 1+1?\n[assistant]"), encode("<answer>2</answer>")),
             (encode("[user]What is 7+1?\n[assistant]"), encode("<answer>8</answer>"))]]


@pytest.mark.parametrize("layout", ["groups", "samples"])
def test_training_logprobs_agree_between_cpu_and_cuda_in_fp32(layout):
    tok = make_tokenizer()
    cpu_model = make_model(tok, seed=6)
    model = cuda_copy(cpu_model)
    packed = pack(grpo_groups(tok), tok.pad_token_id) if layout == "groups" else \
        pack_samples(sft_rows(tok), tok.pad_token_id)
    want = token_logprobs(cpu_model, packed, temperature=0.7)
    got = token_logprobs(model, packed, temperature=0.7)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["groups", "samples"])
def test_bf16_autocast_logprobs_are_finite_and_near_fp32_with_gradients(layout):
    from r1lab.optim import precision

    tok = make_tokenizer()
    model = make_model(tok, seed=7).to("cuda")
    packed = pack(grpo_groups(tok), tok.pad_token_id) if layout == "groups" else \
        pack_samples(sft_rows(tok), tok.pad_token_id)
    with torch.no_grad():
        fp32 = token_logprobs(model, packed)
    model.train()
    with precision(model, torch.bfloat16):
        bf16 = token_logprobs(model, packed).float()
    assert torch.isfinite(bf16).all() and (bf16 - fp32).abs().max() < 0.1
    bf16.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)  # fp32 master weights
