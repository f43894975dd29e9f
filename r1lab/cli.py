"""The ``r1lab`` command: one entry point, one subcommand per stage of the recipe.

Each command imports its stage when it runs, so ``r1lab --help`` and a settings error answer at once, without
loading torch."""

from __future__ import annotations

import os
import signal
import sys

from r1lab import config, options, tracking

USAGE = """usage: r1lab COMMAND [options]

commands:
  zero     GRPO with rule rewards from the model's own samples (R1-Zero); runs on the embedded model by default
  eval     the R1 evaluation protocol (k samples, pass@1 / pass@k / cons@k with intervals) on benchmarks;
           `r1lab eval --compare RUN_A RUN_B` tells whether B differs from A by more than the noise
  coldstart  write a cold-start SFT set (readable reasoning, then the answer) for a procedural task
  sample   rejection sampling: n samples per prompt, keep verified ones that pass R1's filters, for SFT
  distill  traces from a teacher (OpenAI-compatible endpoint or local model), verified, then SFT a student
  sft      supervised fine-tuning on chat JSONL, loss on assistant tokens only (cold start, distillation)
  serve    an OpenAI-compatible server (reasoning_content, streaming) and a chat page: r1lab serve [MODEL]
  chat     talk to a model in the terminal, reasoning dimmed: r1lab chat [MODEL]
  pipeline the whole R1 recipe (cold start, reasoning RL, rejection sampling + SFT, RL over all scenarios), resumable
  rm       train a scalar reward model (Bradley-Terry) on preference pairs, for stage 4's reward-model rewards
  export   a checkpoint or run as a GGUF file (f16 / q8_0) with an ollama Modelfile, for llama.cpp and ollama

Run `r1lab COMMAND --help` for a command's options. Set R1LAB_DEBUG=1 for tracebacks on input errors."""


