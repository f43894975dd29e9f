"""vLLM behind the :class:`r1lab.engine.Engine` interface, colocated with the trainer on one GPU.

``pip install 'r1lab[vllm]'`` (CUDA only); nothing here imports vLLM until a :class:`VllmEngine` is built. GRPO picks
it with ``--engine vllm`` (:func:`r1lab.rollout.rollout_engine`): vLLM holds its own copy of the policy in a share of
the GPU's memory (``gpu_memory_utilization``), sleeps while the trainer updates (:meth:`VllmEngine.sleep`, level 1:
its weights wait in CPU memory, its KV cache is dropped) and is given the new weights afterwards
(:meth:`VllmEngine.load_weights`).

How it maps onto the torch engine's contract, and where it differs:

- **Prompts** go in as token ids (``{"prompt_token_ids": ...}``), one ``vllm.SamplingParams`` per prompt.
- **Seeds.** With ``params.seed`` set, prompt i samples with its own seed, a hash of (seed, its key): ``stream_ids[i]``
  when given, else i. vLLM seeds sample j of a request with that seed + j, so a prompt's samples do not depend on
  the other prompts of its batch (up to vLLM's batch-dependent float rounding: it is not batch-invariant).
- **Log-probs** come back for each sampled token (``logprobs=0``). Where the installed vLLM has ``logprobs_mode``
  (0.10 and later) the engine asks for ``processed_logprobs``: those of the temperature-scaled distribution, as the
  torch engine returns, except that vLLM applies top-k/top-p first and renormalises over the tokens kept, so with
  those filters on (GRPO's defaults leave them off) a log-prob is higher by minus the log of the kept mass. An older
  vLLM returns the raw, untempered log-probs, which are the policy's only at temperature 1 (at another, GRPO's
  truncated importance weights, ``--tis-cap``, then compare unlike quantities: use vLLM 0.10 or later, or
  ``--tis-cap 0``). The engine's ``logprobs_mode`` says which it got. Either way GRPO logs the gap between these
  and the trainer's own log-probs each step (``logprob_gap_mean`` / ``logprob_gap_max`` in metrics.jsonl), so it
  shows.
- **Text** is decoded from the tokens with the engine's tokenizer and cut at a stop string, as the torch engine
  does (:func:`r1lab.engine.transcript.cut_at_stop`), so rewards read the same text from either engine. Finish
  reasons map one to one ("stop": EOS, a stop id or a stop string; "length"; "abort").
- **on_token.** vLLM's offline ``LLM`` returns whole outputs, so ``on_token`` is called afterwards, for each token
  in order (not for the token that stopped a sample, as in the torch engine); the first False cuts that sample
  after that token with finish reason "abort". It can cut a reply short, but it cannot save the time of decoding
  the rest, and a server streaming from it gets each reply at once, not token by token.
- **Weights.** :func:`push_weights` hands them to the model inside vLLM's worker, in this process: the engine
  builds ``vllm.LLM`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless set otherwise), so no tensor is copied
  through a pipe. Sleep level 1 rather than 2, whose wake-up loses the model's buffers (rotary tables) in some
  vLLM versions; it costs one CPU copy of the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from r1lab.engine.base import Completion, OnToken, SamplingParams
from r1lab.engine.transcript import cut_at_stop

INSTALL = "pip install 'r1lab[vllm]'"
#: vLLM's finish reasons -> ours
FINISH = {"stop": "stop", "length": "length", "abort": "abort"}
#: the weights vLLM keeps while it sleeps: 1 = in CPU memory (2 would drop them and, in some versions, the buffers)
SLEEP_LEVEL = 1
#: vLLM's names for torch dtypes
VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_vllm():
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        if e.name != "vllm":  # installed, but something it needs is missing or broken
            raise ImportError(f"vLLM is installed but cannot be imported ({e}); reinstall it with {INSTALL}") from e
        raise ImportError(f"engine 'vllm' needs vLLM, which is not installed: {INSTALL} (CUDA GPUs only), or use "
                          "engine 'torch'") from None
    return vllm


class VllmEngine:
    def __init__(self, model: str, tokenizer=None, gpu_memory_utilization: float = 0.3,
                 dtype: torch.dtype | str = "auto", enable_sleep_mode: bool = True, **llm_args):
        """``model``: the HF folder or hub id whose weights vLLM starts from (:meth:`load_weights` replaces them).
        ``tokenizer``: the one prompts are encoded and replies decoded with (None: vLLM's, from ``model``).
        ``gpu_memory_utilization``: the share of the GPU's memory vLLM takes (weights and KV cache); the trainer
        has the rest. ``llm_args`` go to ``vllm.LLM`` as they are (``max_model_len``, ``enforce_eager``...)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the worker in this process: see push_weights
        vllm = import_vllm()
        engine_fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
        #: what the returned log-probs are (see the module docstring)
        self.logprobs_mode = "processed_logprobs" if "logprobs_mode" in engine_fields else "raw_logprobs"
        if "logprobs_mode" in engine_fields:
            llm_args.setdefault("logprobs_mode", self.logprobs_mode)
        self.llm = vllm.LLM(model=model, gpu_memory_utilization=gpu_memory_utilization,
                            dtype=VLLM_DTYPES.get(dtype, dtype), enable_sleep_mode=enable_sleep_mode, **llm_args)
        self._sampling_params = vllm.SamplingParams
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        #: prompt + reply tokens vLLM serves (its max_model_len)
        self.context_length = self.llm.llm_engine.model_config.max_model_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def load_weights(self, state_dict: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Sample from these weights from now on: a state dict or ``(name, tensor)`` pairs under the model's HF
        names (:func:`policy_weights` makes them from a trained model, LoRA merged). The prefix cache, computed
        with the old weights, is dropped."""
        push_weights(self.llm, state_dict.items() if isinstance(state_dict, Mapping) else state_dict)
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the GPU memory vLLM holds while the trainer updates (its weights wait in CPU memory)."""
        self.llm.sleep(level=SLEEP_LEVEL)

    def wake_up(self) -> None:
        """Take the GPU memory back (weights and KV cache), ready to sample."""
        self.llm.wake_up()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt; result[i] holds prompt i's completions. ``on_token`` and
        ``stream_ids`` as in :meth:`r1lab.engine.TorchEngine.generate`, with the differences the module docstring
        lists (``on_token`` runs after the whole batch is decoded)."""
        if not prompts:
            return []
        keys = list(range(len(prompts))) if stream_ids is None else [int(key) for key in stream_ids]
        if len(keys) != len(prompts) or min(keys) < 0:
            raise ValueError(f"stream_ids: give one key >= 0 per prompt ({len(prompts)}), got {len(keys)}")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: give at least one token")
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        outputs = self.llm.generate(requests, sampling_params=[self.vllm_params(params, key) for key in keys],
                                    use_tqdm=False)
        return [[self._completion(i, j, out, params, on_token)
                 for j, out in enumerate(sorted(request.outputs, key=lambda o: o.index))]
                for i, request in enumerate(outputs)]

    def vllm_params(self, params: SamplingParams, key: int):
        """``params`` as ``vllm.SamplingParams`` for the prompt whose stream key is ``key``."""
        return self._sampling_params(
            n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            max_tokens=params.max_new_tokens, stop=list(params.stop), stop_token_ids=list(params.stop_token_ids),
            include_stop_str_in_output=params.include_stop_str_in_output, ignore_eos=params.ignore_eos,
            seed=None if params.seed is None else prompt_seed(params.seed, key), logprobs=0)

    def _completion(self, prompt: int, sample: int, out, params: SamplingParams,
                    on_token: OnToken | None) -> Completion:
        tokens = list(out.token_ids)
        if out.logprobs is None or len(out.logprobs) != len(tokens):
            raise RuntimeError(f"vLLM returned log-probs for {len(out.logprobs or ())} of {len(tokens)} tokens")
        logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs, tokens)]
        if out.finish_reason not in FINISH:
            raise RuntimeError(f"vLLM finished a sample with {out.finish_reason!r}, which r1lab does not know "
                               f"(it knows {', '.join(FINISH)})")
        finish = FINISH[out.finish_reason]
        if on_token is not None:
            seen = len(tokens) - (finish == "stop")  # the token that stopped a sample is not shown, as in Transcript
            cut = next((k for k in range(seen) if on_token(prompt, sample, tokens[k]) is False), None)
            if cut is not None:
                tokens, logprobs, finish = tokens[:cut + 1], logprobs[:cut + 1], "abort"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(prompt_index=prompt, token_ids=tokens, logprobs=logprobs, finish_reason=finish,
                          text=cut_at_stop(text, params.stop, params.include_stop_str_in_output))


def prompt_seed(seed: int, key: int) -> int:
    """A prompt's vLLM seed from the call's seed and the prompt's stream key: 62 bits of a hash, so that vLLM's
    seed + j for sample j never reaches another prompt's seeds (whose keys differ) in practice.

    >>> prompt_seed(0, 1) == prompt_seed(0, 1) != prompt_seed(0, 2)
    True
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "little") >> 2


def push_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(HF name, tensor)`` pairs into the model inside vLLM, through the model's own ``load_weights`` (which
    fuses q/k/v and gate/up as vLLM stores them and casts to its dtype). With vLLM's engine in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), ``LLM.apply_model`` runs the function on the live model, the tensors
    passed by reference; an ``LLM`` without ``apply_model`` is reached through its driver worker, the path TRL's
    colocated mode takes on vLLM 0.8. One worker only: no tensor parallelism."""

    def load(model):
        model.load_weights(weights)

    if hasattr(llm, "apply_model"):
        llm.apply_model(load)
    else:
        load(llm.llm_engine.model_executor.driver_worker.model_runner.model)


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of a trained ``model`` under the plain HF names vLLM loads. A peft (LoRA)
    model's adapters are folded in, ``W + scale * B A`` computed aside for each adapted layer, so the trained
    weights are never touched; LoRA's own tensors are left out."""
    if not hasattr(model, "peft_config"):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapted = {name: module for name, module in base.named_modules() if hasattr(module, "get_delta_weight")}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        module = adapted.get(owner)
        if module is not None and leaf == "weight" and not module.merged:
            with torch.no_grad():
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        tensor = tensor + module.get_delta_weight(adapter)
        yield name.replace(".base_layer.", "."), tensor
