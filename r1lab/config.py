"""One flat dataclass per command, with defaults that run; YAML recipes; command-line overrides.

Precedence: dataclass defaults < YAML recipe (``--config FILE``) < command-line flags. Every field is a
flag (``--group-size 8`` or ``--group_size 8``); dict fields take YAML (``--task-args '{digits: 2}'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from r1lab.files import CHECKPOINT_MARKER, write_atomic


#: what ``task_args: None`` means for each task. For arithmetic: 1-digit +, -, *, all 300 such problems, 100 held
#: out. SmolLM2-135M gets ~31% right at T=0.7 and about half the groups have mixed rewards, so there is signal.
DEFAULT_TASK_ARGS = {"arithmetic": {"digits": 1, "operands": 2, "operators": "+-*", "n_train": 200, "n_test": 100}}


def task_args_for(task: str, task_args: dict | None) -> dict:
    """The options to build ``task`` with: the given ones, else its defaults here (none for most tasks)."""
    return dict(task_args) if task_args is not None else dict(DEFAULT_TASK_ARGS.get(task, {}))


@dataclass
class ZeroConfig:
    """``r1lab zero``: GRPO from a model's own samples with rule rewards (R1-Zero)."""

    # what to train
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    task_args: dict | None = None  # the task's options as YAML, e.g. '{digits: 2}'; null = its defaults (arithmetic: 1-digit +-*)
    template: str = "native-zero"
    prefill: str | None = None
    rewards: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})  # name: weight; accuracy | format | tag_count | language_consistency | overlong | code | your registered ones
    language: str = "en"  # target language for the language_consistency reward
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    # sampling
    steps: int = 40
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    stop: list = field(default_factory=lambda: ["</answer>"])
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more
    max_sampling_rounds: int = 4  # with dynamic_sampling: at most this many draws of prompts per step
    # optimisation
    advantage: str = "grpo"  # grpo | drgrpo | batch_std
    loss_aggregation: str = "token"  # token | sequence
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.0  # KL weight; 0 skips the reference model entirely
    updates_per_batch: int = 1  # optimizer steps on each batch of samples (mu; > 1 reuses them, clipped)
    lr: float = 2e-5
    warmup_steps: int = 2
    lr_schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    groups_per_micro_batch: int = 2  # groups per forward/backward pass (memory vs speed)
    # evaluation, logging, checkpoints
    eval_examples: int = 100  # held-out problems evaluated before and after training
    eval_every: int = 0  # 0 = only before and after
    eval_samples: int = 1  # samples per held-out problem; 1 = one greedy answer
    eval_temperature: float = 0.6  # with eval_samples > 1 (top-p 0.95, as r1lab eval)
    eval_max_new_tokens: int = 64  # the length limit of a held-out answer
    save_every: int = 20  # steps between checkpoints (the last step is always one)
    keep_checkpoints: int = 2  # older checkpoints are deleted
    out: str = "runs/zero"
    resume: bool = False  # continue the run in --out from its last checkpoint, with its saved settings
    seed: int = 0
    threads: int = 0  # 0 = all cores


@dataclass
class EvalConfig:
    """``r1lab eval``: the R1 evaluation protocol (k samples at T=0.6, top-p 0.95; pass@1, pass@k, cons@k)."""

    model: str = "smollm2-135m"  # hub id, local folder, .gguf file, or the embedded smollm2-135m
    benchmarks: list = field(default_factory=lambda: ["gsm8k"])  # gsm8k | math500 | aime24 | gpqa-diamond | task:NAME (an r1lab task's test split)
    data: dict = field(default_factory=dict)  # benchmark -> local JSONL/Parquet path, e.g. {aime24: aime.jsonl}
    task_args: dict = field(default_factory=dict)  # for task:NAME benchmarks, e.g. {digits: 2}
    limit: int = 0  # the first N problems of each benchmark; 0 = all
    k: int = 0  # samples per problem; 0 = by the set's size (4 to 64, as the paper)
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    greedy: bool = False  # one greedy answer per problem instead of k samples
    max_new_tokens: int = 32768  # the paper's budget; cut to the model's context window
    template: str = "native"
    prefill: str | None = None
    interval: str = "bootstrap"  # bootstrap | normal
    problems_per_batch: int = 0  # problems generated together (0 = 64 // k); also the unit a resume redoes
    seed: int = 0
    out: str = "runs/eval"
    threads: int = 0  # 0 = all cores


