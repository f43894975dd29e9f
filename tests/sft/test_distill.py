"""distill against a real r1lab serve on a loopback port (interrupted and resumed) and a failing fake endpoint."""

import json
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from r1lab.config import DistillConfig
from r1lab.serve.app import create_app
from r1lab.sft import distill

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from serving import ScriptedEngine, running, thinking_tokenizer  # noqa: E402

pytest.importorskip("openai")


def cfg_for(url, out, **kw):
    base = dict(teacher="teacher", base_url=url + "/v1", task="arithmetic",
                task_args={"digits": 1, "n_train": 20, "n_test": 5}, concurrency=4, backoff=0.01, max_tokens=64,
                out=str(out))
    base.update(kw)
    return DistillConfig(**base)


def test_distill_from_r1lab_serve_resumes_with_every_prompt_exactly_once(tmp_path, monkeypatch):
    engine = ScriptedEngine(thinking_tokenizer(), "Adding them up.\n</think>\n\n<answer>7</answer>")
    with running(create_app(engine, "teacher")) as url:
        cfg = cfg_for(url, tmp_path / "run", concurrency=2)
        real_ask = distill.Teacher.ask
        calls = []

        def dies_half_way(self, prompt):
            calls.append(prompt)
            if len(calls) == 10:
                raise KeyboardInterrupt
            return real_ask(self, prompt)

        monkeypatch.setattr(distill.Teacher, "ask", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            distill.run_distill(cfg, progress=False)
        first = [json.loads(l) for l in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
        assert 5 <= len(first) < 20
        monkeypatch.setattr(distill.Teacher, "ask", real_ask)
        asked = []
        monkeypatch.setattr(distill.Teacher, "ask", lambda self, p: (asked.append(p), real_ask(self, p))[1])
        summary = distill.run_distill(cfg, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert sorted(int(r["id"]) for r in rows) == list(range(20))  # every prompt, exactly once
    assert len(asked) == 20 - len(first)  # finished prompts were not asked again
    assert rows[0]["reasoning"].strip() == "Adding them up." and rows[0]["content"] == "<answer>7</answer>"
    assert rows[0]["response"].startswith("<think>\nAdding them up.\n</think>")
    assert summary["traces"] == 20 and summary["completion_tokens"] > 0
    kept = [json.loads(l) for l in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    assert len(kept) == summary["kept"] == sum(r["verdict"] == 1.0 for r in rows)  # only verified answers (7)


def flaky_endpoint(failures):
    """Answers each new prompt first with the statuses in ``failures``, then with a reply."""
    app = FastAPI()
    seen = {}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        prompt = body["messages"][-1]["content"]
        n = seen.get(prompt, 0)
        seen[prompt] = n + 1
        if n < len(failures):
            return JSONResponse({"error": {"message": "try later", "type": "x", "param": None, "code": None}},
                                status_code=failures[n], headers={"Retry-After": "0"})
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "5", "reasoning_content": "think"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    return app, seen


def test_429_and_500_are_retried_and_counted(tmp_path):
    app, seen = flaky_endpoint([429, 500])
    with running(app) as url:
        summary = distill.run_distill(cfg_for(url, tmp_path / "run", task_args={"n_train": 6, "n_test": 2}),
                                      progress=False)
    assert summary["traces"] == 6 and summary["retries"] == 12 and all(n == 3 for n in seen.values())
    assert summary["prompt_tokens"] == 18 and summary["completion_tokens"] == 12


def test_a_prompt_that_keeps_failing_stops_the_run_after_max_retries(tmp_path):
    app, seen = flaky_endpoint([503] * 10)
    with running(app) as url:
        with pytest.raises(Exception, match="503|try later"):
            distill.run_distill(cfg_for(url, tmp_path / "run", max_retries=2, concurrency=1,
                                        task_args={"n_train": 2, "n_test": 2}), progress=False)
    assert max(seen.values()) == 3  # the first try and two retries


def test_a_local_teacher_goes_through_the_engine(tmp_path):
    from conftest import make_model, make_tokenizer
    from r1lab.models import save_checkpoint

    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    summary = distill.run_distill(DistillConfig(teacher=model, task_args={"n_train": 5, "n_test": 2}, max_tokens=8,
                                                out=str(tmp_path / "run"), threads=1), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert summary["traces"] == 5 and sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]
    assert all(0 < r["usage"]["completion_tokens"] <= 8 and r["usage"]["prompt_tokens"] > 0 for r in rows)
