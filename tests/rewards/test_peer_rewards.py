"""The rewards that follow open-r1 and TRL (cosine, repetition, reasoning_steps, code_format, think_format) and the
run's own delimiters (``tags``) for the format rewards: hand-computed values, the peers' own test cases, and each
place where r1lab deliberately differs from its peer."""

import math

import pytest

from r1lab.rewards import NEEDS, REWARDS
from r1lab.rewards.format import TAGS, code_format, delimiters, format_reward, tag_count, think_format
from r1lab.rewards.shaping import cosine, reasoning_steps, repetition


def verify(completion, answer="", **_):
    return 1.0 if completion.strip() == answer else 0.0


def test_registered_with_what_they_need():
    assert {name: NEEDS[name] for name in ("cosine", "repetition", "reasoning_steps")} == {
        "cosine": ("verify", "max_length"), "repetition": (), "reasoning_steps": ()}
    for name, fn in [("format", format_reward), ("tag_count", tag_count), ("code_format", code_format),
                     ("think_format", think_format)]:
        assert REWARDS[name] is fn and NEEDS[name] == ("tags",)
    assert REWARDS["cosine"] is cosine and REWARDS["repetition"] is repetition
    assert REWARDS["reasoning_steps"] is reasoning_steps


# ---- cosine ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, right, wrong", [
    (0, 1.0, -1.0),
    (25, 0.5 + 0.25 * (1 + math.sqrt(0.5)), -0.5 - 0.25 * (1 + math.sqrt(0.5))),  # cos(pi/4) = sqrt(1/2)
    (50, 0.75, -0.75),
    (100, 0.5, -0.5),
    (150, 0.5, -0.5),  # beyond the budget: clamped (open-r1's cos(1.5 pi) would give 0.75 and -0.75)
    (10**6, 0.5, -0.5),
])
def test_cosine_hand_computed(length, right, wrong):
    assert cosine("4", verify=verify, answer="4", completion_length=length, max_length=100) == pytest.approx(right)
    assert cosine("5", verify=verify, answer="4", completion_length=length, max_length=100) == pytest.approx(wrong)


@pytest.mark.parametrize("length, correct, expected", [  # open-r1's tests/test_rewards.py, max_len 100
    (22, True, 0.943), (80, True, 0.547), (22, False, -0.942), (80, False, -0.547)])
def test_cosine_matches_open_r1_published_values(length, correct, expected):
    got = cosine("4" if correct else "5", verify=verify, answer="4", completion_length=length, max_length=100)
    assert got == pytest.approx(expected, abs=1e-3)


def test_cosine_short_right_earns_most_and_short_wrong_is_punished_most():
    scores = {(ok, n): cosine("4" if ok else "5", verify=verify, answer="4", completion_length=n, max_length=1000)
              for ok in (True, False) for n in range(0, 1001, 100)}
    right = [scores[True, n] for n in range(0, 1001, 100)]
    wrong = [scores[False, n] for n in range(0, 1001, 100)]
    assert right == sorted(right, reverse=True) and wrong == sorted(wrong)
    assert min(right) > 0 > max(wrong)


def test_cosine_custom_values_the_papers():
    # Yeo et al.'s own values: right 2 -> 1, wrong -10 -> 0; halfway is the midpoint
    values = dict(min_value_wrong=-10.0, max_value_wrong=0.0, min_value_correct=1.0, max_value_correct=2.0)
    assert cosine("4", verify=verify, answer="4", completion_length=50, max_length=100, **values) == pytest.approx(1.5)
    assert cosine("5", verify=verify, answer="4", completion_length=50, max_length=100, **values) == pytest.approx(-5)
    assert cosine("5", verify=verify, answer="4", completion_length=0, max_length=100, **values) == -10.0


def test_cosine_cannot_judge_without_a_budget_or_a_verdict():
    calls = []

    def spy(completion, **example):
        calls.append(example)
        return None

    assert cosine("4", verify=spy, answer="4", completion_length=10) is None
    assert cosine("4", verify=spy, answer="4", completion_length=10, max_length=None) is None
    assert calls == []  # no budget: the verifier is not even asked
    assert cosine("4", verify=spy, answer="4", prompt="2+2?", completion_length=10, max_length=100) is None
    assert calls == [{"answer": "4", "prompt": "2+2?", "completion_length": 10}]  # what accuracy's verifier sees


def test_cosine_partial_verdict_counts_as_wrong_and_bad_budget_is_an_error():
    half = cosine("x", verify=lambda c, **_: 0.5, completion_length=0, max_length=100)
    assert half == -1.0
    with pytest.raises(ValueError, match="max_length must be positive"):
        cosine("4", verify=verify, answer="4", completion_length=1, max_length=0)


def test_cosine_built_for_a_run_gets_the_tasks_verifier_and_the_budget():
    from r1lab.rewards.build import build_rewards
    from r1lab.tasks import get_task

    task = get_task("arithmetic", n_train=4, n_test=1)
    fn, weight = build_rewards({"cosine": 0.5}, task, max_length=100)["cosine"]
    example = task.examples("train")[0]
    good = f"<think>\nok</think><answer>{example['answer']}</answer>"
    bad = "<think>\nok</think><answer>nothing</answer>"
    assert weight == 0.5
    assert fn(good, completion_length=50, **example) == pytest.approx(0.75)
    assert fn(bad, completion_length=50, **example) == pytest.approx(-0.75)
    assert build_rewards({"cosine": 1.0}, task)["cosine"][0](good, completion_length=5, **example) is None


# ---- repetition --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ngram_size, max_penalty, expected", [  # open-r1's tests/test_rewards.py cases
    ("this is a test sentence", 2, -1.0, 0.0),
    ("this this this this this", 2, -1.0, -0.75),  # 4 bigrams, 1 unique
    ("this is a this is a test", 2, -1.0, -1 / 3),  # 6 bigrams, 4 unique
    ("this is a test", 3, -0.5, 0.0),
    ("test test test test", 3, -0.5, -0.25),  # 2 trigrams, 1 unique
    ("", 2, -1.0, 0.0),
    ("this is a this is a test", 3, -2.0, -0.4),  # 5 trigrams, 4 unique
    ("word", 3, -1.0, 0.0),
    ("two words", 3, -1.0, 0.0),
    ("three different words", 3, -1.0, 0.0),
    ("word word word word", 3, -1.0, -0.5),
    ("one two one two", 3, -1.0, 0.0),
    ("A B C A B", 3, -0.5, 0.0),
    ("A B C A B C", 3, -1.0, -0.25),
    ("A B C A B C E F G A B C A B C", 3, -1.0, -5 / 13),  # 13 trigrams, 8 unique
    ("A B C D E F G H I J K L", 3, -1.0, 0.0),
])
def test_repetition_hand_computed(text, ngram_size, max_penalty, expected):
    assert repetition(text, ngram_size=ngram_size, max_penalty=max_penalty) == pytest.approx(expected)


def test_repetition_defaults_lowercase_whitespace_and_whole_response():
    assert repetition("A B C A B C") == -0.25  # ngram_size 3, max_penalty -1
    assert repetition("This is A Test this IS a test") == repetition("this is a test this is a test")
    assert repetition("a\tb\n\nc  a b\nc") == repetition("a b c a b c") == -0.25
    # the whole response counts, the reasoning and the tags too: <think> yes yes yes yes yes </think><answer>5</answer>
    assert repetition("<think>\nyes yes yes yes yes\n</think><answer>5</answer>") == pytest.approx(-0.4)
    assert repetition("<think>\nyes yes yes yes yes\n</think><answer>5</answer>", max_penalty=0.0) == 0.0


def test_repetition_never_gives_negative_zero():
    assert math.copysign(1.0, repetition("one two three four")) == 1.0


