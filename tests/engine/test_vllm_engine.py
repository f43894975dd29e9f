"""The vLLM engine against a fake ``vllm`` module (no GPU, no vLLM): how our SamplingParams become vLLM's, what
comes back as Completions, weights reaching vLLM's model, and GRPO sleeping/waking it around each update."""

import copy
import dataclasses
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import r1lab.rl.grpo as grpo
from r1lab.config import ENGINES, ZeroConfig, option_help
from r1lab.engine import SamplingParams, TorchEngine, VllmEngine
from r1lab.engine.vllm_engine import policy_weights, prompt_seed
from r1lab.models import add_lora, save_checkpoint
from r1lab.rewards import REWARDS
from r1lab.rollout import rollout_engine

from conftest import make_model, make_tokenizer


# ------------------------------------------------------------------------------------------------ the fake vllm
class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.kwargs = kwargs


@dataclasses.dataclass
class EngineArgs:  # vLLM >= 0.10 has logprobs_mode
    model: str = ""
    logprobs_mode: str = "raw_logprobs"


@dataclasses.dataclass
class OldEngineArgs:  # vLLM 0.8
    model: str = ""


class FakeModel:
    """vLLM's model inside its worker: ``load_weights`` takes (name, tensor) pairs."""

    def __init__(self):
        self.loaded = []  # one {name: tensor} per call

    def load_weights(self, weights):
        self.loaded.append({name: tensor.detach().clone() for name, tensor in weights})


class OldFakeLLM:
    """``vllm.LLM``: records how it was built and every call; ``script(prompt_ids, params)`` gives each prompt's
    outputs as (token ids, per-token logprob dicts, finish reason) triples."""

    def __init__(self, model, **kwargs):
        self.model_name, self.kwargs, self.calls = model, kwargs, []
        self.model = FakeModel()
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=512))
        self.script = None

    def get_tokenizer(self):
        return make_tokenizer()

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[
            SimpleNamespace(index=j, token_ids=tokens, logprobs=logprobs, finish_reason=finish, text="(vLLM's text)")
            for j, (tokens, logprobs, finish) in reversed(list(enumerate(self.script(p["prompt_token_ids"], sp))))])
            for p, sp in zip(prompts, sampling_params)]

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append("wake_up")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


class FakeLLM(OldFakeLLM):
    """vLLM >= 0.9's LLM has ``apply_model``; 0.8's is reached through its driver worker."""

    def apply_model(self, fn):
        self.calls.append("apply_model")
        return [fn(self.model)]


def fake_vllm(llm_cls=FakeLLM, engine_args=EngineArgs):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.EngineArgs = llm_cls, FakeSamplingParams, engine_args
    return module


@pytest.fixture
def vllm(monkeypatch):
    module = fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "restored after the test")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    return module


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def lp(token, value, **others):
    """One step of vLLM's logprobs: the sampled token and (as vLLM may add) other likely tokens."""
    return {token: SimpleNamespace(logprob=value), **{t: SimpleNamespace(logprob=v) for t, v in others.items()}}


# --------------------------------------------------------------------------------------------- the mapping
def test_our_sampling_params_become_vllms_and_prompts_go_as_token_ids(vllm, tokenizer):
    engine = VllmEngine("some/model", tokenizer=tokenizer, gpu_memory_utilization=0.25, dtype=torch.bfloat16)
    llm = engine.llm
    assert llm.model_name == "some/model"
    assert llm.kwargs == {"gpu_memory_utilization": 0.25, "dtype": "bfloat16", "enable_sleep_mode": True,
                          "logprobs_mode": "processed_logprobs"}
    import os
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine in this process: weights by reference
    llm.script = lambda prompt, sp: [([5], [lp(5, -1.0)], "length")] * sp.n
    prompts = [ids(tokenizer, "ab"), ids(tokenizer, "c")]
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=5, stop=["</a>"],
                            stop_token_ids=[7], include_stop_str_in_output=True, ignore_eos=True, seed=11)
    out = engine.generate(prompts, params)
    assert [len(group) for group in out] == [3, 3]
    (_, sent, sampling), = [c for c in llm.calls if c[0] == "generate"]
    assert sent == [{"prompt_token_ids": prompts[0]}, {"prompt_token_ids": prompts[1]}]
    for key, sp in enumerate(sampling):
        assert sp.kwargs == {"n": 3, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 5,
                             "stop": ["</a>"], "stop_token_ids": [7], "include_stop_str_in_output": True,
                             "ignore_eos": True, "seed": prompt_seed(11, key), "logprobs": 0}
    engine.generate(prompts[:1], SamplingParams(top_k=4))
    assert llm.calls[-1][2][0].kwargs["top_k"] == 4 and llm.calls[-1][2][0].kwargs["seed"] is None


