"""``r1lab distill``: traces from a teacher, verified and filtered, then SFT of a small student on them.

The teacher is any OpenAI-compatible chat endpoint (DeepSeek's ``deepseek-reasoner``, a vLLM or SGLang server,
``r1lab serve``) called through the official ``openai`` client, whose ``reasoning_content`` becomes the think
block of the trace; or a local model through the engine. Requests run ``concurrency`` at a time; a 429, a 5xx
or a dropped connection is retried with exponential backoff (``backoff``, doubling, at most ``max_retries``
times), and every retry and every token is counted. A request may take as long as ``max_tokens`` at a slow 10
tokens a second (at least the client's usual 600 s), since a non-streamed reply sends nothing until it is done.

Resume: each finished prompt is appended to ``OUT/traces.jsonl`` in one synced write as soon as it returns, with
the settings that produced it (teacher, endpoint, task, temperature, top-p, token budget). A rerun skips the
prompts already there, so after an interruption no finished prompt is lost or asked again (one that was in
flight is asked again, once). ``OUT/config.yaml`` keeps the run's options; a rerun into a folder whose traces
were made with other settings is refused rather than mixing them. Ctrl-C stops at once: requests in flight are
abandoned, not awaited, and :class:`Interrupted` says how many prompts are saved. The kept traces go to
``OUT/sft.jsonl`` through the same verifier and filters as ``r1lab sample``; ``--student MODEL`` then runs
``r1lab sft`` on them into ``OUT/sft``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

from r1lab.chat import split_reasoning
from r1lab.config import DistillConfig, SftConfig, save_config
from r1lab.console import progress as progress_bar
from r1lab.engine import SamplingParams
from r1lab.files import append_jsonl, write_json, write_jsonl
from r1lab.rollout import generate_groups, open_engine
from r1lab.runs import check_run_folder, read_saved_config, refuse_changed
from r1lab.sft import filters
from r1lab.sft.data import r1_response
from r1lab.sft.trainer import train_sft
from r1lab.tasks import build_task, task_args_for
from r1lab.tasks.base import question_text

RETRY_STATUS = {408, 409, 429} | set(range(500, 600))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while asking the teacher: ``done`` of ``total`` prompts are saved in ``out``. A KeyboardInterrupt, so
    that whoever does not catch it still stops; ``str()`` is the one line to show the user."""

    def __init__(self, done: int, total: int, out: Path):
        super().__init__(done, total, out)
        self.done, self.total, self.out = done, total, out

    def __str__(self) -> str:
        return (f"interrupted: {self.done} of {self.total} prompts done and saved in {self.out}; "
                "rerun the same command to resume")


class Teacher:
    """An OpenAI-compatible endpoint: ``ask(prompt) -> (reasoning, content, usage, retries)``."""

    def __init__(self, cfg):
        try:
            import openai
        except ImportError as e:
            raise ValueError(f"a teacher at --base-url is asked through the openai package, which does not import "
                             f"here ({e}); pip install openai") from None

        self.openai = openai
        self.cfg = cfg
        timeout = openai.Timeout(max(600.0, cfg.max_tokens / 10), connect=10.0)
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "unused",
                                    max_retries=0, timeout=timeout)

    def ask(self, prompt: str) -> tuple[str, str, dict, int]:
        retries = 0
        while True:
            try:
                reply = self.client.chat.completions.create(
                    model=self.cfg.teacher, messages=[{"role": "user", "content": prompt}],
                    temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens)
                if not getattr(reply, "choices", None) or getattr(reply.choices[0], "message", None) is None:
                    raise ConnectionError(f"the teacher {self.cfg.teacher!r} at {self.cfg.base_url} answered with "
                                          f"no choices ({str(reply)[:200]}); is --base-url a chat-completions API?")
                message = reply.choices[0].message
                extra = message.model_extra or {}
                reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
                usage = reply.usage.model_dump() if reply.usage else {}
                usage["finish_reason"] = reply.choices[0].finish_reason
                return reasoning, message.content or "", usage, retries
            except (ValueError, TypeError) as exc:  # a 200 whose body is not a chat completion
                raise ConnectionError(f"the teacher {self.cfg.teacher!r} at {self.cfg.base_url} answered something "
                                      f"that is not a chat completion ({type(exc).__name__}: {str(exc)[:200]}); is "
                                      "--base-url a chat-completions API?") from exc
            except (self.openai.APIConnectionError, self.openai.APITimeoutError, self.openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                if (status is not None and status not in RETRY_STATUS) or retries >= self.cfg.max_retries:
                    raise ConnectionError(f"the teacher {self.cfg.teacher!r} at {self.cfg.base_url} failed after "
                                          f"{retries} retries: {type(exc).__name__}: {str(exc)[:300]}. Finished "
                                          "prompts are saved; rerun the same command to resume") from exc
                time.sleep(self.cfg.backoff * 2 ** retries)
                retries += 1


def run_distill(cfg: DistillConfig, progress: bool = True) -> dict:
    cfg.validate()
    check_run_folder(cfg.out, DistillConfig)
    task = build_task(cfg.task, cfg.task_args)
    examples = [{"id": str(i), **e} for i, e in enumerate(task.examples("train")[:cfg.limit or None])]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    traces_path = out / "traces.jsonl"
    done = read_traces(traces_path)
    settings = trace_settings(dataclasses.asdict(cfg))
    check_settings(out, settings, done)
    save_config(cfg, out / "config.yaml")
    todo = [e for e in examples if e["id"] not in done]
    lock = threading.Lock()
    stopped = threading.Event()  # set on Ctrl-C: an abandoned request that still returns is not written

    def record(example: dict, reasoning: str, content: str, usage: dict, retries: int) -> None:
        response = r1_response(reasoning, content) if reasoning else content
        row = {"id": example["id"], "prompt": question_text(example, task), "reasoning": reasoning, "content": content,
               "response": response, "verdict": task.verify(response, **example), "retries": retries,
               "usage": usage, "teacher": cfg.teacher, "base_url": cfg.base_url, "settings": settings}
        with lock:  # one synced append per prompt: a crash never leaves half a record behind
            if stopped.is_set():
                return
            append_jsonl(traces_path, row)
            done[example["id"]] = row

    teacher = Teacher(cfg) if cfg.base_url and todo else None
    bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), desc="distill", unit="prompt",
                       disable=not progress)

    def one(example: dict) -> None:
        reasoning, content, usage, retries = teacher.ask(question_text(example, task))
        record(example, reasoning, content, usage, retries)
        bar.update(1)

    try:
        if teacher:
            _ask_all(one, todo, cfg.concurrency)
        elif todo:
            _local_teacher(cfg, task, todo, record, bar)
    except KeyboardInterrupt:
        with lock:
            stopped.set()
            saved = sum(e["id"] in done for e in examples)
        bar.close()
        raise Interrupted(saved, len(examples), out) from None
    bar.close()

    rows = [done[e["id"]] for e in examples if e["id"] in done]
    counts: Counter = Counter()
    kept = []
    for row in rows:
        reason = None if (row["verdict"] or cfg.keep_wrong) else "wrong"
        reason = reason or filters.truncated(row["usage"].get("finish_reason", "stop"))
        reason = reason or filters.unreadable(row["response"])
        if reason:
            counts[reason.split(":")[0]] += 1
        else:
            made_by = row.get("settings") or {"teacher": row["teacher"], "base_url": row["base_url"]}
            kept.append({"prompt": row["prompt"], "response": row["response"],
                         "source": {"kind": "distill", **made_by, "problem": row["id"], "verdict": row["verdict"]}})
    write_jsonl(out / "sft.jsonl", kept)
    summary = {"prompts": len(examples), "traces": len(rows), "kept": len(kept), "dropped": dict(counts),
               "retries": sum(row["retries"] for row in rows), "path": str(out / "sft.jsonl"),
               **{key: sum(row["usage"].get(key) or 0 for row in rows) for key in ("prompt_tokens",
                                                                                   "completion_tokens")}}
    if cfg.student:
        summary["student"] = train_sft(SftConfig(model=cfg.student, data=str(out / "sft.jsonl"),
                                                 template=cfg.template, out=str(out / "sft"), threads=cfg.threads,
                                                 device=cfg.device, dtype=cfg.dtype), progress=progress)
    write_json(out / "summary.json", summary)
    return summary


