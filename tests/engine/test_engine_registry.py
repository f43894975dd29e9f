"""The engine registry: every command opens its engine by name, options are checked before anything loads, and what an
engine cannot do is refused with what to use instead."""

import pytest
import torch

from r1lab import config
from r1lab.engine import (
    ENGINES,
    OpenAIEngine,
    Prompt,
    SamplingParams,
    TorchEngine,
    VllmEngine,
    engine_for_policy,
    open_engine,
)
from r1lab.engine.base import Engine

from conftest import make_model, make_tokenizer


def test_every_engine_implements_every_method_of_the_interface():
    methods = {name for name in dir(Engine) if not name.startswith("_") and callable(getattr(Engine, name))}
    assert methods == {"prompt", "encode", "generate", "each", "load_weights", "sleep", "wake_up", "close"}
    for cls in (TorchEngine, VllmEngine, OpenAIEngine):
        assert not [name for name in methods if not callable(getattr(cls, name, None))], cls
    assert set(ENGINES) == {"torch", "vllm", "openai"}


def test_unknown_engine_args_are_refused_by_name_before_a_model_loads():
    with pytest.raises(ValueError, match=r"engine 'torch' takes no 'enforce_eager'.*max_rows"):
        open_engine("no/such/model", "torch", {"enforce_eager": True})
    with pytest.raises(ValueError, match=r"engine='tensorrt': choose one of torch, vllm, openai"):
        open_engine("no/such/model", "tensorrt")


def test_torch_engine_args_reach_the_engine():
    tok = make_tokenizer()
    engine = open_engine((make_model(tok), tok), "torch", {"max_rows": 3, "max_batch": 5}, device="cpu",
                         dtype="fp32")
    assert isinstance(engine, TorchEngine) and (engine.max_rows, engine.max_batch) == (3, 5)


def test_an_endpoint_cannot_sample_for_training():
    with pytest.raises(ValueError, match=r"engine='openai' cannot sample for training.*use one of torch, vllm"):
        engine_for_policy(make_model(make_tokenizer()), make_tokenizer(), "openai", {"base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValueError, match=r"engine='openai': GRPO samples from the policy it trains"):
        config.ZeroConfig(engine="openai").validate()


def test_endpoint_settings_are_checked_with_the_command():
    with pytest.raises(ValueError, match=r"engine=openai needs the endpoint: --base-url"):
        config.EvalConfig(engine="openai").validate()
    with pytest.raises(ValueError, match=r"add --engine openai"):
        config.EvalConfig(base_url="http://127.0.0.1:8080/v1").validate()
    with pytest.raises(ValueError, match=r"must start with http:// or https://"):
        config.SampleConfig(engine="openai", base_url="127.0.0.1:8080").validate()
    with pytest.raises(ValueError, match=r"this command runs the model here"):
        config.ServeConfig(engine="openai").validate()
    cfg = config.EvalConfig(engine="openai", base_url="http://h/v1", api_key_env="KEY", engine_args={"concurrency": 2})
    assert config.engine_choice(cfg) == ("openai", {"base_url": "http://h/v1", "api_key_env": "KEY",
                                                    "concurrency": 2})
    assert config.engine_choice(config.DistillConfig(base_url="http://h/v1"))[0] == "openai"
    assert config.engine_choice(config.EvalConfig(engine="vllm", engine_args={"enforce_eager": True})) == (
        "vllm", {"enforce_eager": True})


def test_the_torch_engine_makes_its_prompts_and_the_generate_call_takes_them():
    tok = make_tokenizer()
    engine = TorchEngine(make_model(tok), tok)
    prompt = engine.prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}], "r1")
    assert isinstance(prompt, Prompt) and prompt.thinking and prompt.prefill == "<think>\n"
    assert prompt.messages == ({"role": "user", "content": "Be brief.\n\n2+3?"},)  # R1's rules: system folded in
    assert list(prompt.token_ids) == engine.encode(prompt.text)
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=4)
    assert [[c.token_ids for c in g] for g in engine.generate([prompt], params)] == \
        [[c.token_ids for c in g] for g in engine.generate([list(prompt.token_ids)], params)]
    for no_op in (engine.sleep, engine.wake_up):
        no_op()
    engine.load_weights(iter([("x", torch.zeros(1))]))  # samples the module itself: nothing to load


def test_each_hands_back_generates_samples_a_batch_at_a_time():
    tok = make_tokenizer()
    engine = TorchEngine(make_model(tok), tok, max_rows=2)  # 8 rows at a time: 4 prompts of 2 samples
    prompts = [engine.encode(t) for t in ("a", "bc", "d", "ef", "g", "hi")]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=3)
    seen = []
    got = list(engine.each(prompts, params, on_token=lambda p, j, t: seen.append(p), stream_ids=range(10, 16)))
    assert [i for i, _ in got] == list(range(6)) and set(seen) == set(range(6))  # indices of the whole call
    whole = engine.generate(prompts, params, stream_ids=range(10, 16))
    assert [[c.token_ids for c in group] for _, group in got] == [[c.token_ids for c in group] for group in whole]