def test_a_prompts_seed_follows_its_stream_key_not_its_batch(vllm, tokenizer):
    engine = VllmEngine("m", tokenizer=tokenizer)
    engine.llm.script = lambda prompt, sp: [([5], [lp(5, -1.0)], "length")] * sp.n
    a, b = ids(tokenizer, "a"), ids(tokenizer, "b")
    params = SamplingParams(n=2, seed=3)

    def seeds(prompts, **kw):
        engine.generate(prompts, params, **kw)
        return [sp.seed for sp in engine.llm.calls[-1][2]]

    together, alone = seeds([a, b], stream_ids=[5, 9]), seeds([b], stream_ids=[9])
    assert together[1] == alone[0] and together[0] != together[1]
    assert seeds([a, b]) == [prompt_seed(3, 0), prompt_seed(3, 1)]  # without keys: the place in the call
    assert abs(prompt_seed(3, 0) - prompt_seed(3, 1)) > 1000  # vLLM seeds sample j with seed + j: no overlap
    with pytest.raises(ValueError, match="stream_ids"):
        engine.generate([a, b], params, stream_ids=[1])


def test_logprobs_mode_is_asked_for_where_vllm_has_it(monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(engine_args=OldEngineArgs))
    old = VllmEngine("m", tokenizer=tokenizer)
    assert "logprobs_mode" not in old.llm.kwargs and old.logprobs_mode == "raw_logprobs"


# ------------------------------------------------------------------------------------------ what comes back
def test_completions_hold_the_sampled_tokens_their_logprobs_finish_reasons_and_text(vllm, tokenizer):
    engine = VllmEngine("m", tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    x, y = ids(tokenizer, "xy")
    outputs = {0: [([x, y], [lp(x, -0.5, **{str(y): -0.1}), lp(y, -0.25)], "length"),
                   ([y, eos], [lp(y, -1.5), lp(eos, -0.75)], "stop")]}
    engine.llm.script = lambda prompt, sp: outputs[0]
    # vLLM lists other likely tokens beside the sampled one: keys are ints, and only the sampled token's counts
    outputs[0][0][1][0] = {y: SimpleNamespace(logprob=-0.1), x: SimpleNamespace(logprob=-0.5)}
    (first, second), = engine.generate([ids(tokenizer, "q")], SamplingParams(n=2))
    assert (first.token_ids, first.logprobs, first.finish_reason, first.text) == ([x, y], [-0.5, -0.25], "length",
                                                                                   "xy")
    assert (second.token_ids, second.logprobs, second.finish_reason, second.text) == ([y, eos], [-1.5, -0.75],
                                                                                      "stop", "y")
    assert first.prompt_index == second.prompt_index == 0
    outputs[0] = [([x], [lp(x, -1.0)], "weird")]
    with pytest.raises(RuntimeError, match="'weird'"):
        engine.generate([ids(tokenizer, "q")], SamplingParams())


@pytest.mark.parametrize("include, text", [(True, "12</a>"), (False, "12")])
def test_text_is_cut_at_the_stop_string(vllm, tokenizer, include, text):
    engine = VllmEngine("m", tokenizer=tokenizer)
    tokens = ids(tokenizer, "12</a>3")  # the stop string ends inside a reply's last tokens
    engine.llm.script = lambda prompt, sp: [(tokens, [lp(t, -1.0) for t in tokens], "stop")]
    (c,), = engine.generate([ids(tokenizer, "q")], SamplingParams(stop=["</a>"], include_stop_str_in_output=include))
    assert c.text == text and c.token_ids == tokens and c.finish_reason == "stop"


def test_on_token_sees_each_token_in_order_and_false_cuts_the_sample_as_aborted(vllm, tokenizer):
    engine = VllmEngine("m", tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    a, b, c = ids(tokenizer, "abc")
    engine.llm.script = lambda prompt, sp: [([a, b, c], [lp(a, -1.0), lp(b, -2.0), lp(c, -3.0)], "length"),
                                            ([c, eos], [lp(c, -1.0), lp(eos, -2.0)], "stop")]
    seen = []

    def on_token(prompt, sample, token):
        seen.append((prompt, sample, token))
        return not (prompt == 1 and sample == 0 and token == b)

    groups = engine.generate([ids(tokenizer, "p"), ids(tokenizer, "q")], SamplingParams(n=2), on_token=on_token)
    assert seen == [(0, 0, a), (0, 0, b), (0, 0, c), (0, 1, c),  # not the EOS that stopped sample 1
                    (1, 0, a), (1, 0, b), (1, 1, c)]
    cut = groups[1][0]
    assert (cut.token_ids, cut.logprobs, cut.finish_reason, cut.text) == ([a, b], [-1.0, -2.0], "abort", "ab")
    assert [x.finish_reason for x in groups[0] + groups[1][1:]] == ["length", "stop", "stop"]


# ------------------------------------------------------------------------------------------------- weights
def test_load_weights_reaches_vllms_model_then_drops_the_prefix_cache(vllm, tiny):
    model, tok = tiny
    engine = VllmEngine("m", tokenizer=tok)
    engine.load_weights(model.state_dict())
    (loaded,) = engine.llm.model.loaded
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert engine.llm.calls == ["apply_model", "reset_prefix_cache"]
    engine.load_weights(iter([("lm_head.weight", torch.ones(2))]))  # (name, tensor) pairs work too
    assert torch.equal(engine.llm.model.loaded[-1]["lm_head.weight"], torch.ones(2))


def test_a_vllm_without_apply_model_is_reached_through_its_driver_worker(monkeypatch, tokenizer):
    class OldLLM(OldFakeLLM):
        def __init__(self, model, **kwargs):
            super().__init__(model, **kwargs)
            self.llm_engine.model_executor = SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self.model)))

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(llm_cls=OldLLM))
    engine = VllmEngine("m", tokenizer=tokenizer)
    assert not hasattr(engine.llm, "apply_model")
    engine.load_weights({"w": torch.zeros(3)})
    assert torch.equal(engine.llm.model.loaded[0]["w"], torch.zeros(3))


