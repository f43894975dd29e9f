"""General prompts for R1's last RL stage (section 2.3.4), where no rule can judge the answer: reward models do.

Examples come from two local sources, so the stage runs on a fresh clone with no network:

- helpfulness: requests made from templates (:func:`helpful_requests`: capitals, unit conversions, sums, antonyms,
  plurals, reversed words, sorting, days in a month), each with a correct, concise reply and a wrong one. The same
  requests give ``r1lab rm --data helpful-procedural`` its preference pairs (:mod:`r1lab.rm.data`).
- harmlessness: the first human turn of each dialogue in the HH-RLHF subset shipped in ``r1lab/data``
  (:data:`HARMLESS_SAMPLE`; its README says where it came from), which holds red-teaming requests by design.

Every example has ``kind: general`` (what a reward spec's ``on: general`` selects), an empty ``answer`` and its
``source`` (helpful or harmless); :meth:`GeneralTask.verify` returns None for all of them, so ``accuracy`` skips
them and only the reward models score them.

Left out: open-ended writing, multi-turn prompts, and languages other than English.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from importlib.resources import files

from r1lab.tasks.base import Task, register_task, seeded_split

#: the shipped HH-RLHF harmlessness pairs (300 lines of ``{chosen, rejected}`` dialogues)
HARMLESS_SAMPLE = files("r1lab") / "data" / "hh_rlhf_harmless_sample.jsonl.gz"

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def hh_turns(dialogue: str) -> list[dict]:
    """An HH-RLHF dialogue (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) as chat messages.

    >>> turns = hh_turns("\\n\\nHuman: Hi there\\n\\nAssistant: Hello!\\n\\nHuman: Bye")
    >>> [m["role"] + ": " + m["content"] for m in turns]
    ['user: Hi there', 'assistant: Hello!', 'user: Bye']
    """
    text = dialogue if dialogue.startswith("\n\n") else "\n\n" + dialogue.lstrip("\n")
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("not an HH-RLHF dialogue: it must start with 'Human:' and hold '\\n\\nHuman: ' / "
                         "'\\n\\nAssistant: ' turns")
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def harmless_prompts() -> list[str]:
    """The first human turn of each shipped HH-RLHF dialogue, once each, in file order."""
    with gzip.open(HARMLESS_SAMPLE, "rt", encoding="utf-8") as f:
        firsts = [hh_turns(json.loads(line)["chosen"])[0]["content"] for line in f if line.strip()]
    return list(dict.fromkeys(p for p in firsts if p))


_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
             "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
             "Greece": "Athens", "Poland": "Warsaw", "Ireland": "Dublin", "Portugal": "Lisbon", "Chile": "Santiago",
             "Austria": "Vienna", "Sweden": "Stockholm", "Australia": "Canberra", "India": "New Delhi",
             "China": "Beijing", "Mexico": "Mexico City", "Cuba": "Havana", "Finland": "Helsinki", "Ghana": "Accra"}
_ANTONYMS = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "light": "dark",
             "open": "closed", "strong": "weak", "full": "empty", "hard": "soft", "rich": "poor", "loud": "quiet",
             "up": "down", "old": "young", "wet": "dry", "high": "low"}
_PLURALS = {"child": "children", "mouse": "mice", "tooth": "teeth", "foot": "feet", "goose": "geese",
            "person": "people", "woman": "women", "man": "men", "cactus": "cacti", "leaf": "leaves",
            "knife": "knives", "wolf": "wolves", "city": "cities", "box": "boxes", "sheep": "sheep", "fish": "fish"}
_DAYS = {"January": 31, "February": 28, "March": 31, "April": 30, "May": 31, "June": 30, "July": 31,
         "August": 31, "September": 30, "October": 31, "November": 30, "December": 31}
_WORDS = ["garden", "planet", "window", "yellow", "bridge", "silver", "pencil", "rocket", "forest", "candle",
          "market", "orange", "button", "dragon", "mirror", "ticket"]


def _capital(rng):
    country, capital = rng.choice(sorted(_CAPITALS.items()))
    wrong = rng.choice(sorted(set(_CAPITALS.values()) - {capital}))
    ask = rng.choice(["What is the capital of {}?", "Which city is the capital of {}?", "Tell me the capital of {}."])
    return ask.format(country), f"The capital of {country} is {capital}.", f"The capital of {country} is {wrong}."


def _kilometres(rng):
    n = rng.randint(2, 95)
    return (f"How many metres are in {n} kilometres?", f"{n} kilometres is {n * 1000} metres.",
            f"{n} kilometres is {n * 100} metres.")


def _sum(rng):
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + rng.choice([-10, 1, 10])}."


def _antonym(rng):
    word, opposite = rng.choice(sorted(_ANTONYMS.items()))
    wrong = rng.choice(sorted(set(_ANTONYMS.values()) - {opposite}))
    return (f"What is the opposite of the word '{word}'?", f"The opposite of '{word}' is '{opposite}'.",
            f"The opposite of '{word}' is '{wrong}'.")


def _plural(rng):
    word, plural = rng.choice(sorted(_PLURALS.items()))
    return (f"What is the plural of '{word}'?", f"The plural of '{word}' is '{plural}'.",
            f"The plural of '{word}' is '{word}z'.")


def _reverse(rng):
    word = rng.choice(_WORDS)
    wrong = word[::-1][1:] + word[-1]
    return (f"Spell the word '{word}' backwards.", f"'{word}' spelled backwards is '{word[::-1]}'.",
            f"'{word}' spelled backwards is '{wrong}'.")


def _sort(rng):
    numbers = rng.sample(range(1, 100), 5)
    wrong = sorted(numbers, reverse=True)
    return (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}.",
            f"From smallest to largest: {', '.join(map(str, sorted(numbers)))}.",
            f"From smallest to largest: {', '.join(map(str, wrong))}.")


def _days(rng):
    month, days = rng.choice(list(_DAYS.items()))
    note = " (29 in a leap year)" if month == "February" else ""
    wrong = 30 if days == 31 else 31
    return (f"How many days are there in {month}?", f"{month} has {days} days{note}.", f"{month} has {wrong} days.")


TEMPLATES = (_capital, _kilometres, _sum, _antonym, _plural, _reverse, _sort, _days)


def helpful_requests(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct templated requests, each ``{prompt, reply, wrong}``: the correct concise reply and a wrong one.

    >>> r = helpful_requests(3, seed=0)
    >>> len(r), sorted(r[0])
    (3, ['prompt', 'reply', 'wrong'])
    """
    rng = random.Random(seed)
    found: dict[str, dict] = {}
    for _ in range(50 * n + 100):
        if len(found) >= n:
            break
        prompt, reply, wrong = rng.choice(TEMPLATES)(rng)
        found.setdefault(prompt, {"prompt": prompt, "reply": reply, "wrong": wrong})
    return list(found.values())


@register_task("general")
class GeneralTask(Task):
    """General prompts (helpful and harmless), judged by reward models only; see the module docstring."""

    name = "general"

    def __init__(self, helpful: int = 200, harmless: int = 200, test_size: int | float = 0.1, seed: int = 0):
        if helpful < 0 or harmless < 0 or helpful + harmless == 0:
            raise ValueError(f"helpful={helpful} and harmless={harmless}: both >= 0 and not both 0")
        prompts = [{"prompt": r["prompt"], "source": "helpful"} for r in helpful_requests(helpful, seed)]
        prompts += [{"prompt": p, "source": "harmless"} for p in harmless_prompts()[:harmless]]
        examples = [{**p, "answer": "", "kind": "general"} for p in prompts]
        train, test = seeded_split(examples, test_size, seed)
        self._splits = {"train": train, "test": test}

    def verify(self, completion: str, **example) -> None:
        """None: no rule judges a general prompt (reward models do).

        >>> GeneralTask(helpful=2, harmless=0, test_size=0).verify("Paris.", prompt="Capital of France?") is None
        True
        """
        return None
