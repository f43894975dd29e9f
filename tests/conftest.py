"""Shared fixtures: a tiny random Llama and a character-level tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import string
import sys
import warnings

import pytest
import torch


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    return tok


def make_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def pytest_configure(config):
    """Ctrl-C must be Ctrl-C in the tests that press it, however pytest was started.

    A shell without job control starts a background job (``cmd &``, ``nohup``) with SIGINT ignored, and that
    ignoring is inherited through exec: the tests that send SIGINT to this process or to a child would then see
    nothing happen. Installing Python's handler here also gives every child started from here SIGINT's default
    again (handlers, unlike ignoring, are reset by exec).

    It also starts noting deprecation warnings met below an r1lab call (:func:`_recording`).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not getattr(warnings._showwarnmsg, "recording", False):
        warnings._showwarnmsg = _recording(warnings._showwarnmsg)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA GPU; where torch sees none they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("gpu"):  # not `in item.keywords`, which also holds folder names
            item.add_marker(skip)


#: what a dependency says before it drops an API; pyproject.toml's filterwarnings makes any of them raised from an
#: r1lab module an error, and :func:`pytest_runtest_teardown` fails a test that saw one anywhere below an r1lab call
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: deprecations a dependency raises inside itself whatever r1lab asks of it (the reason for each): no call of ours
#: can avoid them, and they are the dependency's to fix
RAISED_INSIDE_DEPENDENCIES: dict[str, str] = {
    r"``noload`` loader strategy is deprecated": "MLflow 3.18 maps its SQLAlchemy store with a loader SQLAlchemy 2.1 "
                                                "deprecates (mlflow/store/tracking/sqlalchemy_store.py) when it opens "
                                                "any database store; no call of r1lab's can avoid it",
    r"`torch\.distributed\.reduce_op` is deprecated": "vLLM 0.32 (vllm/triton_utils/dispatcher.py) reads it while "
                                                     "vllm.LLM starts, whatever r1lab asks of it",
    r"`torch\.jit\.script_method` is deprecated": "torch 2.13 warns when a module vllm.LLM imports as it starts "
                                                  "touches torch.jit.script_method; not a call of r1lab's",
}


_SEEN: list[str] = []  # this test's deprecations below an r1lab call (setup, call and teardown)


def _recording(show):
    """``warnings._showwarnmsg`` (what every warning that gets through the filters is shown by, also inside
    ``catch_warnings(record=True)``, ``pytest.warns`` and other threads) that first notes deprecations met below an
    r1lab call, wherever the warning points: a dependency often points it at its own caller, such as torch's module
    call, so the filter by module alone would miss it."""
    def show_and_note(msg):
        if issubclass(msg.category, DEPRECATIONS):
            caller = r1lab_caller(sys._getframe(1))
            known = any(re.search(pattern, str(msg.message)) for pattern in RAISED_INSIDE_DEPENDENCIES)
            if caller and not known:
                _SEEN.append(f"{msg.category.__name__}: {str(msg.message)[:300]} (at {msg.filename}:{msg.lineno}; "
                             f"called from {caller})")
        return show(msg)

    show_and_note.recording = True
    return show_and_note


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _SEEN.clear()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Fail a test during which (setup, call or teardown) a dependency warned that an API is deprecated while
    r1lab code was on the stack."""
    result = yield
    seen = list(dict.fromkeys(_SEEN))
    _SEEN.clear()
    if seen:
        pytest.fail("a deprecated API was used on r1lab's path:\n  " + "\n  ".join(seen), pytrace=False)
    return result


def r1lab_caller(frame) -> str | None:
    """``file:line`` of the innermost r1lab frame on the stack from ``frame`` up, or None."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "r1lab" or module.startswith("r1lab."):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny(tokenizer):
    return make_model(tokenizer), tokenizer


def make_vllm_model(tokenizer, context: int = 256):
    """A random Llama vLLM's CPU attention takes (head size 64), with peaked, untied output weights and a likely
    EOS, so that greedy replies end both by EOS and by length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6)
        model.lm_head.weight[tokenizer.eos_token_id] *= 2
    return model


#: vLLM's options for the tiny models in tests: a small KV cache (they need little, and vLLM starts faster)
VLLM_TEST_ARGS = {"kv_cache_memory_bytes": 64 << 20}


def vllm_checkpoint(folder, context: int = 8192) -> str:
    """:func:`make_vllm_model` with the test tokenizer saved in ``folder``: its path."""
    from r1lab.models import save_checkpoint

    tok = make_tokenizer()
    return str(save_checkpoint(make_vllm_model(tok, context=context), tok, folder))


def tiny_sft_run(folder) -> tuple[str, str]:
    """A tiny saved model and 40 "What is i+1?" SFT rows in ``folder``: ``(model path, data path)``."""
    import json

    from r1lab.models import save_checkpoint

    tok = make_tokenizer()
    model_path = save_checkpoint(make_model(tok), tok, folder / "tiny")
    data = folder / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "response": f"<answer>{i + 1}</answer>"}) + "\n"
                            for i in range(40)))
    return str(model_path), str(data)


def digit_reward_env(folder) -> dict:
    """The environment for r1lab subprocesses (one thread each) in which the reward ``test_digit_share`` (the share of
    digits in a completion: a random tiny model gets signal from it) is registered, through a ``sitecustomize.py``
    in ``folder`` that every process started with it imports (torchrun's ranks too)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "from r1lab.rewards import register\n"
        "register('test_digit_share')(lambda completion, **_: sum(c.isdigit() for c in completion) / "
        "max(1, len(completion)))\n")
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@contextlib.contextmanager
def ctrl_c_in_step(step, monkeypatch):
    """Within the block, the user presses Ctrl-C during the update of ``step`` (as a KeyboardInterrupt there)."""
    import r1lab.rl.grpo as grpo

    real_update, calls = grpo.update_policy, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(grpo, "update_policy", interrupted)
    yield
    monkeypatch.setattr(grpo, "update_policy", real_update)


def rejection_keeps_something(monkeypatch) -> None:
    """A random model never closes a think block, so rejection sampling keeps nothing and a pipeline stops at stage
    3 (as it should). From here on the real sampler runs, then a few rows stand in for what a trained model keeps."""
    from pathlib import Path

    import r1lab.pipeline as pipeline

    real = pipeline.run_sample

    def run_sample(cfg, progress=True):
        summary = real(cfg, progress)
        if not summary["kept_reasoning"]:
            rows = [{"prompt": f"What is {i} + 1?", "response": f"<think>\n{i} + 1 = {i + 1}\n</think>\n"
                                                                 f"<answer>{i + 1}</answer>"} for i in range(6)]
            (Path(cfg.out) / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            summary["kept_reasoning"] = len(rows)
        return summary

    monkeypatch.setattr(pipeline, "run_sample", run_sample)
