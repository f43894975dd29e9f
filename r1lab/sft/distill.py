"""``r1lab distill``: traces from a teacher, verified and filtered, then SFT of a small student on them.

The teacher is an engine (:mod:`r1lab.engine.registry`): any OpenAI-compatible chat endpoint at ``--base-url``
(DeepSeek's ``deepseek-reasoner``, a vLLM, SGLang or llama.cpp server, ``r1lab serve``), asked through
:class:`r1lab.engine.OpenAIEngine`, whose ``reasoning_content`` becomes the think block of the trace; or a local
model on the engine ``--engine`` names (torch by default). For an endpoint, ``concurrency``, ``max_retries``,
``backoff`` and ``api_key_env`` are the engine's options: requests run ``concurrency`` at a time; a 429, a 5xx or
a dropped connection is retried with exponential backoff (``backoff``, doubling, at most ``max_retries`` times),
and every retry and every token is counted; a request may take as long as ``max_tokens`` at a slow 10 tokens a
second (at least 600 s), since a non-streamed reply sends nothing until it is done. An endpoint is sent no seed
(its replies are the server's to vary) and no template (it applies its own).

Resume: each finished prompt is appended to ``OUT/traces.jsonl`` in one synced write as soon as the teacher has
it (an endpoint's one by one, a local model's a batch of 16 at a time), with the settings that produced it
(teacher, endpoint, task, temperature, top-p, token budget). A rerun skips the prompts already there, so after
an interruption no finished prompt is lost or asked again (one that was in flight is asked again, once).
``OUT/config.yaml`` keeps the run's options; a rerun into a folder whose traces were made with other settings is
refused rather than mixing them. Ctrl-C stops at once: requests in flight are abandoned, not awaited, and
:class:`Interrupted` says how many prompts are saved. The kept traces go to ``OUT/sft.jsonl`` through the same
verifier and filters as ``r1lab sample``; ``--student MODEL`` then runs ``r1lab sft`` on them into ``OUT/sft``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from r1lab.chat import split_reasoning
from r1lab.config import DistillConfig, SftConfig, engine_choice, save_config
from r1lab.console import progress as progress_bar
from r1lab.engine import Completion, Engine, Prompt, SamplingParams, check_engine, open_engine
from r1lab.files import append_jsonl, write_json, write_jsonl
from r1lab.runs import check_run_folder, read_saved_config, refuse_changed
from r1lab.sft import filters
from r1lab.sft.data import r1_response
from r1lab.sft.trainer import train_sft
from r1lab.tasks import build_task, task_args_for
from r1lab.tasks.base import question_text


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while asking the teacher: ``done`` of ``total`` prompts are saved in ``out``. A KeyboardInterrupt, so
    that whoever does not catch it still stops; ``str()`` is the one line to show the user."""

    def __init__(self, done: int, total: int, out: Path):
        super().__init__(done, total, out)
        self.done, self.total, self.out = done, total, out

    def __str__(self) -> str:
        return (f"interrupted: {self.done} of {self.total} prompts done and saved in {self.out}; "
                "rerun the same command to resume")


def run_distill(cfg: DistillConfig, progress: bool = True) -> dict:
    cfg.validate()
    _, _, template = teacher_engine(cfg)  # bad engine options are refused before anything is written
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
    bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), desc="distill", unit="prompt",
                       disable=not progress)
    teacher = None
    try:
        teacher = open_teacher(cfg) if todo else None
        prompts = [teacher.prompt([{"role": "user", "content": question_text(e, task)}], template) for e in todo]
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_tokens,
                                seed=None if cfg.base_url else cfg.seed)
        # each prompt as soon as the teacher has it: an endpoint's as its requests return, a local one's by batches
        answers = teacher.each(prompts, params, stream_ids=[int(e["id"]) for e in todo]) if todo else ()
        for i, (completion,) in answers:
            row = trace(todo[i], prompts[i], completion, task, cfg, settings)
            append_jsonl(traces_path, row)  # one synced append per prompt: a crash never leaves half a record
            done[row["id"]] = row
            bar.update(1)
    except KeyboardInterrupt:  # counted from the file: a Ctrl-C between a trace's append and its entry in done
        saved = read_traces(traces_path)
        raise Interrupted(sum(e["id"] in saved for e in examples), len(examples), out) from None
    except ConnectionError as e:
        raise ConnectionError(f"{e}. Finished prompts are saved in {out}; rerun the same command to resume") from e
    finally:
        bar.close()
        if teacher is not None:
            teacher.close()

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


def teacher_engine(cfg: DistillConfig) -> tuple[str, dict, str]:
    """The teacher's engine, its options and the template its prompts are made with
    (:func:`r1lab.config.engine_choice`): the endpoint at ``base_url`` (engine openai, with distill's request
    options, which ``engine_args`` may override; the server's own template, ``native``), else the local model
    ``teacher`` on ``cfg.engine`` with ``cfg.template``. Checked before anything is written."""
    name, args = engine_choice(cfg)
    template = cfg.template
    if name == "openai":
        args = {"concurrency": cfg.concurrency, "max_retries": cfg.max_retries, "backoff": cfg.backoff, **args}
        template = "native"
    return name, check_engine(name, args, template), template


def open_teacher(cfg: DistillConfig) -> Engine:
    """The teacher's engine (:func:`teacher_engine`)."""
    name, args, _ = teacher_engine(cfg)
    return open_engine(cfg.teacher, name, args, cfg.threads, device=cfg.device, dtype=cfg.dtype)


def trace(example: dict, prompt: Prompt, completion: Completion, task, cfg: DistillConfig, settings: dict) -> dict:
    """One line of ``traces.jsonl``: the teacher's reply split into reasoning and content (an endpoint's reply is
    already in R1's form), judged by the task's verifier, with its tokens, retries and the settings that made it."""
    reasoning, content = split_reasoning(completion.text, thinking=prompt.thinking)
    reasoning = reasoning.strip()
    response = r1_response(reasoning, content) if reasoning else content
    usage = {"prompt_tokens": len(prompt.token_ids), "completion_tokens": len(completion.token_ids),
             "finish_reason": completion.finish_reason, **completion.usage}
    return {"id": example["id"], "prompt": question_text(example, task), "reasoning": reasoning, "content": content,
            "response": response, "verdict": task.verify(response, **example), "retries": usage.pop("retries", 0),
            "usage": usage, "teacher": cfg.teacher, "base_url": cfg.base_url, "settings": settings}


def trace_settings(config: dict) -> dict:
    """What shapes a trace, from a run's options (``dataclasses.asdict`` of its config, or its saved
    ``config.yaml``): the teacher and how it is asked. Not concurrency, retries or limit, which change only
    how fast and how many. The template, seed and engine are a local teacher's only (an engine samples differently
    from another; a run saved before engines were named used the torch one); an endpoint gets none of them, and
    its ``api`` and ``extra_body`` (engine options) count."""
    keys = ("teacher", "base_url", "task", "temperature", "top_p", "max_tokens")
    settings = {key: config.get(key) for key in keys}
    settings["task_args"] = task_args_for(config.get("task"), config.get("task_args"))
    if not config.get("base_url"):
        settings |= {"template": config.get("template"), "seed": config.get("seed"),
                     "engine": config.get("engine") or "torch"}
    else:  # the engine options that change what an endpoint samples (a run saved before they existed: defaults)
        given = config.get("engine_args") or {}
        settings |= {"api": given.get("api") or "chat", "extra_body": given.get("extra_body") or {}}
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