@dataclass
class SftConfig:
    """``r1lab sft``: supervised fine-tuning on chat JSONL, loss on the assistant reply only (cold start, R1 stage 3,
    distillation)."""

    model: str = "smollm2-135m"
    data: str = ""  # JSONL: {messages} | {prompt, response} | {prompt, reasoning, answer}
    template: str = "native-zero"  # render prompts as the RL stage that follows will (r1 | native | ...)
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    epochs: int = 2
    lr: float = 5e-5
    warmup_steps: int = 5
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    tokens_per_step: int = 4096  # response + prompt tokens per optimizer step
    row_tokens: int = 1024  # tokens per forward pass (a shared prompt prefix counted once); peak memory follows it
    max_length: int = 2048  # longer samples are skipped (and counted)
    max_steps: int = 0  # stop after this many optimizer steps (LR schedule sized to them); 0 = all the epochs
    limit: int = 0  # use only the first N samples of the data; 0 = all
    eval_size: float = 0.05  # held-out share (< 1) or count for the eval loss; 0 = no held-out set
    eval_every: int = 0  # steps between eval losses; 0 = once per epoch (and always after the last step)
    out: str = "runs/sft"
    seed: int = 0
    threads: int = 0


@dataclass
class ColdstartConfig:
    """``r1lab coldstart``: write a cold-start SFT set (reasoning in the think block, then the answer) for a task."""

    source: str = "traces"  # traces (the task writes them) | model (few-shot sampling) | jsonl (your file)
    task: str = "arithmetic"
    task_args: dict | None = None  # the task's options as YAML, e.g. '{digits: 2}'; null = its defaults
    examples: int = 200  # how many training examples get a trace
    model: str = "smollm2-135m"  # source=model: the model prompted with long chain-of-thought examples
    shots: int = 3  # source=model: worked examples in the prompt
    n: int = 4  # source=model: samples per prompt (the first verified, readable one is kept)
    max_new_tokens: int = 512
    temperature: float = 0.7
    data: str | None = None  # source=jsonl: {messages} | {prompt, response} | {prompt, reasoning, answer}
    max_paragraph_chars: int = 1500  # readability filters for source=model and source=jsonl
    min_language_share: float = 0.95
    language: str = "en"
    out: str = "runs/coldstart.jsonl"
    seed: int = 0


@dataclass
class SampleConfig:
    """``r1lab sample``: rejection sampling (R1 stage 3): n samples per prompt, keep verified, filtered ones."""

    model: str = "smollm2-135m"
    task: str = "arithmetic"
    task_args: dict | None = None  # the task's options as YAML, e.g. '{digits: 2}'; null = its defaults
    limit: int = 0  # the first N training prompts; 0 = all
    n: int = 4  # samples per prompt
    keep: int = 1  # at most this many correct samples per prompt
    template: str = "native-zero"
    prefill: str | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    stop: list = field(default_factory=lambda: ["</answer>"])
    # filters (each can be switched off)
    language: str = "en"
    min_language_share: float = 0.95  # keep reasoning with at least this share of words in --language; 0 = off
    max_paragraph_chars: int = 1500  # drop reasoning with a longer paragraph (characters); 0 = off
    drop_code_blocks: bool = True  # drop reasoning that holds a fenced code block
    drop_truncated: bool = True  # drop replies cut at max_new_tokens
    near_duplicate: float = 0.9  # Jaccard of word 5-grams at or above this is a duplicate; 1.0 = exact only
    decontaminate: list = field(default_factory=list)  # benchmark names, e.g. [gsm8k, math500]; 8-gram overlap
    # non-reasoning data, answered with an empty think block
    non_reasoning: str | None = None  # JSONL of {prompt, response}
    non_reasoning_share: float = 0.0  # share of the output that is non-reasoning (R1: 200k of 800k = 0.25)
    problems_per_batch: int = 0  # 0 = 64 // n; also the unit a resumed run redoes
    out: str = "runs/sample"
    seed: int = 0
    threads: int = 0


