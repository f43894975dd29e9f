"""The judge reward against a fake OpenAI-compatible endpoint: scores parsed, retries with backoff, an on-disk cache,
a bound on requests in flight, and part/on as for reward models."""

import asyncio
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from r1lab.rewards.build import build_rewards
from r1lab.rewards.judge import Judge, JudgeReward, judge_reward, parse_score
from r1lab.tasks import get_task

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from serving import running  # noqa: E402

pytest.importorskip("openai")


def fake_judge(failures=(), delay=0.0, reply=lambda text: "Looks fine.\nScore: 7", gather=0):
    """Answers each new request first with the statuses in ``failures``, then with ``reply(request text)``; records
    every request and the most requests it ever had in flight. With ``gather``, a request is held until that many
    have been in flight at once (a minute at most), then ``delay`` more: whether the client ever reaches
    ``gather`` in flight then does not hang on how fast it sends them."""
    app = FastAPI()
    app.state.seen, app.state.asked, app.state.in_flight, app.state.peak = {}, [], 0, 0

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        text = body["messages"][-1]["content"]
        app.state.asked.append(text)
        n = app.state.seen.get(text, 0)
        app.state.seen[text] = n + 1
        if n < len(failures):
            return JSONResponse({"error": {"message": "busy", "type": "x", "param": None, "code": None}},
                                status_code=failures[n])
        app.state.in_flight += 1
        app.state.peak = max(app.state.peak, app.state.in_flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while app.state.peak < gather and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(delay)
        app.state.in_flight -= 1
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply(text)}}]}

    return app


def make(url, tmp_path, **kw):
    settings = dict(base_url=url + "/v1", model="judge", rubric="Is it helpful?", backoff=0.01,
                    cache=str(tmp_path / "verdicts.jsonl"))
    settings.update(kw)
    return Judge(**settings)


def test_scores_are_parsed_and_mapped_to_0_1_and_an_unreadable_reply_is_none(tmp_path):
    app = fake_judge(reply=lambda text: "no idea" if "mumble" in text else "Score: 10" if "Paris" in text else "Score: 1")
    with running(app) as url:
        reward = JudgeReward(make(url, tmp_path), part="whole")
        assert reward.batch(["Paris.", "Lyon.", "mumble"], [{"prompt": "Capital of France?"}] * 3) == [1.0, 0.0, None]
    assert parse_score("Reasoning...\nScore: 4") == pytest.approx(1 / 3) and parse_score("Score: 0") is None


def test_429_and_5xx_are_retried_with_backoff_and_a_persistent_failure_stops_the_run(tmp_path):
    with running(fake_judge(failures=[429, 503])) as url:
        judge = make(url, tmp_path)
        assert JudgeReward(judge, part="whole")("fine", prompt="q") == pytest.approx(6 / 9)
        assert judge.requests == 3
    with running(fake_judge(failures=[500] * 10)) as url:
        judge = make(url, tmp_path, max_retries=2)
        with pytest.raises(ConnectionError, match="failed after 2 retries"):
            JudgeReward(judge, part="whole")("other", prompt="q")
        assert judge.requests == 3
    with running(fake_judge(failures=[400])) as url:  # the endpoint refuses this one request: cannot judge
        assert JudgeReward(make(url, tmp_path), part="whole")("too long", prompt="q") is None


def test_verdicts_are_cached_on_disk_keyed_by_model_rubric_prompt_and_text(tmp_path):
    app = fake_judge()
    with running(app) as url:
        first = JudgeReward(make(url, tmp_path), part="whole")
        examples = [{"prompt": "q1"}, {"prompt": "q1"}, {"prompt": "q2"}]
        assert first.batch(["a", "a", "a"], examples) == [pytest.approx(6 / 9)] * 3
        assert len(app.state.asked) == 2  # the repeated (prompt, text) is asked once
        again = JudgeReward(make(url, tmp_path), part="whole")  # a new process would read the same file
        assert again.batch(["a"], [{"prompt": "q2"}]) == [pytest.approx(6 / 9)] and len(app.state.asked) == 2
        other_rubric = JudgeReward(make(url, tmp_path, rubric="Is it harmless?"), part="whole")
        other_rubric("a", prompt="q2")
        assert len(app.state.asked) == 3
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 3


def test_requests_in_flight_never_exceed_concurrency(tmp_path):
    app = fake_judge(delay=0.2, gather=3)
    with running(app) as url:
        reward = JudgeReward(make(url, tmp_path, concurrency=3), part="whole")
        assert len(reward.batch([f"reply {i}" for i in range(9)], [{"prompt": "q"}] * 9)) == 9
    assert app.state.peak == 3  # in parallel, and no more than allowed


def test_part_and_on_decide_what_is_sent_and_what_is_skipped(tmp_path):
    app = fake_judge()
    with running(app) as url:
        spec = {"judge": {"base_url": url + "/v1", "model": "judge", "rubric": "r", "backoff": 0.01,
                          "cache": str(tmp_path / "v.jsonl")}, "part": "summary", "on": "general", "weight": 0.5}
        rewards = build_rewards({"helpful": spec}, get_task("general", helpful=2, harmless=0, test_size=0))
        reward, weight = rewards["helpful"]
        response = "<think>\nsecret plan\n</think>\n\nThe answer."
        scores = reward.batch([response, response], [{"prompt": "q", "kind": "general"}, {"prompt": "q", "answer": "5"}])
        assert weight == 0.5 and scores[0] is not None and scores[1] is None
        assert len(app.state.asked) == 1 and "The answer." in app.state.asked[0] and "secret plan" not in app.state.asked[0]
        whole = judge_reward({**spec, "part": "whole"})
        whole(response, prompt="q", kind="general")
        assert "secret plan" in app.state.asked[-1]


def test_a_200_of_another_shape_is_unreadable_not_a_crash(tmp_path):
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        text = body["messages"][-1]["content"]
        if "null" in text:
            return {"id": "c", "object": "chat.completion", "created": 0, "model": "judge",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": None}]}
        if "string" in text:
            return {"id": "c", "choices": "x"}
        return JSONResponse({"choices": []})

    with running(app) as url:
        reward = JudgeReward(make(url, tmp_path), part="whole")
        assert reward.batch(["null message", "string choices", "no choices"], [{"prompt": "q"}] * 3) == [None] * 3


def test_another_endpoint_with_the_same_model_name_is_asked_again(tmp_path):
    first, second = fake_judge(reply=lambda text: "Score: 10"), fake_judge(reply=lambda text: "Score: 1")
    with running(first) as url_a, running(second) as url_b:
        assert JudgeReward(make(url_a, tmp_path), part="whole")("a", prompt="q") == 1.0
        assert JudgeReward(make(url_b, tmp_path), part="whole")("a", prompt="q") == 0.0  # not A's cached verdict