def test_repetition_rejects_a_reward_for_repeating_and_empty_ngrams():
    with pytest.raises(ValueError, match="max_penalty must be 0 or negative .*got 0.5"):
        repetition("a a a a", max_penalty=0.5)
    with pytest.raises(ValueError, match="ngram_size must be at least 1"):
        repetition("a a a a", ngram_size=0)


# ---- reasoning_steps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # open-r1's tests/test_rewards.py cases
    ("Step 1: First step\nStep 2: Second step\nStep 3: Third step", 1.0),
    ("First, we do this.\nSecond, we do that.\nFinally, we conclude.", 1.0),
    ("Step 1: Only step", 1 / 3),
    ("First, we do this.\nFinally, we conclude.", 2 / 3),
    ("Just plain text without any clear steps", 0.0),
    # bullets after a line break, capped at 1, case-sensitive markers
    ("Plan:\n- add\n- carry", 2 / 3),
    ("Plan:\n* add\n* carry\n* write\n* check", 1.0),
    ("- first line is not a bullet here", 0.0),
    ("step 1: first, next, finally,", 0.0),
    ("Step 10: Next, go on.", 2 / 3),
    # numbered lines anywhere: open-r1 (no re.MULTILINE) counts only the very first line's number
    ("1. add", 1 / 3),
    ("<think>\n1. add\n2. carry\n</think>", 2 / 3),
    ("Plan\n1. add\n2. carry\n3. write", 1.0),
])
def test_reasoning_steps_hand_computed(text, expected):
    assert reasoning_steps(text) == pytest.approx(expected)


# ---- code_format -------------------------------------------------------------------------------------------------

PY = ("<think>\nLet's solve this\nStep 1: First step\n</think>\n<answer>\n```python\ndef hello():\n"
      "    print('world')\n```\n</answer>")


@pytest.mark.parametrize("text", [  # open-r1's passing cases, then r1lab's looser whitespace between the blocks
    PY,
    "<think>\nHere's an example:\n```python\nx = 1\n```\nNow the solution:\n</think>\n<answer>\n```python\n"
    "def solution():\n    return 42\n```\n</answer>",
    "<think>\nHere's the analysis\n</think>\n<answer>\n```python\nclass Solution:\n    def __init__(self):\n"
    "        self.value = 42\n        \n    def get_value(self):\n        return self.value\n```\n</answer>",
    "<think>plan</think> <answer>Here:\n```Python title=a.py\nprint(1)\n```\nDone.</answer>",
])
def test_code_format_accepts(text):
    assert code_format(text) == 1.0


@pytest.mark.parametrize("text", [
    # open-r1's failing cases
    "```python\ndef hello():\n    print('world')\n```",
    "<think>Some thinking</think><answer>Just plain text</answer>",
    "<think>Analysis</think><answer>```javascript\nconsole.log('hello');\n```</answer>",
    "<think>Analysis</think><answer>```\ndef hello(): pass\n```</answer>",
    "<answer>```python\ndef hello(): pass\n```</answer><think>Analysis</think>",
    # and r1lab's
    "<think>\n```python\nx = 1\n```\n</think><answer>x is 1</answer>",  # code only in the thinking
    "<think>a</think><answer>```python\nprint(1)</answer>",  # never closed
    "<think>a</think><answer>```python3\nprint(1)\n```</answer>",  # not the word python (open-r1: a prefix, passes)
    "<think>a</think><answer>```python print(1)```</answer>",  # the fence does not end its line
    "<think>a</think><answer>```\nprint(1)\n```python\n</answer>",  # a closing fence is not an opening one
    "<think>a</think><answer>```python\nprint(1)\n```</answer><answer>more</answer>",  # format fails
    "<think>\n</think><answer>```python\nprint(1)\n```</answer>",  # empty reasoning: format fails
])
def test_code_format_rejects(text):
    assert code_format(text) == 0.0


