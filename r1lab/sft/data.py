"""SFT data: chat-formatted JSONL in, ``(prompt_ids, response_ids)`` pairs out (loss on the response only).

A line is one of:

- ``{"messages": [{"role": ..., "content": ...}, ...]}``: the last message is the assistant reply trained on;
  the ones before are its context (R1's rules apply: a system message is folded in, earlier reasoning dropped);
- ``{"prompt": ..., "response": ...}``;
- ``{"prompt": ..., "reasoning": ..., "answer": ...}``: R1's output format, reasoning inside the think block
  and then the readable answer: ``<think>\\nREASONING\\n</think>\\n\\nANSWER``.

The prompt is rendered with the same chat template as the later RL stage, so the model learns the reply for
exactly the context it will see; a template's prefill (R1's ``<think>\\n``) belongs to the prompt and is
taken off the front of the reply. The reply ends with the end-of-sequence token, so the model learns to stop.
"""

from __future__ import annotations

from pathlib import Path

from r1lab.chat import render
from r1lab.packing import common_prefix
from r1lab.tasks.dataset import read_jsonl


def r1_response(reasoning: str, answer: str) -> str:
    """R1's format: the reasoning inside the think block, then the summary a reader sees.

    >>> r1_response("2+3 is 5.", "The answer is 5.")
    '<think>\\n2+3 is 5.\\n</think>\\n\\nThe answer is 5.'
    """
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"


def to_messages(row: dict, where: str) -> list[dict]:
    """One JSONL row as a conversation ending with the assistant reply to learn."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        if messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant reply to train on")
        return [{"role": m.get("role"), "content": str(m.get("content") or "")} for m in messages]
    if "prompt" in row and "response" in row:
        reply = str(row["response"])
    elif {"prompt", "reasoning", "answer"} <= set(row):
        reply = r1_response(str(row["reasoning"]), str(row["answer"]))
    else:
        raise ValueError(f"{where}: expected 'messages', or 'prompt' and 'response', or 'prompt', 'reasoning' and "
                         f"'answer'; the row has {sorted(row)}")
    return [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": reply}]


def load_sft_data(path: str | Path) -> list[list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SFT data at {path}: give a JSONL file (see r1lab.sft.data for its formats), "
                                "or make one with r1lab coldstart")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return [to_messages(row, f"{path}:{n}") for n, row in rows]


def encode(messages: list[dict], template: str, tokenizer) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` of a conversation: the context rendered with ``template`` (prefill
    included), and the last assistant reply without the prefill, then EOS."""
    rendered = render(messages[:-1], template, tokenizer)
    reply = messages[-1]["content"]
    prefill = rendered.prefill
    if prefill and reply.startswith(prefill):
        reply = reply[len(prefill):]
    elif prefill and reply.startswith(prefill.strip()):
        reply = reply[len(prefill.strip()):].lstrip("\n")
    prompt_ids = tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def pack_rows(samples: list[tuple[list[int], list[int]]], row_tokens: int) -> list[list[tuple[list[int], list[int]]]]:
    """``(prompt_ids, response_ids)`` samples grouped into rows for :func:`r1lab.packing.pack_samples`, which
    lays a row's common prompt prefix out once: first-fit by what each sample adds beyond the prefix all of
    ``samples`` share, so no row is longer than ``row_tokens`` (a sample that alone is longer gets its own row).

    >>> pack_rows([([1, 2, 3], [4]), ([1, 2, 5], [6, 7]), ([1, 2, 8], [9])], row_tokens=6)  # 1 2 | 3 4 | 8 9
    [[([1, 2, 5], [6, 7])], [([1, 2, 3], [4]), ([1, 2, 8], [9])]]
    """
    shared = common_prefix([prompt for prompt, _ in samples])
    bins = first_fit([len(p) + len(r) - shared for p, r in samples], row_tokens - shared)
    return [[samples[i] for i in b] for b in bins]


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``capacity`` tokens, longest first (first-fit decreasing); an item
    longer than ``capacity`` gets a bin of its own.

    >>> first_fit([5, 3, 4, 2], capacity=7)
    [[0, 3], [2, 1]]
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins
