from types import SimpleNamespace

from r1lab.engine import SamplingParams
from r1lab.serve.terminal import DIM, RESET, chat_loop, reply

from serving import ScriptedEngine, thinking_tokenizer


def test_reply_dims_the_reasoning_and_returns_both_parts():
    engine = ScriptedEngine(thinking_tokenizer(), "hmm, 4.\n</think>\n\nIt is 4.")
    out = []
    reasoning, content = reply(engine, [{"role": "user", "content": "2+2?"}], "native", SamplingParams(max_new_tokens=64),
                               write=out.append)
    assert (reasoning, content) == ("hmm, 4.\n", "It is 4.")
    shown = "".join(out)
    assert shown.startswith(DIM) and RESET in shown and shown.endswith("It is 4.\n")
    assert shown.replace(DIM, "").replace(RESET, "") == "hmm, 4.\n\n\nIt is 4.\n"


def test_chat_loop_keeps_the_conversation_without_old_reasoning(capsys):
    engine = ScriptedEngine(thinking_tokenizer(), "think\n</think>\nfine")
    seen = []
    real = engine.generate

    def spy(prompts, params, on_token=None):
        seen.append(engine.tokenizer.decode(prompts[0]))
        return real(prompts, params, on_token)

    engine.generate = spy
    lines = iter(["hello", "again", ""])
    cfg = SimpleNamespace(model="scripted", template="native", temperature=0.6, top_p=0.95, max_tokens=64,
                          system="Be kind.")
    chat_loop(engine, cfg, read=lambda prompt: next(lines))
    assert len(seen) == 2
    assert "Be kind." in seen[0] and "Be kind." in seen[1]  # the system prompt folded into the first user turn
    assert "[assistant]fine" in seen[1] and "think" not in seen[1].split("[assistant]")[1]