def _ask_all(one, todo: list[dict], concurrency: int) -> None:
    """``one(example)`` for every example, ``concurrency`` at a time, on daemon threads. On an error nothing more
    is sent, what is in flight finishes, and the first error is raised. On Ctrl-C (a KeyboardInterrupt in this,
    the main thread) nothing more is sent and nothing is awaited: a request in flight is abandoned, and its
    thread, a daemon, never holds up the exit (a ThreadPoolExecutor's workers are joined at exit, so a Ctrl-C
    there waits for every request in flight)."""
    pending = list(reversed(todo))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if errors or not pending:
                    return
                example = pending.pop()
            try:
                one(example)
            except BaseException as e:  # handed to the main thread, raised there
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=work, name=f"distill-{i}", daemon=True)
               for i in range(min(concurrency, len(todo)))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        with lock:
            pending.clear()
        raise
    if errors:
        raise errors[0]


def trace_settings(config: dict) -> dict:
    """What shapes a trace, from a run's options (``dataclasses.asdict`` of its config, or its saved
    ``config.yaml``): the teacher and how it is asked. Not concurrency, retries or limit, which change only
    how fast and how many. The template and seed are used by a local teacher only; an endpoint gets neither."""
    keys = ("teacher", "base_url", "task", "temperature", "top_p", "max_tokens")
    settings = {key: config.get(key) for key in keys}
    settings["task_args"] = task_args_for(config.get("task"), config.get("task_args"))
    if not config.get("base_url"):
        settings |= {"template": config.get("template"), "seed": config.get("seed")}
    return settings


def check_settings(out: Path, settings: dict, done: dict[str, dict]) -> None:
    """Refuse to add traces to ``out`` when the ones already there were made with other ``settings``: those of
    its ``config.yaml``, else (a folder from before there was one) what its first trace recorded."""
    if not done:
        return
    path = out / "config.yaml"
    if path.is_file():
        before = trace_settings(read_saved_config(path))
    else:
        first = next(iter(done.values()))
        before = first.get("settings") or {"teacher": first.get("teacher"), "base_url": first.get("base_url")}
    refuse_changed(out, before, settings, [key for key in settings if key in before],
                   "Use another --out for these settings, or the same flags as before to resume that run",
                   what=f"{len(done)} traces made", as_flags=True)


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


def _local_teacher(cfg: DistillConfig, task, todo: list[dict], record, bar) -> None:
    """The teacher is a model here: its replies are split into reasoning and content as a server would."""
    engine = open_engine(cfg.teacher, cfg.threads, device=cfg.device, dtype=cfg.dtype)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_tokens, seed=cfg.seed)
    for start in range(0, len(todo), 16):
        batch = todo[start:start + 16]
        for example, group in zip(batch, generate_groups(engine, batch, cfg.template, None, params, task)):
            (completion,) = group.completions
            reasoning, content = split_reasoning(completion.text, thinking=group.thinking)
            usage = {"prompt_tokens": len(group.prompt_ids), "completion_tokens": len(completion.token_ids),
                     "finish_reason": completion.finish_reason}
            record(example, reasoning.strip(), content, usage, 0)
            bar.update(1)