@dataclass
class DistillConfig:
    """``r1lab distill``: traces from a teacher (an OpenAI-compatible endpoint or a local model), verified and
    filtered like ``r1lab sample``, then optionally SFT of a student on them."""

    teacher: str = "smollm2-135m"  # a local model, or the model name at --base-url
    base_url: str | None = None  # e.g. https://api.deepseek.com, http://127.0.0.1:8000/v1 (r1lab serve)
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable that holds the key for base_url
    task: str = "arithmetic"
    task_args: dict | None = None  # the task's options as YAML, e.g. '{digits: 2}'; null = its defaults
    limit: int = 0  # the first N training prompts; 0 = all
    template: str = "native"  # for a local teacher
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 2048
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 5  # per prompt, on 429, 5xx and connection errors, with exponential backoff
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    keep_wrong: bool = False  # keep traces the task's verifier rejects
    student: str | None = None  # if set, SFT this model on the kept traces afterwards
    out: str = "runs/distill"
    seed: int = 0
    threads: int = 0


@dataclass
class ServeConfig:
    """``r1lab serve MODEL``: an OpenAI-compatible chat server with reasoning_content, and a chat page at /."""

    model: str = "smollm2-135m"  # hub id, local folder, .gguf file, a run's checkpoint, or the embedded model
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 for every interface)
    port: int = 8000  # port to listen on
    template: str = "native"
    api_key: str | None = None  # require "Authorization: Bearer KEY" on /v1/* (or set R1LAB_API_KEY)
    max_pending: int = 16  # requests waiting or running; one more gets 429 with Retry-After
    max_batch_rows: int = 32  # samples generated together
    max_n: int = 8  # the largest n (choices per request) accepted
    max_tokens: int = 2048  # default reply budget when a request gives none
    threads: int = 0  # 0 = all cores


@dataclass
class ChatConfig:
    """``r1lab chat MODEL``: talk to a model in the terminal; its reasoning is shown dimmed."""

    model: str = "smollm2-135m"
    template: str = "native"
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 2048
    system: str | None = None  # folded into the first user turn, as R1 advises
    threads: int = 0


#: help for options that mean the same in every command (an option's own ``# comment`` above wins)
COMMON_HELP = {
    "model": "a hub id, a local HF folder (an r1lab checkpoint included), a .gguf file, or the embedded smollm2-135m",
    "task": "arithmetic | countdown | dataset | gsm8k | code_functions | code_dataset",
    "out": "output folder (a file for coldstart); r1lab never overwrites what a run wrote there",
    "seed": "random seed for data order and sampling",
    "threads": "CPU threads; 0 = all cores",
    "steps": "optimizer steps (each samples prompts_per_step x group_size completions)",
    "prompts_per_step": "prompts per step",
    "group_size": "completions per prompt (G); advantages compare them",
    "max_new_tokens": "the length limit of a completion, in tokens",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling: keep the likeliest tokens up to this probability mass (1 = off)",
    "top_k": "keep only the k likeliest tokens; 0 = off",
    "stop": "strings that end a completion (kept in it)",
    "lr": "peak learning rate",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "lora_alpha": "LoRA scaling (with lora_r > 0)",
    "epochs": "passes over the data",
    "clip_low": "PPO clip range below 1 (epsilon)",
    "clip_high": "PPO clip range above 1 (DAPO's clip-higher when > clip_low)",
    "max_tokens": "the length limit of a reply, in tokens",
    "template": "how prompts are rendered: r1zero | r1 (reply starts inside <think>) | native (the model's chat "
                "template) | native-zero (the R1-Zero instruction inside it); default: the one a checkpoint was "
                "trained with",
    "prefill": "text the reply is forced to start with; null = the template's own",
    "language": "target language of the reasoning (en, zh, ...)",
    "lr_schedule": "cosine | linear | constant (after warmup)",
    "min_language_share": "keep reasoning with at least this share of words in --language; 0 = off",
}
#: what a resumed run may change; every other setting must be the one the run was started with
RESUME_MAY_CHANGE = ("resume", "threads", "out")  # out: the same folder, named another way (or moved)


