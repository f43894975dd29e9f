"""Preference pairs for ``r1lab rm``: a prompt (a conversation that ends with the user), a chosen and a rejected reply.

A JSONL file (or ``.jsonl.gz``), one pair a line, in any of these shapes:

- ``{"prompt": "...", "chosen": "...", "rejected": "..."}``: one user turn and two replies.
- ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``: Anthropic HH-RLHF, two whole dialogues
  that share all but the last assistant turn. The shared part becomes the prompt conversation, the two last turns
  the replies (:func:`split_dialogues`; it splits where the two texts part, so a reply that itself contains
  "Human:" stays whole).
- ``{"prompt": "...", "chosen": [messages], "rejected": [messages]}``: chat-message lists whose last message is
  the assistant's reply, as ``HuggingFaceH4/ultrafeedback_binarized`` (split ``train_prefs``) stores them.

Two sets ship with r1lab (:data:`BUILT_IN_PAIRS`): ``harmless-sample``, 300 HH-RLHF harmlessness pairs, and
``helpful-procedural``, helpfulness pairs made from the templated requests of the ``general`` task: the correct
concise reply is chosen; a refusal, an off-topic reply, a wrong answer or an echo of the question is rejected.

Bringing your own pairs with ``datasets`` (write them as JSONL, then ``r1lab rm --data pairs.jsonl``):

- UltraFeedback (``HuggingFaceH4/ultrafeedback_binarized``, split ``train_prefs``): ``prompt``, ``chosen`` and
  ``rejected`` are already the columns (message lists); write the rows as they are.
- HelpSteer2 (``nvidia/HelpSteer2``): rows are single responses with 0-4 ratings; group them by ``prompt``, and
  for two responses to one prompt make the one with the higher ``helpfulness`` the ``chosen`` and the other the
  ``rejected`` (``response`` holds each reply); drop ties.
- HH-RLHF (``Anthropic/hh-rlhf``, ``data_dir="harmless-base"`` or ``"helpful-base"``): ``chosen`` and
  ``rejected`` as they are.

Left out: ties and graded preferences (margins), and pairs whose two prompts differ (they are refused).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from r1lab.tasks.dataset import read_jsonl
from r1lab.tasks.general import HARMLESS_SAMPLE, helpful_requests, hh_turns

BUILT_IN_PAIRS = ("harmless-sample", "helpful-procedural")
ASSISTANT = "\n\nAssistant:"

REFUSALS = ("I'm sorry, but I can't help with that.", "I am not able to answer that question.",
            "That is not something I can assist with.")


@dataclass
class Pair:
    """One preference: the conversation so far (ending with the user), the preferred reply and the other one."""

    messages: list[dict]
    chosen: str
    rejected: str


def split_dialogues(chosen: str, rejected: str) -> Pair:
    """An HH-RLHF pair of whole dialogues as a :class:`Pair`: the turns they share, then the two last replies.

    >>> p = split_dialogues("\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "\\n\\nHuman: Hi\\n\\nAssistant: Go away.")
    >>> p.messages, p.chosen, p.rejected
    ([{'role': 'user', 'content': 'Hi'}], 'Hello!', 'Go away.')
    """
    same = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        same += 1
    start = chosen.rfind(ASSISTANT, 0, same + 1)  # the last assistant turn that begins before the texts part
    if start < 0:
        raise ValueError("the two dialogues share no 'Human: ... Assistant:' start; an HH-RLHF pair differs only in "
                         "its last assistant turn")
    messages = hh_turns(chosen[:start])
    if messages[-1]["role"] != "user":
        raise ValueError("the shared part of the dialogues does not end with a human turn")
    reply = slice(start + len(ASSISTANT), None)
    return Pair(messages, chosen[reply].strip(), rejected[reply].strip())


def to_pair(row: dict, where: str) -> Pair:
    """One JSONL row as a :class:`Pair`; ``where`` (``file:line``) names it in errors."""
    missing = [key for key in ("chosen", "rejected") if key not in row]
    if missing:
        raise ValueError(f"{where}: no field {' or '.join(map(repr, missing))}; the row has {sorted(row)}. A pair is "
                         "{prompt, chosen, rejected} or HH-RLHF's {chosen, rejected} dialogues")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    try:
        if isinstance(chosen, list) and isinstance(rejected, list):
            return _from_messages(chosen, rejected, prompt)
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ValueError("chosen and rejected must both be strings or both be message lists")
        if prompt is None:
            return split_dialogues(chosen, rejected)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        return Pair([{"role": "user", "content": prompt}], chosen, rejected)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _from_messages(chosen: list, rejected: list, prompt) -> Pair:
    """UltraFeedback's shape: two conversations whose last message is the assistant's reply."""
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if not conversation or not isinstance(conversation[-1], dict) or conversation[-1].get("role") != "assistant":
            raise ValueError(f"{name} is a message list, so its last message must be the assistant's reply")
    messages = [{"role": m["role"], "content": m["content"]} for m in chosen[:-1]]
    if not messages and isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the conversation before the replies must end with a user message")
    return Pair(messages, chosen[-1]["content"], rejected[-1]["content"])


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL or ``.jsonl.gz`` file
    (:func:`r1lab.tasks.dataset.read_jsonl`); a file that is no such text is one clear error."""
    try:
        return read_jsonl(path)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        kind = "gzipped JSONL" if path.suffix == ".gz" else "JSONL"
        raise ValueError(f"{path} cannot be read as {kind} text ({e})") from None


def load_pairs(source: str, seed: int = 0) -> list[Pair]:
    """The pairs of a JSONL(.gz) file, or of a shipped set (:data:`BUILT_IN_PAIRS`), in file order."""
    if source == "helpful-procedural":
        return helpful_pairs(seed=seed)
    path = Path(str(HARMLESS_SAMPLE)) if source == "harmless-sample" else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pair file {path} not found; give a JSONL(.gz) file of {{prompt, chosen, rejected}} "
                                f"or HH-RLHF {{chosen, rejected}} rows, or one of {', '.join(BUILT_IN_PAIRS)}")
    pairs = [to_pair(row, f"{path}:{number}") for number, row in read_rows(path)]
    if not pairs:
        raise ValueError(f"{path} holds no pairs (it is empty); a pair is one JSON object a line")
    return pairs


def helpful_pairs(n: int = 400, seed: int = 0) -> list[Pair]:
    """Helpfulness pairs from :func:`r1lab.tasks.general.helpful_requests`: the correct concise reply is chosen, and
    the rejected one is, in turn, a refusal, another request's reply (off-topic), a wrong answer or an echo.

    >>> [p.rejected for p in helpful_pairs(4, seed=1)][3].startswith("You asked")
    True
    """
    rng = random.Random(seed)
    requests = helpful_requests(n, seed)
    pairs = []
    for i, request in enumerate(requests):
        kind = i % 4
        if kind == 0:
            rejected = rng.choice(REFUSALS)
        elif kind == 1:
            others = [r["reply"] for r in requests if r["reply"] != request["reply"]]
            rejected = rng.choice(others) if others else rng.choice(REFUSALS)
        elif kind == 2:
            rejected = request["wrong"]
        else:
            rejected = f"You asked: {request['prompt']}"
        pairs.append(Pair([{"role": "user", "content": request["prompt"]}], request["reply"], rejected))
    return pairs
