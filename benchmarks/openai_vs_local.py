"""The same model, greedy, through llama.cpp's server (``r1lab eval --engine openai``) and r1lab's own engine.

Exports a model (default: the embedded SmolLM2-135M-Instruct) to GGUF f16 with ``r1lab export``, serves it with
llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, from ``pip install
'llama-cpp-python[server]'``) and runs ``r1lab eval --greedy`` on the same problems four ways:

- ``local``: r1lab's torch engine on the checkpoint (fp32), prompts rendered by r1lab (template ``native``);
- ``chat``: ``--engine openai`` through ``/v1/chat/completions``: the server renders the prompt with the GGUF's chat
  template (the one the export wrote), ``extra_body: {repeat_penalty: 1.0}``;
- ``completions``: the same through ``/v1/completions``: r1lab renders the prompt, the server continues it;
- ``chat-defaults``: the chat route with the server's own sampling defaults (llama-cpp-python: repeat_penalty 1.1).

Prints, for each route, how many replies are the same text as the local engine's, how many give the same answer,
each one's accuracy, and for each reply that differs the token (of the model's tokenizer) where it first differs,
both lengths and finish reasons, and how close a call the local model's greedy choice was there (its top-1 minus
top-2 logit); then whether llama.cpp's tokenizer gives r1lab's prompt token ids, and the
seconds each run took. Finished runs in ``--out`` are reused.

Usage: ``python benchmarks/openai_vs_local.py [--model smollm2-135m] [--benchmark gsm8k] [--task-args YAML]
[--problems 30] [--max-tokens 256] [--out /tmp/openai-vs-local]``. About 40 minutes on 2 busy CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
import yaml

from r1lab.cli import main as r1lab
from r1lab.evaluate.report import folder_name
from r1lab.models import load_model

ALIAS = "r1lab-model"
ROUTES = {"chat": {"extra_body": {"repeat_penalty": 1.0}},
          "completions": {"api": "completions", "extra_body": {"repeat_penalty": 1.0}},
          "chat-defaults": {}}


def serve_llama_cpp(gguf: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """llama.cpp's server on a free loopback port, once it answers ``/v1/models``; its log in ``server.log``
    beside the GGUF (a pipe nobody reads would fill and stall it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = gguf.parent / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                                   ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                   "--n_threads", str(threads)], stdout=subprocess.DEVNULL, stderr=sink)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"llama.cpp's server died: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("llama.cpp's server did not start in 120 s")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.3)


def run_eval(out: Path, flags: list[str]) -> None:
    """``r1lab eval`` into ``out``; a finished run is reused."""
    if not (out / "report.md").is_file():
        assert r1lab(["eval", "--out", str(out), *flags]) == 0, f"r1lab eval into {out} failed"


def eval_seconds(out: Path, benchmark: str) -> float:
    """The seconds a finished run spent sampling ``benchmark`` (its ``summary.json``)."""
    return next(iter(json.loads((out / "summary.json").read_text())["benchmarks"].values()))["seconds"]


