"""distill against a real r1lab serve on a loopback port (interrupted and resumed) and a failing fake endpoint."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from r1lab.config import DistillConfig
from r1lab.engine import OpenAIEngine
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
        real_ask = OpenAIEngine._ask
        calls = []

        def dies_half_way(self, index, body, *rest):
            calls.append(body["messages"][-1]["content"])
            if len(calls) == 10:
                raise KeyboardInterrupt
            return real_ask(self, index, body, *rest)

        monkeypatch.setattr(OpenAIEngine, "_ask", dies_half_way)
        with pytest.raises(distill.Interrupted):
            distill.run_distill(cfg, progress=False)
        first = [json.loads(l) for l in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
        assert 5 <= len(first) < 20
        asked = []
        monkeypatch.setattr(OpenAIEngine, "_ask", lambda self, index, body, *rest: (
            asked.append(body["messages"][-1]["content"]), real_ask(self, index, body, *rest))[1])
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
    with running(app) as url, pytest.raises(Exception, match="503|try later"):
        distill.run_distill(cfg_for(url, tmp_path / "run", max_retries=2, concurrency=1,
                                    task_args={"n_train": 2, "n_test": 2}), progress=False)
    assert max(seen.values()) == 3  # the first try and two retries


def test_a_local_teacher_goes_through_the_engine(tmp_path):
    from r1lab.models import save_checkpoint

    from conftest import make_model, make_tokenizer

    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    summary = distill.run_distill(DistillConfig(teacher=model, task_args={"n_train": 5, "n_test": 2}, max_tokens=8,
                                                out=str(tmp_path / "run"), threads=1), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert summary["traces"] == 5 and sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]
    assert all(0 < r["usage"]["completion_tokens"] <= 8 and r["usage"]["prompt_tokens"] > 0 for r in rows)


def test_a_rerun_with_other_sampling_settings_is_refused_and_every_row_records_its_settings(tmp_path):
    app, _ = flaky_endpoint([])
    out = tmp_path / "run"
    with running(app) as url:
        distill.run_distill(cfg_for(url, out, task_args={"n_train": 4, "n_test": 2}), progress=False)
        before = (out / "traces.jsonl").read_text()
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["teacher"] == "teacher" and saved["temperature"] == 0.6 and saved["max_tokens"] == 64
        for changed, flags in [({"temperature": 1.0, "max_tokens": 32}, ["--temperature", "--max-tokens"]),
                               ({"teacher": "another"}, ["--teacher"]),
                               ({"task_args": {"n_train": 4, "n_test": 2, "digits": 2}}, ["--task-args"])]:
            with pytest.raises(ValueError, match="other settings") as refused:
                distill.run_distill(cfg_for(url, out, **{"task_args": {"n_train": 4, "n_test": 2}, **changed}),
                                    progress=False)
            assert all(flag in str(refused.value) for flag in flags) and "another --out" in str(refused.value)
            assert (out / "traces.jsonl").read_text() == before  # nothing mixed in
        # how many, how fast and which are kept are not settings of a trace: a rerun with other ones resumes
        summary = distill.run_distill(cfg_for(url, out, task_args={"n_train": 4, "n_test": 2}, concurrency=1,
                                              max_retries=1, backoff=0.5, limit=3, keep_wrong=True), progress=False)
    assert summary["traces"] == 3 and (out / "traces.jsonl").read_text() == before
    rows = [json.loads(l) for l in before.splitlines()]
    assert all(r["settings"]["teacher"] == "teacher" and r["settings"]["temperature"] == 0.6
               and r["settings"]["top_p"] == 0.95 and r["settings"]["max_tokens"] == 64 for r in rows)
    kept = [json.loads(l) for l in (out / "sft.jsonl").read_text().splitlines()]
    assert kept and all(k["source"]["temperature"] == 0.6 and k["source"]["max_tokens"] == 64 for k in kept)


def test_a_folder_from_before_config_yaml_is_checked_against_its_traces(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    row = {"id": "0", "prompt": "1+1", "reasoning": "", "content": "2", "response": "2", "verdict": 1.0, "retries": 0,
           "usage": {}, "teacher": "old-teacher", "base_url": "http://127.0.0.1:9/v1"}
    (out / "traces.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="--teacher: 'old-teacher' there, 'teacher' now"):
        distill.run_distill(cfg_for("http://127.0.0.1:9", out), progress=False)


def test_without_the_openai_package_distill_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(ValueError, match="pip install openai"):
        distill.run_distill(cfg_for("http://127.0.0.1:9", tmp_path / "run"), progress=False)


def test_the_teacher_is_an_openai_engine_with_distills_request_options(tmp_path):
    teacher = distill.open_teacher(cfg_for("http://127.0.0.1:9", tmp_path, concurrency=3, max_retries=2,
                                           backoff=0.5, max_tokens=32768))
    assert isinstance(teacher, OpenAIEngine) and teacher.model == "teacher"
    assert (teacher.base_url, teacher.concurrency, teacher.max_retries, teacher.backoff) == (
        "http://127.0.0.1:9/v1", 3, 2, 0.5)
    assert teacher.request_timeout(32768) >= 3276  # 32k tokens at 10 tokens/s: a long reply is not cut off
    other = distill.open_teacher(cfg_for("http://127.0.0.1:9", tmp_path, engine="openai",
                                         engine_args={"concurrency": 5, "timeout": 30}))
    assert other.concurrency == 5 and other.request_timeout(32768) == 30  # engine_args reach the engine


def test_traces_without_reasoning_are_not_kept_and_a_teacher_without_choices_is_one_line(tmp_path):
    engine = ScriptedEngine(thinking_tokenizer(), "<answer>7</answer>")  # no </think>: nothing but an answer
    with running(create_app(engine, "teacher", template="native")) as url:
        summary = distill.run_distill(cfg_for(url, tmp_path / "run", keep_wrong=True,
                                              task_args={"digits": 1, "n_train": 4, "n_test": 1}), progress=False)
    assert summary["kept"] == 0 and summary["dropped"] == {"no_reasoning": 4}

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def empty():
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "t", "choices": []})

    with running(app) as url, pytest.raises(ConnectionError, match="no choices"):
        distill.run_distill(cfg_for(url, tmp_path / "other"), progress=False)
