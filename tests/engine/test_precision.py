"""Decoding in bf16 and fp16 on the CPU: weights held in the half precision, and fp32 weights decoding in it (a
trainer's fp32 master weights rolling out in bf16). Every path must run and score its tokens as the fp32 model
does, to half-precision rounding."""

import copy

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine

from conftest import make_tokenizer


@pytest.fixture(scope="module")
def peaked():
    """A tiny random Llama with large weights, so its distributions are peaked (log-probs spread over ~10 nats)
    and a log-prob scored at the wrong position shows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.3)
    return LlamaForCausalLM(config).eval(), tok


PATHS = {"dynamic": dict(decode="dynamic"), "hf_forward": dict(decode="dynamic", use_fast_decode=False),
         "static": dict(decode="static", sync_every=5)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("held", ["weights", "compute_only"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_decoding_scores_its_tokens_like_the_fp32_model(peaked, dtype, held, path):
    model, tok = peaked
    decoding = copy.deepcopy(model).to(dtype) if held == "weights" else model
    engine = TorchEngine(decoding, tok, dtype=None if held == "weights" else dtype, **PATHS[path])
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("What is 2+3?", "Hi")]
    out = engine.generate(prompts, SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=1))
    for prompt, group in zip(prompts, out):
        for c in group:
            assert len(c) > 0 and all(0 <= t < len(tok) for t in c.token_ids)
            logprobs = torch.tensor(c.logprobs)
            assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0].float() / 0.8
            fp32 = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(c.token_ids)[:, None])
            assert (logprobs - fp32[:, 0]).abs().max() < 0.3  # bf16 rounds logits of ~20 by ~0.1


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_fp32_weights_decoding_in_bf16_keep_a_bf16_snapshot_and_fp32_weights(peaked, decode):
    model, tok = peaked
    engine = TorchEngine(model, tok, dtype=torch.bfloat16, decode=decode)
    engine.generate([tok("Hi", add_special_tokens=False)["input_ids"]], SamplingParams(max_new_tokens=4, seed=0))
    decoder = engine._fast[2]
    projections = [p for layer in decoder.layers for p in (layer[1], layer[2], layer[4], layer[5])] + [decoder.lm_head]
    assert decoder.dtype == torch.bfloat16 and all(p.weight.dtype == torch.bfloat16 for p in projections)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if decode == "static":
        assert engine._static.buffers.k.dtype == torch.bfloat16 and engine._static.buffers.logits.dtype == torch.float32