def samples(out: Path, benchmark: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / benchmark / "samples.jsonl").read_text().splitlines() if line]
    return sorted(rows, key=lambda r: r["problem"])


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (the shorter one's length if one is a prefix), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.no_grad()
def top2_gaps(model, tokenizer, prompt: str, completion: str) -> torch.Tensor:
    """The local model's top-1 minus top-2 logit at each token of its greedy ``completion`` (T,): how close a
    call each greedy choice was."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer.encode(completion)
    logits = model(torch.tensor([ids])).logits[0, len(prompt_ids) - 1:-1]  # (T, V)
    top = logits.topk(2).values
    return top[:, 0] - top[:, 1]


def compare(local: list[dict], remote: list[dict], model, tokenizer) -> dict:
    """How many of ``remote``'s greedy replies match ``local``'s, and where the others first differ (with the local
    model's top-2 logit gap there)."""
    differences = []
    for mine, theirs in zip(local, remote):
        if mine["completion"] != theirs["completion"]:
            a, b = tokenizer.encode(mine["completion"]), tokenizer.encode(theirs["completion"])
            at = first_difference(a, b)
            gaps = top2_gaps(model, tokenizer, mine["prompt"], mine["completion"])
            differences.append({"problem": mine["problem"], "at_token": at, "local_tokens": len(a),
                                "remote_tokens": len(b), "local_finish": mine["finish_reason"],
                                "remote_finish": theirs["finish_reason"],
                                "gap": float(gaps[at]) if at is not None and at < len(gaps) else None,
                                "local": mine["completion"], "remote": theirs["completion"]})
    return {"problems": len(local), "same_text": len(local) - len(differences),
            "same_answer": sum(m["answer"] == t["answer"] for m, t in zip(local, remote)),
            "correct_local": sum(r["correct"] for r in local), "correct_remote": sum(r["correct"] for r in remote),
            "differences": differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a checkpoint or model name r1lab loads")
    parser.add_argument("--benchmark", default="gsm8k", help="an r1lab eval benchmark, e.g. gsm8k or task:arithmetic")
    parser.add_argument("--task-args", default=None, help="for a task:NAME benchmark, e.g. '{digits: 2}'")
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="r1lab's CPU threads")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="llama.cpp's threads (its threads spin: on 2 busy cores, 2 threads ran 10x slower than 1)")
    parser.add_argument("--out", default="/tmp/openai-vs-local")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gguf = out / "model.f16.gguf"
    if not gguf.is_file():
        assert r1lab(["export", args.model, "--gguf", str(gguf), "--check", "false"]) == 0
    benchmark = folder_name(args.benchmark)  # task:NAME writes its samples under task-NAME
    common = ["--greedy", "--benchmarks", args.benchmark, "--limit", str(args.problems), "--max-new-tokens",
              str(args.max_tokens), "--threads", str(args.threads), "--problems-per-batch", "4",  # saved as they go
              *(["--task-args", args.task_args] if args.task_args else [])]
    run_eval(out / "local", ["--model", args.model, "--dtype", "fp32", *common])
    server, url = serve_llama_cpp(gguf, args.server_threads)
    try:
        for route, options in ROUTES.items():
            engine_args = {"tokenizer": args.model, "concurrency": 1, **options}
            run_eval(out / route, ["--engine", "openai", "--base-url", url, "--model", ALIAS, "--engine-args",
                                   yaml.safe_dump(engine_args, default_flow_style=True).strip(), *common])
        local = samples(out / "local", benchmark)
        model, tokenizer = load_model(args.model)
        tokenize = url.removesuffix("/v1") + "/extras/tokenize"  # llama-cpp-python's own endpoint
        same_ids = sum(httpx.post(tokenize, json={"input": r["prompt"]}, timeout=30).json()["tokens"]
                       == tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in local)
    finally:
        server.terminate()
        server.wait(10)

    print(f"{args.model}, {args.problems} {args.benchmark} problems, greedy, at most {args.max_tokens} tokens; "
          f"r1lab fp32 vs llama.cpp f16 GGUF")
    print(f"prompt token ids: llama.cpp's tokenizer gives r1lab's for {same_ids} of {len(local)} rendered prompts")
    for route in ROUTES:
        result = compare(local, samples(out / route, benchmark), model, tokenizer)
        (out / f"{route}-differences.json").write_text(json.dumps(result, indent=1))
        print(f"\n{route}: same text {result['same_text']}/{result['problems']}, same answer "
              f"{result['same_answer']}/{result['problems']}, correct: local {result['correct_local']:.0f}, "
              f"llama.cpp {result['correct_remote']:.0f}")
        for d in result["differences"]:
            gap = "" if d["gap"] is None else f", the local top-2 logit gap there {d['gap']:.4f}"
            print(f"  problem {d['problem']}: first differs at token {d['at_token']}{gap} (local {d['local_tokens']} "
                  f"tokens, {d['local_finish']}; llama.cpp {d['remote_tokens']}, {d['remote_finish']})")
    gaps = torch.cat([top2_gaps(model, tokenizer, r["prompt"], r["completion"]) for r in local])
    print(f"\nlocal greedy choices: median top-2 logit gap {gaps.median():.3f}; {(gaps < 0.01).float().mean():.2%} "
          f"of {len(gaps)} under 0.01 (a call f16 rounding can flip)")
    print("\nseconds sampling: " + ", ".join(f"{name} {eval_seconds(out / name, benchmark):.0f}"
                                           for name in ["local", *ROUTES]))


if __name__ == "__main__":
    main()
