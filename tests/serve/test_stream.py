import random

import pytest

from r1lab.chat import ReasoningSplitter, split_reasoning
from r1lab.serve.stream import TextStream

from conftest import make_tokenizer

CASES = [
    ("Let me see. 2+2=4.\n</think>\n\nThe answer is 4.", True),
    ("<think>\nhmm</think>It is 5", False),
    ("No thinking here, just an answer </think> with a stray tag", False),
    ("cut off while still thinking </thi", True),
    ("a < b and </ is not a tag </think>done", True),
]


@pytest.mark.parametrize("text, thinking", CASES)
def test_any_chunking_gives_the_same_split_as_the_whole_text(text, thinking):
    whole = split_reasoning(text, thinking)
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(8, len(text) - 1))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        splitter = ReasoningSplitter(thinking)
        out = [splitter.feed(p) for p in pieces] + [splitter.finish()]
        assert ("".join(r for r, _ in out), "".join(c for _, c in out)) == whole
    for i in range(len(text) + 1):  # every single split point, the </think> tag cut included
        splitter = ReasoningSplitter(thinking)
        out = [splitter.feed(text[:i]), splitter.feed(text[i:]), splitter.finish()]
        assert ("".join(r for r, _ in out), "".join(c for _, c in out)) == whole


def test_split_results():
    assert split_reasoning(CASES[0][0], True) == ("Let me see. 2+2=4.\n", "The answer is 4.")
    assert split_reasoning(CASES[2][0], False) == ("", CASES[2][0])  # no opening tag: all content
    assert split_reasoning(CASES[3][0], True) == (CASES[3][0], "")  # never closed: all reasoning
    assert split_reasoning(CASES[4][0], True) == ("a < b and </ is not a tag ", "done")


def test_text_stream_holds_back_a_possible_stop_string_and_cuts_at_it():
    tok = make_tokenizer()
    stream = TextStream(tok, stop=("STOP",))
    out = [stream.push(t) for t in tok("ab STO", add_special_tokens=False)["input_ids"]]
    assert "".join(out) == "ab "  # "STO" might become "STOP": held back
    out += [stream.push(t) for t in tok("P and more", add_special_tokens=False)["input_ids"]]
    assert "".join(out) + stream.finish() == "ab " and stream.stopped


def test_text_stream_gives_back_held_text_that_was_not_a_stop():
    tok = make_tokenizer()
    stream = TextStream(tok, stop=("STOP",))
    out = [stream.push(t) for t in tok("ST", add_special_tokens=False)["input_ids"]]
    assert "".join(out) == "" and stream.finish() == "ST"
