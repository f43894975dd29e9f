import pytest

from r1lab.chat import R1ZERO_INSTRUCTION, prepare_messages, render, split_reasoning
from r1lab.engine.base import Completion, Prompt
from r1lab.rewards import get_reward
from r1lab.rollout import Group


def test_r1zero_is_the_paper_prompt():
    r = render([{"role": "user", "content": "What is 2+3?"}], "r1zero")
    assert r.text == f"{R1ZERO_INSTRUCTION} User: What is 2+3?. Assistant:" and r.prefill == ""


def test_r1_template_prefills_think_and_folds_system():
    r = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}], "r1")
    assert r.text.endswith("<｜User｜>Be brief.\n\n2+3?<｜Assistant｜><think>\n")
    assert r.prefill == "<think>\n"


def test_native_uses_the_tokenizer_template_and_drops_old_reasoning(tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>secret</think>b"},
            {"role": "user", "content": "c"}]
    r = render(msgs, "native", tokenizer)
    assert r.text == "[user]a\n[assistant]b\n[user]c\n[assistant]" and "secret" not in r.text
    z = render([{"role": "user", "content": "q"}], "native-zero", tokenizer, prefill="<think>\n")
    assert R1ZERO_INSTRUCTION in z.text and z.text.endswith("[assistant]<think>\n")


@pytest.mark.parametrize("msgs, match", [
    ([{"role": "robot", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": 3}], "string"),
    ([{"role": "user"}], "role' and 'content'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user"),
    ([{"role": "system", "content": "s"}], "user message"),
])
def test_bad_conversations_are_refused(msgs, match):
    with pytest.raises(ValueError, match=match):
        prepare_messages(msgs)


def test_unknown_template_and_native_without_tokenizer():
    with pytest.raises(ValueError, match="r1zero"):
        render([{"role": "user", "content": "x"}], "chatml")
    with pytest.raises(ValueError, match="chat template"):
        render([{"role": "user", "content": "x"}], "native")


def test_prefilled_think_counts_for_the_format_reward():
    """The trainer scores prefill + generated text, so an R1-template reply that closes its think block is
    well formatted even though the model never wrote the opening tag."""
    generated = "2+3=5</think><answer>5</answer>"
    group = Group(example={"prompt": "2+3?", "answer": "5"}, prompt=Prompt((1,), text="<think>\n", prefill="<think>\n"),
                  completions=[Completion(0, [1, 2], [0.0, 0.0], "stop", text=generated)])
    assert get_reward("format")(group.responses[0]) == 1.0
    assert get_reward("format")(generated) == 0.0


def test_split_reasoning():
    assert split_reasoning("<think>a</think>b") == ("a", "b")
    assert split_reasoning("no tags") == ("", "no tags")
    assert split_reasoning("<think>cut off") == ("cut off", "")
    assert split_reasoning("prefilled reasoning</think>answer") == ("prefilled reasoning", "answer")