INTERRUPTED = {
    "zero": "interrupted; rerun with the same --out and --resume true to continue from the last checkpoint",
    "eval": "interrupted; rerun the same command: finished batches are kept",
    "sample": "interrupted; rerun the same command: finished batches are kept",
    "pipeline": "interrupted; rerun the same command: finished stages are skipped and this one resumes",
}


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # run as the r1lab command, not called from Python
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"r1lab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback, and how to go on where there is a way
        if program:  # a second Ctrl-C while exiting ends the process at once (not when called as a function)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        print(f"\nr1lab {command}: {str(e) or INTERRUPTED.get(command, 'interrupted')}", file=sys.stderr)
        return 130
    except (OSError, KeyError, ValueError, ImportError) as e:  # input, a file, a server, a package: say what to fix
        if os.environ.get("R1LAB_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"r1lab {command}: {message}", file=sys.stderr)
        return 2
    finally:  # a command cut off: its tracker runs closed as failed now, before the trackers' own exit handlers
        tracking.finish_open(ok=False)


def zero(argv: list[str]) -> int:
    from r1lab.rl.grpo import train
    from r1lab.runs import values_for_resume

    values = options.parse_values(config.ZeroConfig, argv, prog="r1lab zero", epilog=zero_help())
    if values.get("resume"):  # continue with the run's own settings; refuse flags that change them
        values = values_for_resume(config.ZeroConfig, values)
    cfg = config.make_config(config.ZeroConfig, values)
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command again
        from r1lab.distributed import launch

        return launch(cfg.nproc, ["zero", *argv])
    summary = train(cfg)
    if not summary:  # a process other than rank 0 under torchrun: rank 0 reports
        return 0
    before, after = summary["eval_before"], summary["eval_after"]
    print(f"held-out accuracy {_format(before['accuracy'], '.1%')} -> {_format(after['accuracy'], '.1%')}; mean reward "
          f"{_format(summary['reward_first_steps'], '.3f')} -> {_format(summary['reward_last_steps'], '.3f')}; "
          f"report: {cfg.out}/report.md")
    return 0


def zero_help() -> str:
    """The algorithm family ``r1lab zero --help`` lists, one line each, read from the registries that implement it:
    loss types, loss aggregations, advantage estimators, rewards (with the options ``--reward-args`` gives each)."""
    from r1lab.rewards import REWARDS
    from r1lab.rewards.build import options_of
    from r1lab.rewards.registry import HELP
    from r1lab.rl.advantages import ADVANTAGE_HELP
    from r1lab.rl.losses import LOSS_AGGREGATION_HELP, LOSS_TYPE_HELP

    def section(title: str, lines: dict[str, str]) -> list[str]:
        return [title, *(f"  {name:<29} {text}" for name, text in lines.items()), ""]

    def reward_line(name: str) -> str:  # its help, and the options it takes
        takes = options_of(name)
        return HELP[name] + (f" [{', '.join(f'{k}={v!r}' for k, v in takes.items())}]" if takes else "")

    return "\n".join([*section("loss types (--loss-type):", LOSS_TYPE_HELP),
                      *section("loss aggregations (--loss-aggregation):", LOSS_AGGREGATION_HELP),
                      *section("advantage estimators (--advantage):", ADVANTAGE_HELP),
                      *section("rewards (--rewards NAME: WEIGHT; [options]: --reward-args '{NAME: {OPTION: V}}'):",
                               {name: reward_line(name) for name in sorted(REWARDS)})]).rstrip()


COMPARE_HELP = """compare two runs:
  r1lab eval --compare RUN_A RUN_B   paired difference of pass@1 per benchmark (B - A) with its 95% interval,
                                     from the samples two finished eval runs wrote: noise or not?"""


def _format(x, spec: str) -> str:
    return "n/a" if x is None or x != x else format(x, spec)  # None or NaN: not measured


def evaluate(argv: list[str]) -> int:
    if "--compare" in argv:
        from r1lab.evaluate.compare import compare_runs, format_comparison

        runs = argv[argv.index("--compare") + 1:]
        if len(runs) != 2 or len(argv) != 3:
            raise ValueError("usage: r1lab eval --compare RUN_A RUN_B (two run folders, nothing else)")
        print(format_comparison(compare_runs(*runs), *runs))
        return 0
    from r1lab.evaluate.runner import run_eval

    cfg = options.load_config(config.EvalConfig, argv, prog="r1lab eval", epilog=COMPARE_HELP)
    summary = run_eval(cfg)
    for name, result in summary["benchmarks"].items():
        pass1 = result["metrics"]["pass@1"]
        print(f"{name}: pass@1 {pass1['value']:.1%} [{pass1['ci_low']:.1%}, {pass1['ci_high']:.1%}] "
              f"(n={result['n_problems']}, k={result['k']})")
    print(f"report: {cfg.out}/report.md (also report.html); samples: {cfg.out}/<benchmark>/samples.jsonl")
    return 0


def coldstart(argv: list[str]) -> int:
    from r1lab.sft.coldstart import write_coldstart

    cfg = options.load_config(config.ColdstartConfig, argv, prog="r1lab coldstart")
    result = write_coldstart(cfg)
    if not result["written"]:
        print(f"r1lab coldstart: no sample passed ({result['rejected']} failed verification or the filters), so "
              f"nothing was written; try more --examples, a larger --n or --max-new-tokens, or --source traces",
              file=sys.stderr)
        return 1
    print(f"wrote {result['written']} cold-start samples to {result['path']} ({result['rejected']} failed "
          f"verification); next: r1lab sft --data {result['path']}")
    return 0


def sample(argv: list[str]) -> int:
    from r1lab.sft.sample import run_sample

    cfg = options.load_config(config.SampleConfig, argv, prog="r1lab sample")
    s = run_sample(cfg)
    print(f"kept {s['kept_reasoning']} reasoning samples ({s['correct']} of {s['samples']} were correct) and "
          f"{s['non_reasoning']} non-reasoning ones: {s['path']}; report: {cfg.out}/report.md")
    return 0


def distill(argv: list[str]) -> int:
    from r1lab.sft.distill import run_distill

    cfg = options.load_config(config.DistillConfig, argv, prog="r1lab distill")
    s = run_distill(cfg)
    print(f"{s['traces']} traces ({s['retries']} retries, {s['prompt_tokens']} + {s['completion_tokens']} tokens), "
          f"{s['kept']} kept: {s['path']}" + (f"; student: {s['student']['checkpoint']}" if "student" in s else ""))
    if not s["kept"]:
        print(f"r1lab distill: no trace was kept ({', '.join(f'{k}: {v}' for k, v in s['dropped'].items())}); "
              "see the report, and check that the teacher reasons in a think block", file=sys.stderr)
    return 0


def sft(argv: list[str]) -> int:
    from r1lab.sft.trainer import train_sft

    cfg = options.load_config(config.SftConfig, argv, prog="r1lab sft")
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from r1lab.distributed import launch

        return launch(cfg.nproc, ["sft", *argv])
    summary = train_sft(cfg)
    if not summary:  # a process other than rank 0 under torchrun: rank 0 reports
        return 0
    before, after = summary["eval_loss_before"], summary["eval_loss_after"]
    held_out = f"held-out loss {before:.3f} -> {after:.3f}" if before is not None else "no held-out set"
    print(f"{held_out}; checkpoint {summary['checkpoint']}; report: {cfg.out}/report.md")
    return 0


def _model_first(argv: list[str]) -> list[str]:
    """``r1lab serve MODEL --port 8000``: a leading bare word is the model."""
    return ["--model", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv


def serve(argv: list[str]) -> int:
    cfg = options.load_config(config.ServeConfig, _model_first(argv), prog="r1lab serve")
    import uvicorn

    from r1lab.engine import open_engine
    from r1lab.serve.app import create_app

    engine = open_engine(cfg.model, cfg.engine, cfg.engine_args, cfg.threads, device=cfg.device, dtype=cfg.dtype)
    app = create_app(engine, cfg.model, cfg.template,
                     api_key=cfg.api_key or os.environ.get("R1LAB_API_KEY"), max_pending=cfg.max_pending,
                     max_batch_rows=cfg.max_batch_rows, max_n=cfg.max_n, default_max_tokens=cfg.max_tokens)
    print(f"r1lab serve: {cfg.model} at http://{cfg.host}:{cfg.port}/ (chat page) and "
          f"http://{cfg.host}:{cfg.port}/v1 (OpenAI API)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0


def chat(argv: list[str]) -> int:
    from r1lab.engine import open_engine
    from r1lab.serve.terminal import chat_loop

    cfg = options.load_config(config.ChatConfig, _model_first(argv), prog="r1lab chat")
    chat_loop(open_engine(cfg.model, cfg.engine, cfg.engine_args, cfg.threads, device=cfg.device, dtype=cfg.dtype),
              cfg)
    return 0


# --- rm command: owned by the reward-model work ---
def rm_command(argv: list[str]) -> int:
    from r1lab.rm.train import train_rm

    cfg = options.load_config(config.RmConfig, argv, prog="r1lab rm")
    s = train_rm(cfg)
    h = s["held_out"]
    print(f"held-out pairwise accuracy {h['accuracy']:.1%} [{h['ci_low']:.1%}, {h['ci_high']:.1%}] (n={h['pairs']} "
          f"pairs) in {s['seconds']:.0f} s; reward model {s['checkpoint']}; report: {cfg.out}/report.md")
    return 0
# --- end rm command ---


# --- export command: owned by the export work ---
def export_command(argv: list[str]) -> int:
    from r1lab.console import log
    from r1lab.export import export_model
    from r1lab.models import use_threads

    cfg = options.load_config(config.ExportConfig, _model_first(argv), prog="r1lab export")
    use_threads(cfg.threads)
    s = export_model(cfg.model, cfg.gguf, cfg.quant, cfg.template, cfg.modelfile, force=cfg.force, check=cfg.check,
                     max_logit_diff=cfg.max_logit_diff, log=log)
    print(f"wrote {s['gguf']} ({s['bytes'] / 2**20:.1f} MiB, {s['quant']}, template {s['template']}) from "
          f"{s['checkpoint']} in {s['seconds']:.1f}s" + (f"; ollama: {s['modelfile']}" if "modelfile" in s else ""))
    if "check" in s:
        c = s["check"]
        print(f"check (transformers reads the GGUF back): max |logit difference| {c['max_abs_logit_diff']:.4f} (bound "
              f"{c['bound']:.3g}; logits' std {c['logit_std']:.2f}), top-1 "
              f"agreement {c['top1_agreement']:.1%} over {c['positions']} positions of {c['prompts']} prompts; token "
              f"ids identical on {c['strings']} strings; chat template renders as r1lab does ({c['seconds']:.0f}s)")
    if "modelfile" in s:
        print(f"next: cd {os.path.dirname(s['gguf']) or '.'} && ollama create NAME -f "
              f"{os.path.basename(s['modelfile'])}; or llama-cli -m {s['gguf']}")
    return 0
# --- end export command ---


# --- pipeline command ---
def pipeline_command(argv: list[str]) -> int:
    from r1lab.pipeline import run_pipeline

    cfg = options.load_config(config.PipelineConfig, argv, prog="r1lab pipeline")
    summary = run_pipeline(cfg)
    print(f"final model: {summary['final_checkpoint']}; report: {cfg.out}/report.md")
    return 0
# --- end pipeline command ---


COMMANDS = {"zero": zero, "eval": evaluate, "coldstart": coldstart, "sample": sample, "distill": distill, "sft": sft,
            "serve": serve, "chat": chat, "pipeline": pipeline_command, "rm": rm_command, "export": export_command}


if __name__ == "__main__":
    sys.exit(main())
