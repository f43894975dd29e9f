"""Chat formats for an exported model: the same turns as a Jinja template (GGUF metadata, read by llama.cpp and
transformers) and as a Go template (ollama's Modelfile).

A :class:`TurnFormat` is a chat format as plain text pieces: what comes before and after each turn's content, what
starts the reply. r1lab's own templates (:mod:`r1lab.chat`) are written as one directly; a model's own Jinja
template is read into one by rendering probe conversations (:func:`probe_format`), and kept only when the pieces
reproduce every probe exactly. Both template languages are then generated from the same pieces, so they cannot
drift; :func:`render_format` renders them in Python, which is what the tests compare with :func:`r1lab.chat.render`.

R1's usage rules, as :func:`r1lab.chat.prepare_messages` applies them, are in the generated templates too: system
messages are folded into the first user turn (joined by a blank line) and an assistant turn's think block is not
sent back (the Jinja template drops it; ollama keeps reasoning in its own ``thinking`` field, apart from content).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from r1lab.chat import R1ZERO_INSTRUCTION, THINK_PREFILL, prepare_messages, render


@dataclass(frozen=True)
class TurnFormat:
    """A chat as text: ``begin``, then each message as ``before + content + after`` for its role, then ``reply``
    (with ``add_generation_prompt``). ``system=None``: system messages are folded into the first user turn;
    otherwise a leading system message is rendered ``system_begin + content + system[1]`` in place of ``begin``.
    ``last_user_prefix`` goes before the content of the last message when it is the user's (R1-Zero's instruction
    in ``native-zero``)."""

    begin: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    reply: str
    system: tuple[str, str] | None = None
    last_user_prefix: str = ""
    stop: tuple[str, ...] = ()  # text that ends an assistant turn, besides the end-of-sequence token


def r1lab_format(template: str, tokenizer, prefill: str | None = None) -> TurnFormat | None:
    """The :class:`TurnFormat` of one of r1lab's templates (:data:`r1lab.chat.TEMPLATES`), its reply ending with
    ``prefill`` (``None``: the template's own, as :func:`r1lab.chat.render`). ``None`` for ``native`` when the
    model's template is not a turn format (its Jinja is then exported as it is, with no ollama template)."""
    if template == "r1":
        return TurnFormat(begin="<｜begin▁of▁sentence｜>", user=("<｜User｜>", ""),
                          assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
                          reply="<｜Assistant｜>" + (THINK_PREFILL if prefill is None else prefill),
                          stop=("<｜end▁of▁sentence｜>",))
    if template == "r1zero":
        return TurnFormat(begin=R1ZERO_INSTRUCTION, user=(" User: ", "."), assistant=(" Assistant: ", ""),
                          reply=" Assistant:" + (prefill or ""), stop=(" User:",))
    if template not in ("native", "native-zero"):
        raise ValueError(f"unknown chat template {template!r}")
    fmt = probe_format(tokenizer)
    if fmt is None:
        if template == "native-zero" or prefill:
            raise ValueError(f"template {template}{' with a prefill' if prefill else ''}: the model's chat template "
                             "is not a plain turn-by-turn format r1lab can rewrite; export with --template native")
        return None
    if template == "native-zero":
        fmt = replace(fmt, system=None, last_user_prefix=R1ZERO_INSTRUCTION + "\n\n")
    return replace(fmt, reply=fmt.reply + (prefill or ""))


def render_format(fmt: TurnFormat, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` rendered by ``fmt``, as both generated templates render them."""
    lead = fmt.system is not None and bool(messages) and messages[0]["role"] == "system"
    text = fmt.system[0] + messages[0]["content"] + fmt.system[1] if lead else fmt.begin
    rest = messages[1:] if lead else messages
    system = "\n\n".join(m["content"] for m in rest if m["role"] == "system")
    last = max((i for i, m in enumerate(rest) if m["role"] != "system"), default=-1)
    for i, m in enumerate(rest):
        content = m["content"]
        if m["role"] == "user":
            if system:
                content, system = f"{system}\n\n{content}", ""
            if i == last:
                content = fmt.last_user_prefix + content
            text += fmt.user[0] + content + fmt.user[1]
        elif m["role"] == "assistant":
            if "</think>" in content:
                content = content.split("</think>")[-1].strip()
            text += fmt.assistant[0] + content + fmt.assistant[1]
    if add_generation_prompt and last >= 0 and rest[last]["role"] != "assistant":
        text += fmt.reply
    return text


def probe_format(tokenizer) -> TurnFormat | None:
    """Read a model's Jinja chat template into a :class:`TurnFormat` by rendering probe conversations, or ``None``
    when its output is not ``begin + turns + reply`` (a template that numbers turns, adds dates, or needs tools).

    Where one turn ends and the next begins is not visible in the text; where the user turn's ending also starts
    the text between an assistant turn and the next user turn, the assistant turn is taken to end the same way
    (ChatML's ``<|im_end|>\\n``, which is then a stop string too)."""
    roles = {"s": "system", "u": "user", "a": "assistant"}

    def messages(*turns):
        return [{"role": roles[t[0]], "content": f"r1labprobe{t}"} for t in turns]

    def chat(*turns, generation=False):
        return tokenizer.apply_chat_template(messages(*turns), tokenize=False, add_generation_prompt=generation)

    try:
        one, one_open = chat("u1"), chat("u1", generation=True)
        pre, user_after = _pieces(one, "r1labprobeu1")
        markers = (f"r1labprobe{t}" for t in ("u1", "a1", "u2"))
        between_ua, between_au, tail = _pieces(chat("u1", "a1", "u2"), *markers)[1:]
    except Exception:  # a template that cannot render these (or repeats a content) is not a turn format
        return None
    if not (one_open.startswith(one) and between_ua.startswith(user_after) and tail == user_after):
        return None
    natural = between_au.startswith(user_after) and pre.endswith(between_au[len(user_after):])
    cut = len(user_after) if natural else next(k for k in range(len(between_au) + 1) if pre.endswith(between_au[k:]))
    user_before = between_au[cut:]
    fmt = TurnFormat(begin=pre[:len(pre) - len(user_before)], user=(user_before, user_after),
                     assistant=(between_ua[len(user_after):], between_au[:cut]), reply=one_open[len(one):],
                     stop=(user_after.strip(),) if natural and user_after.strip() else ())
    try:
        sys_pre, sys_between, _ = _pieces(chat("s0", "u1"), "r1labprobes0", "r1labprobeu1")
        if sys_between.endswith(user_before):
            fmt = replace(fmt, system=(sys_pre, sys_between[:len(sys_between) - len(user_before)]))
    except Exception:
        pass  # no system role: system messages are folded into the first user turn
    probes = [("u1",), ("u1", "a1", "u2"), ("u1", "a1", "u2", "a2", "u3"), ("s0", "u1"), ("s0", "u1", "a1", "u2")]
    for turns, generation in [(turns, g) for turns in probes for g in (False, True)] + [(("u1", "a1"), False)]:
        try:
            expected = chat(*turns, generation=generation)
        except Exception:
            return None
        if render_format(fmt, messages(*turns), generation) != expected:
            return None
    return fmt


def _pieces(text: str, *markers: str) -> list[str]:
    """``text`` cut at each marker in order: the len(markers) + 1 pieces between them."""
    pieces = []
    for marker in markers:
        head, sep, text = text.partition(marker)
        if not sep or marker in text:
            raise ValueError(f"{marker} is not in the rendered text exactly once")
        pieces.append(head)
    return pieces + [text]


def jinja_template(fmt: TurnFormat) -> str:
    """``fmt`` as a Jinja chat template (``messages``, ``add_generation_prompt``), as llama.cpp and transformers
    render them. An assistant turn's reasoning (up to the last ``</think>``) is dropped, as R1 advises."""
    q = _jinja_string
    if fmt.system is not None:
        head = ("{%- set lead = messages | length > 0 and messages[0]['role'] == 'system' -%}\n"
                f"{{%- if lead -%}}{{{{- {q(fmt.system[0])} + messages[0]['content'] + {q(fmt.system[1])} -}}}}"
                f"{{%- else -%}}{{{{- {q(fmt.begin)} -}}}}{{%- endif -%}}\n"
                "{%- set rest = messages[1:] if lead else messages -%}\n")
    else:
        head = f"{{{{- {q(fmt.begin)} -}}}}\n{{%- set rest = messages -%}}\n"
    return head + (
        "{%- set ns = namespace(system='', last=-1) -%}\n"
        "{%- for message in rest -%}\n"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message['content'] -%}\n"
        "{%- else -%}{%- set ns.last = loop.index0 -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- for message in rest -%}\n"
        "{%- set content = message['content'] -%}\n"
        "{%- if message['role'] == 'user' -%}\n"
        "{%- if ns.system -%}{%- set content = ns.system + '\\n\\n' + content -%}{%- set ns.system = '' -%}"
        "{%- endif -%}\n"
        + (f"{{%- if loop.index0 == ns.last -%}}{{%- set content = {q(fmt.last_user_prefix)} + content -%}}"
           "{%- endif -%}\n" if fmt.last_user_prefix else "")
        + f"{{{{- {_concat(fmt.user[0], 'content', fmt.user[1])} -}}}}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] | trim -%}{%- endif -%}\n"
        + f"{{{{- {_concat(fmt.assistant[0], 'content', fmt.assistant[1])} -}}}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt and ns.last >= 0 and rest[ns.last]['role'] != 'assistant' -%}"
        f"{{{{- {q(fmt.reply)} -}}}}{{%- endif -%}}\n")


def _jinja_string(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON escapes are Jinja's too)."""
    return json.dumps(text, ensure_ascii=False)


def _concat(before: str, name: str, after: str) -> str:
    """The Jinja expression ``before + name + after``, without empty strings."""
    return " + ".join([*([_jinja_string(before)] if before else []), name, *([_jinja_string(after)] if after else [])])


def go_template(fmt: TurnFormat) -> str:
    """``fmt`` as an ollama (Go ``text/template``) TEMPLATE over ``.Messages``. Every literal is a Go string constant
    (``{{ "..." }}``) and every line starts by trimming, so no whitespace of the template itself reaches the
    prompt."""
    q = _go_string
    lines = ['{{- $system := "" }}{{- $messages := .Messages }}']
    if fmt.system is not None:
        lines.append('{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
                     f'{q(fmt.system[0])}{{{{ (index .Messages 0).Content }}}}{q(fmt.system[1])}'
                     '{{- $messages = slice .Messages 1 }}{{- else }}' + q(fmt.begin) + '{{- end }}')
    elif fmt.begin:
        lines.append("{{- " + json.dumps(fmt.begin, ensure_ascii=False) + " }}")
    last_user = f'{{{{- if $last }}}}{q(fmt.last_user_prefix)}{{{{- end }}}}' if fmt.last_user_prefix else ""
    lines += [
        '{{- range $messages }}{{- if eq .Role "system" }}{{- if $system }}'
        '{{- $system = print $system "\\n\\n" .Content }}{{- else }}{{- $system = .Content }}{{- end }}{{- end }}'
        '{{- end }}',
        '{{- range $i, $_ := $messages }}{{- $last := eq (len (slice $messages $i)) 1 }}',
        f'{{{{- if eq .Role "user" }}}}{q(fmt.user[0])}{last_user}{{{{- if $system }}}}{{{{ $system }}}}'
        f'{q(chr(10) * 2)}{{{{- $system = "" }}}}{{{{- end }}}}{{{{ .Content }}}}{q(fmt.user[1])}',
        f'{{{{- else if eq .Role "assistant" }}}}{q(fmt.assistant[0])}{{{{ .Content }}}}{q(fmt.assistant[1])}',
        '{{- end }}',
        f'{{{{- if and $last (ne .Role "assistant") (ne .Role "system") }}}}{q(fmt.reply)}{{{{- end }}}}',
        '{{- end }}',
    ]
    return "\n".join(lines)


def _go_string(text: str) -> str:
    """``{{ "text" }}``, or nothing for empty text (JSON string escapes are Go's too)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def modelfile(gguf_name: str, template: str | None, stops: list[str], temperature: float, top_p: float,
              source: str) -> str:
    """An ollama Modelfile for ``gguf_name`` (beside it). Without ``template`` ollama takes the chat template from
    the GGUF's metadata."""
    lines = [f"# r1lab export of {source}", "# ollama create NAME -f Modelfile  (from this folder)",
             f"FROM ./{gguf_name}"]
    if template is not None:
        if '"""' in template:
            raise ValueError('the ollama template holds """, which a Modelfile cannot quote')
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# no TEMPLATE: the model's chat template is not a turn-by-turn format r1lab can translate; "
                     "ollama reads tokenizer.chat_template from the GGUF")
    lines += [f"PARAMETER temperature {temperature}", f"PARAMETER top_p {top_p}"]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"


def rendered_check(fmt: TurnFormat, template: str, tokenizer, prefill: str | None = None) -> None:
    """Raise unless ``fmt`` renders what :func:`r1lab.chat.render` does for ``template`` (a single turn, and a
    conversation with a system prompt and earlier reasoning)."""
    chats = [[{"role": "user", "content": "What is 2+3?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "<think>\nhello\n</think>\n\nHello!"},
              {"role": "user", "content": "What is 7*6?"}]]
    for chat in chats:
        expected = render(chat, template, tokenizer, prefill=prefill).text
        got = render_format(fmt, prepare_messages(chat))
        if got != expected:
            raise ValueError(f"template {template}: the exported chat template renders {got!r} where r1lab renders "
                             f"{expected!r}")