def test_lora_weights_are_pushed_merged_without_touching_the_trained_ones(tokenizer):
    peft_model = add_lora(make_model(tokenizer), r=4, lora_alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero: make the adapters matter
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    pushed = dict(policy_weights(peft_model))
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys()
    assert all(torch.allclose(pushed[k], merged[k], atol=1e-6) for k in merged)
    plain = make_model(tokenizer).state_dict()
    assert any(not torch.allclose(pushed[k], plain[k]) for k in plain)  # the adapters were folded in
    assert all(torch.equal(v, before[k]) for k, v in peft_model.state_dict().items())


# ---------------------------------------------------------------------------------------- selection, errors
def test_without_vllm_choosing_it_says_how_to_install_it(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "vllm", None)  # absent, even where vLLM is installed
    with pytest.raises(ImportError, match=r"pip install 'r1lab\[vllm\]' \(CUDA GPUs only\)"):
        VllmEngine("m")
    tiny[0].name_or_path = "org/tiny"
    with pytest.raises(ImportError, match=r"r1lab\[vllm\]"):
        rollout_engine(TorchEngine(*tiny), "vllm")


def test_the_engine_setting_is_checked_and_documented(vllm, tiny, monkeypatch, tmp_path):
    assert ENGINES == ("torch", "vllm")
    torch_engine = TorchEngine(*tiny)
    assert rollout_engine(torch_engine, "torch") is torch_engine
    with pytest.raises(ValueError, match="'' is neither"):  # built in memory: nothing vLLM could start from
        rollout_engine(torch_engine, "vllm")
    torch_engine.model.name_or_path = str(tmp_path)  # a folder without config.json (a .gguf's)
    with pytest.raises(ValueError, match="is neither"):
        rollout_engine(torch_engine, "vllm")
    torch_engine.model.name_or_path = "org/tiny"  # a hub id
    sampler = rollout_engine(torch_engine, "vllm")  # each name the config allows builds
    assert isinstance(sampler, VllmEngine) and sampler.llm.model_name == "org/tiny"
    assert sampler.llm.calls == ["apply_model", "reset_prefix_cache"]  # given the policy's current weights
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="under torchrun use --engine torch"):
        rollout_engine(torch_engine, "vllm")
    assert "torch | vllm" in option_help(ZeroConfig)["engine"]
    for changes, problem in [({"engine": "tpu"}, "engine='tpu': choose one of torch, vllm"),
                             ({"vllm_gpu_memory_utilization": 1.0}, "vllm_gpu_memory_utilization=1.0: use a share"),
                             ({"vllm_gpu_memory_utilization": 0.0}, "vllm_gpu_memory_utilization=0.0"),
                             ({"engine": "vllm", "device": "cpu"}, "engine=vllm needs a CUDA GPU")]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
            ZeroConfig(**changes).validate()
    ZeroConfig(engine="vllm", vllm_gpu_memory_utilization=0.5).validate()