def test_code_format_language_from_the_option_or_the_example():
    js = "<think>\nAnalysis\n</think>\n<answer>\n```javascript\nconsole.log('hello');\n```\n</answer>"
    assert code_format(js, code_language="javascript") == 1.0 and code_format(js) == 0.0
    assert code_format(js, code_language="JavaScript") == 1.0
    assert code_format(PY, code_language="c") == 0.0
    assert code_format(PY, language="en") == 1.0  # the run's natural language is not the code's


def test_the_rewards_options_are_what_a_run_may_set():
    from r1lab.rewards.build import build_rewards, options_of
    from r1lab.tasks import get_task

    assert list(options_of("cosine")) == ["min_value_wrong", "max_value_wrong", "min_value_correct",
                                          "max_value_correct"]
    assert options_of("repetition") == {"ngram_size": 3, "max_penalty": -1.0}
    assert options_of("code_format") == {"code_language": "python"}
    assert options_of("reasoning_steps") == options_of("think_format") == options_of("format") == {}
    task = get_task("arithmetic", n_train=4, n_test=1)
    built = build_rewards({"repetition": 1.0, "code_format": 1.0}, task,
                          args={"repetition": {"ngram_size": 2}, "code_format": {"code_language": "javascript"}})
    js = "<think>\nAnalysis\n</think>\n<answer>\n```javascript\nconsole.log('hello');\n```\n</answer>"
    assert built["repetition"][0]("this this this this this") == -0.75
    assert built["code_format"][0](js) == 1.0 and built["code_format"][0](PY) == 0.0


# ---- think_format ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [  # TRL's tests/test_rewards.py valid cases, then r1lab's
    "<think>This is my reasoning.</think>This is my answer.",
    "<think>\nThis is my reasoning.\n</think>\nThis is my answer.",
    "<think>\nThis is\nmy reasoning.\n</think>\nThis is my answer.",
    "<think>\nThis is <some tag> my reasoning.</think>\nThis is my answer.",
    "<think></think>\nThis is my answer.",
    "<think>a</think>",  # nothing after the thinking
    "<think>a</think></think>b",  # a further closing tag
    "<think>a</think><answer>b</answer>",  # answer tags are just text here
    "\n <think>a</think>b",  # leading whitespace: r1lab allows it, TRL's ^<think> does not
])
def test_think_format_accepts(text):
    assert think_format(text) == 1.0


@pytest.mark.parametrize("text", [  # TRL's tests/test_rewards.py invalid cases
    "<think>\nThis is my reasoning.\nThis is my answer.",
    "<think>This is my reasoning.\nThis is my answer.",
    "This is my reasoning. This is my answer.",
    "This is my reasoning.\nThis is my answer.",
    "This is my reasoning.</think>\nThis is my answer.",
    "This is my reasoning.</think>This is my answer.",
    "This<think>is my reasoning.</think>\nThis is my answer.",
    "<think>This is<think>my reasoning.</think></think>This is my answer.",
    "<think>This is</think>\nmy\n<think>reasoning.</think>\nThis is my answer.",
    "",
])
def test_think_format_rejects(text):
    assert think_format(text) == 0.0


# ---- the run's delimiters ----------------------------------------------------------------------------------------

MIXED = [
    "<think>\n2+3=5</think><answer>5</answer>",
    "<think>a</think><think>b</think><answer>5</answer>",
    "<think>\n2+3=5<answer>5</answer>",
    "<answer>5</answer><think>2+3=5</think>",
    "<think>a</think><answer>5</answer>" + "x" * 100,
    "<think>a</think><answer>```python\nprint(5)\n```</answer>",
    "<think>a</think>5",
    "the answer is 5",
]
FORMAT_REWARDS = [format_reward, tag_count, code_format, think_format]


@pytest.mark.parametrize("fn", FORMAT_REWARDS)
def test_default_tags_change_nothing(fn):
    assert TAGS == {"think": ("<think>", "</think>"), "answer": ("<answer>", "</answer>")}
    for text in MIXED:
        assert fn(text) == fn(text, tags=TAGS) == fn(text, tags={}) == fn(text, tags={"think": ("<think>", "</think>")})