def parse_values(cls, argv: list[str] | None = None, prog: str = "r1lab", epilog: str | None = None) -> dict:
    """The options given for ``cls``: an optional ``--config`` YAML, then command-line flags over it (defaults are
    not filled in, so callers know what was given)."""
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see recipes/); flags given here override it")
    defaults = cls()
    hints = typing.get_type_hints(cls)
    helps = option_help(cls)
    for f in dataclasses.fields(cls):
        is_bool = _base_type(hints[f.name]) is bool
        kind = dict(dest=f.name, default=argparse.SUPPRESS, metavar=_metavar(hints[f.name]),
                    nargs="?" if is_bool else None, const="true" if is_bool else None)  # a bare --greedy is true
        parser.add_argument(f"--{f.name.replace('_', '-')}", **kind,
                            help=f"{helps[f.name]} (default: {getattr(defaults, f.name)!r})".lstrip())
        if "_" in f.name:
            parser.add_argument(f"--{f.name}", **kind, help=argparse.SUPPRESS)  # --group_size works too
    args = vars(parser.parse_args(argv))
    values = {}
    if args.get("config"):
        values.update(read_recipe(args.pop("config"), cls))
    args.pop("config", None)
    for name, raw in args.items():
        values[name] = _convert(raw, hints[name], name)
    return values


def load_config(cls, argv: list[str] | None = None, prog: str = "r1lab", epilog: str | None = None):
    """Build ``cls`` from its defaults, an optional ``--config`` YAML, then command-line flags."""
    return make_config(cls, parse_values(cls, argv, prog, epilog))


def option_help(cls) -> dict[str, str]:
    """``field -> help``: the field's ``# comment`` in this file, else :data:`COMMON_HELP`."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
        if match:
            comments[match[1]] = match[2].strip()
    return {f.name: comments.get(f.name) or COMMON_HELP.get(f.name, "") for f in dataclasses.fields(cls)}


def values_for_resume(cls, values: dict, out_default: str | None = None) -> dict:
    """For ``--resume``: the run's saved settings with the given ones over them. A given setting that differs
    from the saved one (other than :data:`RESUME_MAY_CHANGE`) is refused, naming each."""
    run = Path(values.get("out", out_default or cls().out))
    check_run_folder(run, cls)
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        if run.is_dir() and any(run.iterdir()):
            raise ValueError(f"--resume: {run} has no config.yaml, so the run's settings are unknown; restore it "
                             "from a backup, or start a new run in another --out")
        raise ValueError(f"--resume: there is no run in {run} to resume; check --out, or drop --resume to start one")
    check_same_config(make_config(cls, dict(values)), saved_path, ignore=RESUME_MAY_CHANGE, only=values,
                      now_word="given now")
    return {**_saved_settings(cls, saved_path), **values}


def check_same_config(cfg, path: Path, ignore: tuple = (), only=None, now_word: str = "now") -> None:
    """Refuse to continue a run saved in ``path`` with settings other than its own (``ignore`` may differ;
    ``only``, if given, names the settings to compare)."""
    saved = _saved_settings(type(cfg), path)
    names = [f.name for f in dataclasses.fields(cfg) if only is None or f.name in only]
    changed = [name for name in names if name not in ignore
               and _normal(getattr(cfg, name)) != saved.get(name, _normal(getattr(type(cfg)(), name)))]
    if changed:
        raise ValueError(_differences(path.parent, changed, saved, cfg, now_word))


def _saved_settings(cls, path: Path) -> dict:
    saved = read_saved_config(path)
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in saved.items() if k in known}


def read_saved_config(path: Path) -> dict:
    """A run's ``config.yaml``; one clear error if it is not a YAML mapping of settings."""
    try:
        saved = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path} cannot be read ({getattr(e, 'problem', None) or e}); restore it, or choose "
                         "another --out") from None
    if not isinstance(saved, dict) or not saved:
        raise ValueError(f"{path} does not hold a run's settings (a YAML mapping); restore it, or choose another "
                         "--out")
    return saved


def command_of(cls) -> str:
    """``ZeroConfig`` -> ``zero``: the command a config class belongs to.

    >>> command_of(ZeroConfig), command_of(SftConfig)
    ('zero', 'sft')
    """
    return cls.__name__.removesuffix("Config").lower()


