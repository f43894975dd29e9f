"""A generative judge as a reward: any OpenAI-compatible endpoint grades a response against a rubric.

Where no reward model fits (or to check one), stage 4 can ask a stronger model. In a recipe::

    rewards:
      helpful: {judge: {base_url: http://127.0.0.1:8000/v1, model: judge, rubric: "Is the answer correct, direct
                and useful?", api_key_env: OPENAI_API_KEY}, part: summary, weight: 1.0, on: general}

``part`` and ``on`` mean what they mean for a reward model (:mod:`r1lab.rewards.reward_model`). The judge is
asked (:data:`JUDGE_PROMPT`) for a score from 1 to 10 on the last line; :func:`parse_score` maps it to [0, 1], and
a reply it cannot read is None (skipped, not 0). Requests run ``concurrency`` at a time over a group's responses;
a 429, a 5xx or a dropped connection is retried with exponential backoff (``backoff`` seconds, doubling, at most
``max_retries`` times), after which the run stops with the error. A request the endpoint refuses as such (400,
413, 422: too long, say) is None. Verdicts are cached in a JSONL file (``cache``, default
``$R1LAB_CACHE/judge/verdicts.jsonl``) keyed by a hash of the judge model, rubric, prompt and the judged text, so a
rerun, a resumed run or a repeated response never asks twice.

Left out: pairwise judging (one response against another), several judges voting, and logprob-weighted scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from r1lab.files import append_jsonl, read_log
from r1lab.models import cache_dir
from r1lab.rewards.reward_model import judged

RETRY_STATUS = {408, 409, 429} | set(range(500, 600))  # as r1lab.sft.distill's teacher (a layer above this one)
UNJUDGEABLE_STATUS = {400, 413, 422}  # this request cannot be judged (too long, refused): None, not an error

JUDGE_PROMPT = """You are grading a response of an AI assistant to a user's request.

Rubric:
{rubric}

User's request:
{prompt}

Response:
{response}

Judge the response against the rubric only. End your reply with one line "Score: N", where N is a whole number \
from 1 (fails the rubric) to 10 (meets it fully)."""

_SCORE = re.compile(r"score\W{0,6}(?:is\s*)?(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)


def parse_score(reply: str) -> float | None:
    """The judge's 1-10 score mapped to [0, 1] (1 -> 0.0, 10 -> 1.0): the last ``Score: N`` in the reply, else a
    reply that is only a number; None when there is neither or it is outside 1-10.

    >>> parse_score("Clear and correct.\\nScore: 10"), parse_score("**Score:** 4/10"), parse_score(" 7 ")
    (1.0, 0.3333333333333333, 0.6666666666666666)
    >>> parse_score("I cannot grade this."), parse_score("Score: 11")
    (None, None)
    """
    found = _SCORE.findall(reply)
    text = found[-1] if found else reply.strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return (value - 1) / 9 if 1 <= value <= 10 else None


def verdict_key(model: str, rubric: str, prompt: str, judged: str, base_url: str = "", sampling=()) -> str:
    """The cache key of one verdict: a hash of everything the judge's answer depends on: the endpoint and its
    model, the question put to it (rubric, prompt, reply, our prompt template) and its sampling settings."""
    return hashlib.sha256(json.dumps([model, rubric, prompt, judged, base_url, JUDGE_PROMPT, list(sampling)],
                                     ensure_ascii=False).encode()).hexdigest()


@dataclass
class Judge:
    """An OpenAI-compatible endpoint asked to grade against ``rubric`` (the ``judge:`` mapping of a spec)."""

    base_url: str
    model: str
    rubric: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    backoff: float = 1.0
    max_tokens: int = 1024
    temperature: float = 0.0
    cache: str | None = None  # JSONL of verdicts; None = $R1LAB_CACHE/judge/verdicts.jsonl

    def __post_init__(self):
        import openai

        self.openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "unused",
                                    max_retries=0, timeout=openai.Timeout(max(120.0, self.max_tokens / 10),
                                                                          connect=10.0))
        self.cache_path = Path(self.cache).expanduser() if self.cache else cache_dir() / "judge" / "verdicts.jsonl"
        self.verdicts = {row["key"]: row["score"] for row in read_log(self.cache_path) if "key" in row}
        self.lock = threading.Lock()
        self.requests = 0  # requests sent, retries included

    def ask(self, prompt: str, judged: str) -> float | None:
        """The score of ``judged`` as the reply to ``prompt``: from the cache, else from the endpoint (then cached)."""
        key = verdict_key(self.model, self.rubric, prompt, judged, self.base_url, (self.temperature, self.max_tokens))
        with self.lock:
            if key in self.verdicts:
                return self.verdicts[key]
        reply = self._request(JUDGE_PROMPT.format(rubric=self.rubric, prompt=prompt, response=judged))
        value = None if reply is None else parse_score(reply)
        if value is not None:
            with self.lock:
                self.verdicts[key] = value
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                append_jsonl(self.cache_path, {"key": key, "score": value, "model": self.model, "reply": reply[-500:]})
        return value

    def _request(self, content: str) -> str | None:
        retries = 0
        while True:
            try:
                with self.lock:
                    self.requests += 1
                reply = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": content}], temperature=self.temperature,
                    max_tokens=self.max_tokens)
                try:
                    return reply.choices[0].message.content or ""
                except (AttributeError, IndexError, KeyError, TypeError):  # a 200 of another shape: unreadable
                    return None
            except (self.openai.APIResponseValidationError, ValueError):  # a body that is not the API's JSON
                return None
            except (self.openai.APIConnectionError, self.openai.APITimeoutError, self.openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                if status in UNJUDGEABLE_STATUS:
                    return None
                if (status is not None and status not in RETRY_STATUS) or retries >= self.max_retries:
                    raise ConnectionError(f"the judge {self.model!r} at {self.base_url} failed after {retries} "
                                          f"retries: {type(exc).__name__}: {str(exc)[:300]}") from exc
                time.sleep(self.backoff * 2 ** retries)
                retries += 1


@dataclass
class JudgeReward:
    """A judge reward: ``reward(completion, **example)`` and ``batch(completions, examples)`` (concurrent) agree."""

    judge: Judge
    part: str = "summary"
    on: str | None = None

    def __call__(self, completion: str, **example) -> float | None:
        return self.batch([completion], [example])[0]

    def batch(self, completions: Sequence[str], examples: Sequence[Mapping]) -> list[float | None]:
        todo, asks = judged(completions, examples, self.on, self.part)
        out: list[float | None] = [None] * len(completions)
        if not todo:
            return out
        unique = list(dict.fromkeys(asks))  # a response repeated in the group is asked about once
        with ThreadPoolExecutor(max_workers=min(self.judge.concurrency, len(unique))) as pool:
            verdicts = dict(zip(unique, pool.map(lambda a: self.judge.ask(*a), unique)))
        for i, ask in zip(todo, asks):
            out[i] = verdicts[ask]
        return out


def judge_reward(spec: Mapping) -> JudgeReward:
    """The reward a ``{judge: {...}, part, on, weight}`` spec names (checked by
    :func:`r1lab.config.reward_spec_problems`)."""
    return JudgeReward(Judge(**spec["judge"]), part=spec.get("part", "summary"), on=spec.get("on"))
