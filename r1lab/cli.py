"""The ``r1lab`` command: one entry point, one subcommand per stage of the recipe."""

from __future__ import annotations

import os
import sys

USAGE = """usage: r1lab COMMAND [options]

commands:
  zero     GRPO with rule rewards from the model's own samples (R1-Zero); runs on the embedded model by default
  eval     the R1 evaluation protocol (k samples, pass@1 / pass@k / cons@k with intervals) on benchmarks;
           `r1lab eval --compare RUN_A RUN_B` tells whether B differs from A by more than the noise

Run `r1lab COMMAND --help` for a command's options. Set R1LAB_DEBUG=1 for tracebacks on input errors."""


def main(argv: list[str] | None = None) -> int:
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
    except (FileNotFoundError, KeyError, ValueError) as e:  # the user's input: say what to fix, no traceback
        if os.environ.get("R1LAB_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"r1lab {command}: {message}", file=sys.stderr)
        return 2


def zero(argv: list[str]) -> int:
    from r1lab.config import ZeroConfig, load_config
    from r1lab.rl.grpo import train

    cfg = load_config(ZeroConfig, argv, prog="r1lab zero")
    summary = train(cfg)
    before, after = summary["eval_before"], summary["eval_after"]
    print(f"held-out accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}; "
          f"mean reward {summary['reward_first_steps']:.3f} -> {summary['reward_last_steps']:.3f}; "
          f"report: {cfg.out}/report.md")
    return 0


def evaluate(argv: list[str]) -> int:
    if "--compare" in argv:
        from r1lab.evaluate.compare import compare_runs, format_comparison

        runs = argv[argv.index("--compare") + 1:]
        if len(runs) != 2 or len(argv) != 3:
            raise ValueError("usage: r1lab eval --compare RUN_A RUN_B (two run folders, nothing else)")
        print(format_comparison(compare_runs(*runs), *runs))
        return 0
    from r1lab.config import EvalConfig, load_config
    from r1lab.evaluate.runner import run_eval

    cfg = load_config(EvalConfig, argv, prog="r1lab eval")
    summary = run_eval(cfg)
    for name, result in summary["benchmarks"].items():
        pass1 = result["metrics"]["pass@1"]
        print(f"{name}: pass@1 {pass1['value']:.1%} [{pass1['ci_low']:.1%}, {pass1['ci_high']:.1%}] "
              f"(n={result['n_problems']}, k={result['k']})")
    print(f"report: {cfg.out}/report.md (also report.html); samples: {cfg.out}/<benchmark>/samples.jsonl")
    return 0


COMMANDS = {"zero": zero, "eval": evaluate}


if __name__ == "__main__":
    sys.exit(main())