# --------------------------------------------------------------------------------------------- GRPO with it
class SamplingLLM(FakeLLM):
    """A fake vLLM that samples for real: its own copy of the tiny model, loaded from the folder it is built from
    and updated only through ``load_weights``, decoded by r1lab's torch engine."""

    built: list = []

    def __init__(self, model, **kwargs):
        from transformers import AutoModelForCausalLM

        super().__init__(model, **kwargs)
        self.built.append(self)
        self.hf = AutoModelForCausalLM.from_pretrained(model)
        self.model.load_weights = self._load
        self.tok = make_tokenizer()

    def _load(self, weights):
        self.calls.append("load_weights")
        self.hf.load_state_dict(dict(weights))  # strict: every weight, under the names the model has

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append("generate")
        engine, outputs = TorchEngine(self.hf, self.tok), []
        for p, sp in zip(prompts, sampling_params):
            ours = SamplingParams(n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=max(0, sp.top_k),
                                  max_new_tokens=sp.max_tokens, stop=sp.stop, stop_token_ids=sp.stop_token_ids,
                                  include_stop_str_in_output=sp.include_stop_str_in_output, ignore_eos=sp.ignore_eos,
                                  seed=sp.seed)
            (group,) = engine.generate([p["prompt_token_ids"]], ours)
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(
                index=j, token_ids=c.token_ids, logprobs=[lp(t, v) for t, v in zip(c.token_ids, c.logprobs)],
                finish_reason=c.finish_reason, text=c.text) for j, c in enumerate(group)]))
        return outputs


def test_grpo_with_engine_vllm_sleeps_through_each_update_and_samples_the_new_weights(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(llm_cls=SamplingLLM))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(SamplingLLM, "built", [])
    monkeypatch.setitem(REWARDS, "digit_share", lambda completion, **_: sum(map(str.isdigit, completion)) / 8)
    tok = make_tokenizer()
    start = save_checkpoint(make_model(tok), tok, tmp_path / "tiny")
    cfg = ZeroConfig(model=str(start), task="arithmetic", task_args={"n_train": 20, "n_test": 4}, template="native",
                     rewards={"digit_share": 1.0}, steps=2, prompts_per_step=2, group_size=4,
                     max_new_tokens=8, eval_examples=2, eval_max_new_tokens=4, lr=1e-2, warmup_steps=0, save_every=2,
                     out=str(tmp_path / "run"), threads=1, temperature=1.0, engine="vllm",
                     vllm_gpu_memory_utilization=0.4)
    summary = grpo.train(cfg, progress=False)

    (llm,) = SamplingLLM.built
    assert llm.model_name == str(start) and llm.kwargs["gpu_memory_utilization"] == 0.4
    assert llm.kwargs["enable_sleep_mode"] is True
    calls = [c if isinstance(c, str) else c[0] for c in llm.calls]
    push = ["apply_model", "load_weights", "reset_prefix_cache"]
    step = ["generate", "sleep", "wake_up", *push]
    # the weights at the start, the evaluation before, two steps, the evaluation after
    assert calls == [*push, "generate", *step, *step, "generate"]
    assert ("sleep", 1) in llm.calls
    trained = load_file(f"{summary['checkpoint']}/model.safetensors")
    initial = load_file(f"{start}/model.safetensors")
    sampler = llm.hf.state_dict()
    assert all(torch.equal(sampler[k], v) for k, v in trained.items())  # vLLM's copy follows the trainer
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["logprob_gap_max"] < 1e-3 for r in rows)  # step 2 sampled the weights step 1 made
