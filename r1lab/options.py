"""The command line of each command: one flag per field of its config (:mod:`r1lab.config`), an optional
``--config`` YAML recipe under the flags, and ``--help`` from the fields' metadata, :data:`COMMON_HELP` and the
registries (the names of the tasks and rewards are read from them when help is asked for).

Input errors raise ValueError; only :mod:`r1lab.cli` turns them into exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import yaml

from r1lab.config import REWARD_PARTS, LrSchedule, base_type, listed, make_config, read_recipe
from r1lab.rewards import REWARDS
from r1lab.tasks import TASKS
from r1lab.tracking import TRACKERS

#: help for options that mean the same in every command that has them (a field's own help wins: config.opt)
COMMON_HELP = {
    "model": "a hub id, a local HF folder (an r1lab checkpoint included), a .gguf file, or the embedded smollm2-135m",
    "task_args": "the task's options as YAML, e.g. '{digits: 2}'; null = its defaults",
    "out": "output folder (a file for coldstart); r1lab never overwrites what a run wrote there",
    "seed": "random seed for data order and sampling",
    "threads": "CPU threads; 0 = all cores",
    "device": "where the model runs: auto (a CUDA GPU when there is one, else the CPU) | cpu | cuda | cuda:N",
    "dtype": "compute precision: auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16; training keeps "
             "fp32 weights and optimizer state and computes in this precision",
    "parallel": "replicate (each process a whole copy) | fsdp (weights, gradients and AdamW state sharded over the "
                "processes: FSDP2)",
    "gradient_checkpointing": "recompute activations in the backward pass: less memory, one more forward pass of time",
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
    "lora_r": "0 = full fine-tuning",
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
    "lr_schedule": f"{listed(LrSchedule)} (after warmup)",
    "min_language_share": "keep reasoning with at least this share of words in --language; 0 = off",
    "base_url": "with --engine openai: the endpoint, e.g. http://127.0.0.1:8080/v1 (llama.cpp), https://api.deepseek.com",
    "api_key_env": "with --engine openai: the environment variable that holds the API key",
    "report_to": f"experiment trackers, several at once: {' | '.join(TRACKERS)} (pip install 'r1lab[tracking]'); "
                 "none = off",
    "run_name": "the run's name in the trackers; empty = the --out folder's name",
    "report_group": "the trackers' group of this run (the pipeline groups its stages under its own name)",
}


def _registry_help() -> dict[str, str]:
    """Help that lists an open registry's names, read when help is asked for (a task or reward registered by then is
    listed)."""
    rewards = " | ".join(sorted(REWARDS))
    return {"task": " | ".join(sorted(TASKS)),
            "rewards": f"name: weight; {rewards} | your registered ones; or name: {{reward_model: PATH, part: "
                       f"{'|'.join(REWARD_PARTS)}, weight, on}} | {{judge: {{base_url, model, rubric}}, ...}}"}


def option_help(cls) -> dict[str, str]:
    """``field -> help``: the field's own (its metadata, :func:`r1lab.config.opt`), else the registry's names, else
    :data:`COMMON_HELP`."""
    shared = {**COMMON_HELP, **_registry_help()}
    return {f.name: f.metadata.get("help") or shared.get(f.name, "") for f in dataclasses.fields(cls)}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose input errors (an unknown flag, a missing value) raise ValueError with what was wrong and the
    usage, so that only :mod:`r1lab.cli` turns errors into exit codes. ``--help`` still prints the help and exits 0
    through argparse's own ``SystemExit(0)``, as any command does."""

    def error(self, message: str):
        raise ValueError(f"{message}\nusage: {self.prog} [--config FILE] [--OPTION VALUE ...]; "
                         f"`{self.prog} --help` lists the options")


def parse_values(cls, argv: list[str] | None = None, prog: str = "r1lab", epilog: str | None = None) -> dict:
    """The options given for ``cls``: an optional ``--config`` YAML, then command-line flags over it (defaults are
    not filled in, so callers know what was given)."""
    parser = ArgumentParser(prog=prog, description=cls.__doc__, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (see recipes/); flags given here override it")
    defaults = cls()
    hints = typing.get_type_hints(cls)
    helps = option_help(cls)
    for f in dataclasses.fields(cls):
        is_bool = base_type(hints[f.name]) is bool
        kind = dict(dest=f.name, default=argparse.SUPPRESS, metavar=base_type(hints[f.name]).__name__.upper(),
                    nargs="?" if is_bool else None, const="true" if is_bool else None)  # a bare --greedy is true
        parser.add_argument(f"--{f.name.replace('_', '-')}", **kind,
                            help=f"{helps[f.name]} (default: {getattr(defaults, f.name)!r})".lstrip())
        if "_" in f.name:
            parser.add_argument(f"--{f.name}", **kind, help=argparse.SUPPRESS)  # --group_size works too
    args = vars(parser.parse_args(argv))
    recipe = args.pop("config", None)
    values = read_recipe(recipe, cls) if recipe else {}
    return {**values, **{name: _convert(raw, hints[name], name) for name, raw in args.items()}}


def load_config(cls, argv: list[str] | None = None, prog: str = "r1lab", epilog: str | None = None):
    """Build ``cls`` from its defaults, an optional ``--config`` YAML, then command-line flags."""
    return make_config(cls, parse_values(cls, argv, prog, epilog))


def _convert(raw, hint, name):
    """A flag's text as the field's value: as given for a str field, else read as YAML (the type is checked by
    :func:`r1lab.config.make_config`)."""
    if not isinstance(raw, str) or base_type(hint) is str:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ValueError(f"--{name.replace('_', '-')}: cannot read {raw!r}: {problem}{at}; write YAML such as "
                         "'{digits: 2}' or '[gsm8k, math500]', quoted for the shell") from None
