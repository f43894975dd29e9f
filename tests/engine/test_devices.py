"""Every tensor the engine makes lives on the model's device, checked without a GPU.

Two checks that fail the way a CUDA run would:

- The whole engine runs on the CPU with torch's default device set to ``meta``. A tensor made without ``device=``
  (or a generator, uniform or index left on the default device) lands on meta, and the first op that mixes it
  with the model's CPU tensors, or reads its values, raises, just as a CPU tensor meeting CUDA ones does.
- The step that the static path captures into a CUDA graph (plus its set-up, compaction and growth) runs with
  the model and its buffers on ``meta``: a CPU tensor in it raises a device mismatch, and a host sync
  (``.item()``, ``.tolist()``, ``bool(tensor)``, ``nonzero``) raises because meta tensors have no values.
"""

import copy

import pytest
import torch

from r1lab.engine import SamplingParams, TorchEngine
from r1lab.engine.fast_decode import FastDecoder
from r1lab.engine.static_decode import StaticDecoding


def prompts_of(tok, *texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_the_harness_catches_a_tensor_made_without_a_device():
    cpu = torch.ones(3)
    with torch.device("meta"), pytest.raises(RuntimeError, match="device"):
        cpu * torch.rand(3, generator=torch.Generator())  # the bug this file looks for: device= forgotten
    with torch.device("meta"):
        assert (cpu * torch.rand(3, generator=torch.Generator(), device=cpu.device)).device == cpu.device


ENGINES = {
    "dynamic": dict(decode="dynamic"),
    "dynamic_hf_forward": dict(decode="dynamic", use_fast_decode=False),
    "dynamic_compacting": dict(decode="dynamic", compact_fraction=0.01),
    "dynamic_bf16": dict(decode="dynamic", dtype=torch.bfloat16),
    "hf_forward_bf16": dict(decode="dynamic", use_fast_decode=False, dtype=torch.bfloat16),
    "static": dict(decode="static", sync_every=3),
    "static_bf16": dict(decode="static", dtype=torch.bfloat16),
}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_the_engine_makes_every_tensor_on_the_models_device(tiny, engine):
    model, tok = tiny
    prompts = prompts_of(tok, "What is 2+3?", "Hi")
    runs = [
        SamplingParams(n=3, temperature=0.9, top_p=0.8, top_k=20, max_new_tokens=10, seed=1, stop=["e"],
                       stop_token_ids=[tok.convert_tokens_to_ids("a")]),
        SamplingParams(n=2, temperature=0, max_new_tokens=6, ignore_eos=True),
        SamplingParams(n=2, temperature=1.5, max_new_tokens=6),  # unseeded: the device's default generator
    ]
    for params in runs:
        expected = TorchEngine(model, tok, **ENGINES[engine]).generate(prompts, params)
        with torch.device("meta"):
            got = TorchEngine(model, tok, **ENGINES[engine]).generate(prompts, params)
        if params.seed is not None or params.temperature == 0:
            assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_captured_step_runs_on_another_device_without_a_host_sync(tiny, dtype):
    model, _ = tiny
    model = copy.deepcopy(model).to("meta")
    meta = torch.device("meta")
    decoder = FastDecoder(model, dtype=dtype)
    static = StaticDecoding(sync_every=4)
    buf = static._buffers(decoder, 4, 256, meta)
    width, kv = 5, (2, decoder.n_kv, 5, decoder.head_dim)  # 2 prompts of width 5
    prefill = [(torch.zeros(kv, device=meta), torch.zeros(kv, device=meta)) for _ in decoder.layers]
    static._load(buf, prefill, torch.zeros((2, decoder.vocab), device=meta), [5, 3], width, 2, 4, {1, 7})
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0),
                   SamplingParams(temperature=0.7, top_k=20, top_p=0.9)):
        static._decode_step(decoder, buf, 4, 256, params, pad_id=0)
    slots, B = static._compact(buf, [0, 1, 2, 3], live=[2])
    assert (slots, B) == ([2], 1)
    buf = static._grow(decoder, 512)
    static._decode_step(decoder, buf, B, 512, SamplingParams(temperature=0.7, top_p=0.9), pad_id=0)
    assert buf.k.device == meta and buf.k.dtype == dtype and buf.logits.dtype == torch.float32