def test_other_delimiters_replace_the_default_ones():
    tags = {"think": ("<reasoning>", "</reasoning>"), "answer": ("<final>", "</final>")}
    ours = "<reasoning>\n2+3=5</reasoning>\n<final>5</final>"
    default = "<think>\n2+3=5</think>\n<answer>5</answer>"
    assert [fn(ours, tags=tags) for fn in FORMAT_REWARDS] == [1.0, 1.0, 0.0, 1.0]
    assert [fn(default, tags=tags) for fn in FORMAT_REWARDS] == [0.0, 0.0, 0.0, 0.0]
    assert [fn(ours) for fn in FORMAT_REWARDS] == [0.0, 0.0, 0.0, 0.0]
    assert code_format("<reasoning>a</reasoning><final>```python\nx=1\n```</final>", tags=tags) == 1.0
    assert tag_count("<reasoning>a</reasoning><final>5</final>" + "y" * 10, tags=tags) == pytest.approx(0.99)
    assert tag_count("<reasoning>a<final>5</final>", tags=tags) == 0.75
    assert format_reward("<reasoning>a</reasoning><final>5</final><final>6</final>", tags=tags) == 0.0


def test_a_key_left_out_keeps_its_default_and_pairs_may_be_lists():
    only_answer = {"answer": ["<final>", "</final>"]}  # a list, as YAML gives it
    text = "<think>\nok</think><final>5</final>"
    assert format_reward(text, tags=only_answer) == tag_count(text, tags=only_answer) == 1.0
    assert think_format("<r>a</r>b", tags={"think": ("<r>", "</r>")}) == 1.0
    assert think_format("<think>a</think>b", tags={"think": ("<r>", "</r>")}) == 0.0
    assert delimiters(only_answer) == ("<think>", "</think>", "<final>", "</final>")


def test_delimiters_are_matched_literally():
    tags = {"think": ("[think]", "[/think]"), "answer": ("(.*)", "(/.*)")}
    assert format_reward("[think]a[/think](.*)5(/.*)", tags=tags) == 1.0
    assert format_reward("[think]a[/think]x5y", tags=tags) == 0.0
    assert tag_count("[think]a[/think](.*)5(/.*)", tags=tags) == 1.0


@pytest.mark.parametrize("tags, problem", [
    ({"think": ("<think>", "")}, "pair of non-empty strings"),
    ({"think": "<think>"}, "pair of non-empty strings"),
    ({"answer": ("<a>", "</a>", "<b>")}, "pair of non-empty strings"),
    ({"answer": ("<think>", "</answer>")}, "must differ"),
])
def test_bad_delimiters_are_an_error(tags, problem):
    for fn in FORMAT_REWARDS:
        with pytest.raises(ValueError, match=problem):
            fn("<think>a</think><answer>5</answer>", tags=tags)


def test_a_run_gives_its_delimiters_to_the_rewards_that_need_them():
    from r1lab.rewards.build import build_rewards
    from r1lab.tasks import get_task

    task = get_task("arithmetic", n_train=4, n_test=1)
    names = {"format": 1.0, "tag_count": 1.0, "code_format": 1.0, "think_format": 1.0}
    tags = {"think": ("<reasoning>", "</reasoning>"), "answer": ("<final>", "</final>")}
    ours = "<reasoning>a</reasoning><final>```python\nx=1\n```</final>"
    default = "<think>a</think><answer>```python\nx=1\n```</answer>"
    built = build_rewards(names, task, tags=tags)
    assert [built[name][0](ours) for name in names] == [1.0, 1.0, 1.0, 1.0]
    assert [built[name][0](default) for name in names] == [0.0, 0.0, 0.0, 0.0]
    built = build_rewards(names, task)
    assert [built[name][0](default) for name in names] == [1.0, 1.0, 1.0, 1.0]
