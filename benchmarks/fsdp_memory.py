"""Memory per process: `r1lab zero --nproc N` replicated against sharded (`--parallel fsdp`), on the same run.

For each mode it runs a few GRPO steps (with ``MALLOC_MMAP_THRESHOLD_=131072``, so that freed tensors go back to the
system and the resident set follows what is alive rather than glibc's cached heap) and prints, per rank, the
training state it holds (weights, gradients and AdamW moments: its shards under FSDP; ``memory/train_state_mb``) and
its peak memory (``memory/peak_mb_by_rank``: the resident set on a CPU, which also counts the process itself, the
engine's full copy of the policy and the activations; allocated tensors on a GPU), from the run's own
``metrics.jsonl``. The step time is printed too, but on a 2-core machine two processes only contend (see the
README).

Usage: ``python benchmarks/fsdp_memory.py [--nproc 2] [--steps 3] [--synthetic HIDDEN,LAYERS,INTERMEDIATE]
[-- MORE_ZERO_ARGS]`` (default model: the embedded one; ``--synthetic 1152,16,3072`` trains a randomly initialised
model of the embedded one's family and tokenizer at that size instead, to see where the training state dominates;
``-- --model HF_ID_OR_FOLDER`` for another model, ``-- --beta 0.001`` to add a reference policy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def synthetic(folder: Path, shape: str) -> str:
    """A randomly initialised model with the embedded model's architecture and tokenizer, resized to ``shape``."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1lab.config import ZeroConfig
    from r1lab.models import load_model, save_checkpoint

    hidden, layers, intermediate = (int(x) for x in shape.split(","))
    base, tokenizer = load_model(ZeroConfig().model)
    config = base.config
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = hidden, layers, intermediate
    config.head_dim = hidden // config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    print(f"synthetic model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters "
          f"(hidden {hidden}, {layers} layers, intermediate {intermediate})", flush=True)
    return str(save_checkpoint(model, tokenizer, folder))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--synthetic", default="", help="HIDDEN,LAYERS,INTERMEDIATE of a random model")
    parser.add_argument("zero_args", nargs="*", help="after --: more `r1lab zero` arguments")
    args = parser.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    with tempfile.TemporaryDirectory(prefix="r1lab-fsdp-memory-") as root:
        model = ["--model", synthetic(Path(root) / "model", args.synthetic)] if args.synthetic else []
        for mode in ("replicate", "fsdp"):
            out = Path(root) / mode
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "r1lab.cli", "zero", "--nproc", str(args.nproc), "--parallel", mode,
                            "--steps", str(args.steps), "--eval-examples", "4", "--out", str(out), *model,
                            *args.zero_args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            peaks = rows[-1]["memory/peak_mb_by_rank"]
            print(f"{mode:>9}: training state {rows[-1]['memory/train_state_mb']:7.0f} MiB per rank; peak memory per "
                  f"rank {', '.join(f'{p:.0f}' for p in peaks)} MiB; median step "
                  f"{statistics.median(r['seconds'] for r in rows):.1f} s ({time.monotonic() - t0:.0f} s in all)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
