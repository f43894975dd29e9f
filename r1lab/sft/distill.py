"""``r1lab distill``: traces from a teacher, verified and filtered, then SFT of a small student on them.

The teacher is any OpenAI-compatible chat endpoint (DeepSeek's ``deepseek-reasoner``, a vLLM or SGLang server,
``r1lab serve``) called through the official ``openai`` client, whose ``reasoning_content`` becomes the think
block of the trace; or a local model through the engine. Requests run ``concurrency`` at a time; a 429, a 5xx
or a dropped connection is retried with exponential backoff (``backoff``, doubling, at most ``max_retries``
times), and every retry and every token is counted.

Resume: each finished prompt is appended to ``OUT/traces.jsonl`` in one synced write as soon as it returns.
A rerun skips the prompts already there, so after an interruption no finished prompt is lost or asked again
(one that was in flight is asked again, once). The kept traces go to ``OUT/sft.jsonl`` through the same
verifier and filters as ``r1lab sample``; ``--student MODEL`` then runs ``r1lab sft`` on them into ``OUT/sft``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from r1lab.files import write_jsonl
from r1lab.sft import filters
from r1lab.sft.data import r1_response
from r1lab.tasks.base import question_text

RETRY_STATUS = {408, 409, 429} | set(range(500, 600))


class Teacher:
    """An OpenAI-compatible endpoint: ``ask(prompt) -> (reasoning, content, usage, retries)``."""

    def __init__(self, cfg):
        import openai

        self.openai = openai
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "unused",
                                    max_retries=0, timeout=600)

    def ask(self, prompt: str) -> tuple[str, str, dict, int]:
        retries = 0
        while True:
            try:
                reply = self.client.chat.completions.create(
                    model=self.cfg.teacher, messages=[{"role": "user", "content": prompt}],
                    temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens)
                message = reply.choices[0].message
                extra = message.model_extra or {}
                reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
                usage = reply.usage.model_dump() if reply.usage else {}
                return reasoning, message.content or "", usage | {"finish_reason": reply.choices[0].finish_reason}, retries
            except (self.openai.APIConnectionError, self.openai.APITimeoutError, self.openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                if (status is not None and status not in RETRY_STATUS) or retries >= self.cfg.max_retries:
                    raise
                time.sleep(self.cfg.backoff * 2 ** retries)
                retries += 1


def run_distill(cfg, progress: bool = True) -> dict:
    from r1lab.config import task_args_for
    from r1lab.tasks import get_task

    check_config(cfg)
    task = get_task(cfg.task, **task_args_for(cfg.task, cfg.task_args))
    examples = [{"id": str(i), **e} for i, e in enumerate(task.examples("train")[:cfg.limit or None])]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    traces_path = out / "traces.jsonl"
    done = read_traces(traces_path)
    todo = [e for e in examples if e["id"] not in done]
    lock = threading.Lock()
    totals = Counter()

    def record(example: dict, reasoning: str, content: str, usage: dict, retries: int) -> None:
        response = r1_response(reasoning, content) if reasoning else content
        row = {"id": example["id"], "prompt": question_text(example, task), "reasoning": reasoning, "content": content,
               "response": response, "verdict": task.verify(response, **example), "retries": retries,
               "usage": usage, "teacher": cfg.teacher, "base_url": cfg.base_url}
        with lock:  # one synced append per prompt: a crash never leaves half a record behind
            with open(traces_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            done[example["id"]] = row

    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="distill", unit="prompt",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    if cfg.base_url:
        teacher = Teacher(cfg)

        def one(example: dict) -> None:
            reasoning, content, usage, retries = teacher.ask(question_text(example, task))
            record(example, reasoning, content, usage, retries)
            bar.update(1)

        pool = ThreadPoolExecutor(cfg.concurrency)
        try:
            for future in [pool.submit(one, e) for e in todo]:
                future.result()
        finally:  # on an error or Ctrl-C: finish (and record) what is in flight, send nothing more
            pool.shutdown(wait=True, cancel_futures=True)
    elif todo:
        _local_teacher(cfg, todo, lambda example: question_text(example, task), record, bar)
    bar.close()

    rows = [done[e["id"]] for e in examples if e["id"] in done]
    counts: Counter = Counter()
    kept = []
    for row in rows:
        reason = None if (row["verdict"] or cfg.keep_wrong) else "wrong"
        reason = reason or filters.truncated(row["usage"].get("finish_reason", "stop"))
        reason = reason or filters.language_mixed(row["response"]) or filters.code_block(row["response"])
        if reason:
            counts[reason.split(":")[0]] += 1
        else:
            kept.append({"prompt": row["prompt"], "response": row["response"],
                         "source": {"kind": "distill", "teacher": cfg.teacher, "base_url": cfg.base_url,
                                    "problem": row["id"], "verdict": row["verdict"]}})
    write_jsonl(out / "sft.jsonl", kept)
    for row in rows:
        totals["retries"] += row["retries"]
        for key in ("prompt_tokens", "completion_tokens"):
            totals[key] += row["usage"].get(key) or 0
    summary = {"prompts": len(examples), "traces": len(rows), "kept": len(kept), "dropped": dict(counts),
               "retries": totals["retries"], "prompt_tokens": totals["prompt_tokens"],
               "completion_tokens": totals["completion_tokens"], "path": str(out / "sft.jsonl")}
    if cfg.student:
        from r1lab.config import SftConfig
        from r1lab.sft.trainer import train_sft

        summary["student"] = train_sft(SftConfig(model=cfg.student, data=str(out / "sft.jsonl"),
                                                 template=cfg.template, out=str(out / "sft")), progress=progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_traces(path: Path) -> dict[str, dict]:
    """Finished prompts by id; a torn last line (killed mid-write) is ignored and that prompt asked again."""
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.setdefault(row["id"], row)
    return done


def _local_teacher(cfg, todo, question, record, bar) -> None:
    import torch

    from r1lab.chat import render
    from r1lab.engine import SamplingParams, TorchEngine
    from r1lab.models import load_model
    from r1lab.serve.stream import split_whole

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    model, tokenizer = load_model(cfg.teacher)
    engine = TorchEngine(model, tokenizer)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_tokens, seed=cfg.seed)
    for start in range(0, len(todo), 16):
        batch = todo[start:start + 16]
        rendered = [render([{"role": "user", "content": question(e)}], cfg.template, tokenizer) for e in batch]
        prompts = [engine.encode(r.text) for r in rendered]
        outputs = engine.generate(prompts, params)
        for example, r, prompt, (completion,) in zip(batch, rendered, prompts, outputs):
            reasoning, content = split_whole(completion.text, thinking=r.thinking)
            usage = {"prompt_tokens": len(prompt), "completion_tokens": len(completion.token_ids),
                     "finish_reason": completion.finish_reason}
            record(example, reasoning.strip(), content, usage, 0)
            bar.update(1)


def check_config(cfg) -> None:
    if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.max_tokens < 1:
        raise ValueError("concurrency and max_tokens must be at least 1, max_retries at least 0")
    if cfg.base_url and not cfg.base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {cfg.base_url!r}")
