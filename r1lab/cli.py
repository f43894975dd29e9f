"""The ``r1lab`` command: one entry point, one subcommand per stage of the recipe."""

from __future__ import annotations

import os
import sys

USAGE = """usage: r1lab COMMAND [options]

commands:
  zero     GRPO with rule rewards from the model's own samples (R1-Zero); runs on the embedded model by default

Run `r1lab COMMAND --help` for a command's options. Set R1LAB_DEBUG=1 for tracebacks on input errors."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "zero":
        from r1lab.config import ZeroConfig, load_config
        from r1lab.rl.grpo import train

        cfg = load_config(ZeroConfig, rest, prog="r1lab zero")
        try:
            summary = train(cfg)
        except (FileNotFoundError, KeyError, ValueError) as e:  # the user's input: say what to fix, no traceback
            if os.environ.get("R1LAB_DEBUG"):
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"r1lab zero: {message}", file=sys.stderr)
            return 2
        before, after = summary["eval_before"], summary["eval_after"]
        print(f"held-out accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}; "
              f"mean reward {summary['reward_first_steps']:.3f} -> {summary['reward_last_steps']:.3f}; "
              f"report: {cfg.out}/report.md")
        return 0
    print(f"r1lab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
