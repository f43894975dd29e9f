import os
import signal
import stat
from types import SimpleNamespace

from r1lab.engine import SamplingParams
from r1lab.engine.base import prompt_ids
from r1lab.serve.terminal import DIM, HISTORY_LINES, RESET, chat_loop, load_history, reply, save_history

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


def engine_and_prompts(script="think\n</think>\nfine", **kw):
    """A scripted engine that also keeps each prompt it was asked, decoded."""
    engine = ScriptedEngine(thinking_tokenizer(), script, **kw)
    prompts = []
    real = engine.generate

    def generate(ids, params, on_token=None, stream_ids=None):
        prompts.append(engine.tokenizer.decode(prompt_ids(ids[0])))
        return real(ids, params, on_token)

    engine.generate = generate
    return engine, prompts


def test_chat_loop_keeps_the_conversation_without_old_reasoning(capsys):
    engine, seen = engine_and_prompts()
    lines = iter(["hello", "", "again", "/quit"])  # an empty line is not the end
    cfg = SimpleNamespace(model="scripted", template="native", temperature=0.6, top_p=0.95, max_tokens=64,
                          system="Be kind.")
    chat_loop(engine, cfg, read=lambda prompt: next(lines))
    assert len(seen) == 2
    assert "Be kind." in seen[0] and "Be kind." in seen[1]  # the system prompt folded into the first user turn
    assert "[assistant]fine" in seen[1] and "think" not in seen[1].split("[assistant]")[1]


CFG = SimpleNamespace(model="scripted", template="native", temperature=0.6, top_p=0.95, max_tokens=64, system=None)


def reads(*lines):
    """``read`` for chat_loop: each item in turn, raised if it is an exception."""
    items = iter(lines)

    def read(prompt):
        item = next(items)
        if isinstance(item, BaseException) or isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    return read


def test_ctrl_c_during_a_reply_stops_it_and_the_chat_goes_on_without_that_turn(capsys):
    script = "a long, long line of reasoning\n</think>\nfine"
    engine, prompts = engine_and_prompts(script)
    real = engine.generate
    made = []

    def ctrl_c_after_three_tokens(ids, params, on_token=None):
        if len(prompts) != 1:  # not yet kept: this is the second question
            return real(ids, params, on_token)
        before = engine.tokens_made

        def pressed(prompt, sample, token):  # the second question: Ctrl-C from the terminal, three tokens in
            if engine.tokens_made - before == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return on_token(prompt, sample, token)

        result = real(ids, params, pressed)
        made.append(engine.tokens_made - before)
        return result

    engine.generate = ctrl_c_after_three_tokens
    chat_loop(engine, CFG, read=reads("first", "second", "third", "/quit"))
    assert len(prompts) == 3
    assert "second" not in prompts[2] and "first" in prompts[2] and "[assistant]fine" in prompts[2]
    assert "stopped" in capsys.readouterr().out
    assert made == [3]  # the engine was told to stop at the token where Ctrl-C came, not at the reply's end


def test_ctrl_c_raised_inside_the_engine_drops_only_that_reply(capsys):
    engine, prompts = engine_and_prompts()
    real = engine.generate
    calls = []

    def interrupted_once(ids, params, on_token=None):
        calls.append(ids)
        if len(calls) == 2:  # the second question
            on_token(0, 0, engine.encode("t")[0])
            raise KeyboardInterrupt  # say, a second Ctrl-C during a long prompt
        return real(ids, params, on_token)

    engine.generate = interrupted_once
    chat_loop(engine, CFG, read=reads("one", "two", "three", EOFError))
    assert len(prompts) == 2 and "two" not in prompts[1] and "one" in prompts[1] and "three" in prompts[1]
    assert "stopped" in capsys.readouterr().out


def test_ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_ends_the_chat():
    engine, prompts = engine_and_prompts()
    chat_loop(engine, CFG, read=reads(KeyboardInterrupt, "", "hello", KeyboardInterrupt, EOFError))
    assert len(prompts) == 1 and "hello" in prompts[0]


def test_slash_commands_are_handled_here_and_never_reach_the_model(capsys):
    engine, prompts = engine_and_prompts()
    cfg = SimpleNamespace(**{**vars(CFG), "system": "Be kind."})
    chat_loop(engine, cfg, read=reads("/help", "hello", "/reset", "/what now", "/etc/hosts, what is it?", "/exit",
                                      "never read"))
    shown = capsys.readouterr().out
    assert len(prompts) == 2 and "/help" not in "".join(prompts) and "/what" not in "".join(prompts)
    assert "/etc/hosts, what is it?" in prompts[1] and "hello" not in prompts[1] and "Be kind." in prompts[1]
    assert "/quit" in shown and "unknown command /what" in shown
    chat_loop(engine, cfg, read=reads("/quit", "never read"))
    assert len(prompts) == 2


def test_the_history_is_kept_privately_and_only_its_last_lines(tmp_path):
    folder = tmp_path / "cache" / "chat"
    assert load_history(folder) == []
    save_history(folder, [f"line {i}" for i in range(HISTORY_LINES + 5)])
    assert load_history(folder) == [f"line {i}" for i in range(5, HISTORY_LINES + 5)]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (tmp_path / "a-file").write_text("")
    save_history(tmp_path / "a-file" / "chat", ["x"])  # a history that cannot be written: no error at exit