def check_run_folder(out: str | Path, cls, resume: bool = False) -> None:
    """Refuse an ``--out`` that is not a folder, or that holds another command's run (each command's
    ``config.yaml`` says which command wrote it), so no command writes over what another wrote."""
    out = Path(out)
    if out.exists() and not out.is_dir() or out.is_symlink() and not out.exists():
        raise ValueError(f"--out {out} is a file (or a broken link), not a folder; choose a folder")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--out {out}: a part of that path is a file; choose a folder")
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    owner = _owner(saved)
    if owner != command_of(cls):
        raise ValueError(f"{out} holds an `r1lab {owner}` run, not an `r1lab {command_of(cls)}` one; choose "
                         "another --out (r1lab never writes into another command's run)")


def _owner(path: Path) -> str:
    first = Path(path).read_text(errors="replace").split("\n", 1)[0]
    if first.startswith("# r1lab "):
        return first.split()[2]
    keys = set(read_saved_config(path))  # written before the header existed: the class whose fields match
    classes = (ZeroConfig, EvalConfig, SftConfig, ColdstartConfig, SampleConfig, DistillConfig)
    best = max(classes, key=lambda c: len(keys & {f.name for f in dataclasses.fields(c)}) / len(keys | {
        f.name for f in dataclasses.fields(c)}))
    return command_of(best)


def _normal(value):
    return yaml.safe_load(yaml.safe_dump(value))


def _differences(run: Path, changed: list[str], saved: dict, cfg, now_word: str) -> str:
    diff = "; ".join(f"{name}: {saved.get(name)!r} there, {getattr(cfg, name)!r} {now_word}" for name in changed)
    return (f"{run} holds a run started with other settings ({diff}). To continue it, drop those flags (the run's "
            f"own settings are read from {run / 'config.yaml'}); for a new run with these settings, choose another "
            "--out")


def recorded_template(model: str) -> str | None:
    """The template a checkpoint written by r1lab was trained with (None for other models)."""
    marker = Path(model).expanduser() / CHECKPOINT_MARKER
    try:
        return json.loads(marker.read_text()).get("template") if marker.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def read_recipe(path: str | Path, cls) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"r1lab: recipe {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"r1lab: recipe {path} must be a YAML mapping of option: value")
    return data


def make_config(cls, values: dict):
    """Check names and types, then build the dataclass; errors say which option and what to write. A
    ``template`` not given is the one the ``model`` checkpoint was trained with, if r1lab recorded it."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    source = "teacher" if "teacher" in known else "model"
    if "template" in known and "template" not in values:
        recorded = recorded_template(str(values.get(source, getattr(cls(), source, ""))))
        if recorded:
            values = {**values, "template": recorded}
    for name in values:
        if name not in known:
            close = [k for k in known if k.split("_")[0] == name.replace("-", "_").split("_")[0]]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise SystemExit(f"r1lab: unknown option {name!r}{hint}; see --help for the options")
        values[name] = _check_type(values[name], hints[name], name)
    return cls(**values)


def save_config(config, path: Path) -> None:
    """The run's settings, headed by the command that wrote them (see :func:`check_run_folder`)."""
    write_atomic(path, f"# r1lab {command_of(type(config))}\n"
                       + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def _convert(raw, hint, name):
    if not isinstance(raw, str):
        return raw
    base = _base_type(hint)
    if base is str:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ValueError(f"--{name.replace('_', '-')}: cannot read {raw!r}: {problem}{at}; write YAML such as "
                         "'{digits: 2}' or '[gsm8k, math500]', quoted for the shell") from None


def _check_type(value, hint, name):
    base = _base_type(hint)
    optional = _is_optional(hint)
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if base is list and isinstance(value, str):  # --benchmarks gsm8k: one name is a list of one
        return [value]
    if base is bool and not isinstance(value, bool):
        raise SystemExit(f"r1lab: option {name} must be true or false, got {value!r}")
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise SystemExit(f"r1lab: option {name} must be {base.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _base_type(args[0])
    return typing.get_origin(hint) or hint


def _is_optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def _metavar(hint) -> str:
    return _base_type(hint).__name__.upper()


