"""Any OpenAI-compatible endpoint as an engine: DeepSeek's API, a vLLM or SGLang server, llama.cpp's server
(a quantized GGUF), ollama, or ``r1lab serve``.

``--engine openai --base-url http://127.0.0.1:8080/v1 --model NAME``. The model is the endpoint's: r1lab sends
text and reads text back through the official ``openai`` client. What that gives and what it does not:

- **Chat API** (``api: chat``, the default): the conversation is sent after R1's rules (system prompt folded in,
  old reasoning dropped) and the *server* applies its own chat template, so ``template`` is not used and a
  prefill cannot be forced (one is refused). Where the server splits the reasoning off (``reasoning_content``, or
  ``reasoning``), the completion's text is put back in R1's form, ``<think>\\n{reasoning}\\n</think>\\n\\n{content}``
  (``<think>\\n{reasoning}``, unclosed, when the reply was cut at the length limit before any content); where it
  does not, the text is the server's, with ``<think>\\n`` put before a ``</think>`` the server's template opened.
- **Completions API** (``api: completions``, needs ``tokenizer``): the prompt is rendered here exactly as a local
  engine renders it (:func:`r1lab.engine.base.render_prompt`: ``template``, ``prefill``) and its text sent to
  ``/v1/completions`` (less a leading BOS where the tokenizer adds its own: the server encodes the text with special
  tokens); bare token ids go as OpenAI's token-array prompt (vLLM takes it; not every server does).
- **Stop strings** are sent. OpenAI's ``stop`` leaves out the string it stopped at; where a caller keeps it
  (``include_stop_str_in_output``) it is put back from the reply's ``stop_reason`` (vLLM) or ``matched_stop``
  (SGLang). A server that names neither (llama.cpp, ollama, OpenAI, ``r1lab serve``) cannot tell a stop string from
  the end of text: after its first reply shows that, the request is asked again without them and the strings to
  keep are cut here, from then on (it then generates past them, up to ``max_new_tokens``).
- **One request per sample** (``n=1``: many servers, llama.cpp's among them, do not take a larger ``n``),
  ``concurrency`` of them in flight on daemon threads. A 408, 409, 429, 5xx or a dropped connection is retried after
  ``backoff`` seconds, doubling, at most ``max_retries`` times; every retry is counted in the completion's
  ``usage`` with the server's token counts and its own finish reason. A request may take ``timeout`` seconds
  (default: its ``max_new_tokens`` at a slow 10 tokens a second, at least 600 s), since a reply that is not
  streamed sends nothing until it is done; a connection must open within 10 s.
- **Seeds**: with ``params.seed`` set, sample j of the prompt keyed k (``stream_ids``, else its place in the call)
  is sent the seed :func:`sample_seed` (seed, k, j), so samples differ and repeat where the server honours a
  seed. vLLM and llama.cpp's server do (per request); ``r1lab serve`` does too, but runs requests with different
  seeds in separate batches; ollama passes it to llama.cpp; OpenAI calls it best effort; DeepSeek's reasoner
  ignores sampling settings. ``top_k`` (not OpenAI's) is sent only when set, as are ``stop_token_ids`` and
  ``ignore_eos`` (vLLM's and SGLang's): a server that does not know one may refuse the request (``r1lab serve``
  takes ``top_k`` alone). ``extra_body`` adds a server's own fields to every
  request: llama-cpp-python's server applies ``repeat_penalty`` 1.1 unless told otherwise, so its temperature 0
  is not the model's greedy choice until ``extra_body: {repeat_penalty: 1.0}`` (ollama's default is 1.1 too: set
  it in the Modelfile). ``benchmarks/openai_vs_local.py`` measures both against r1lab's own engine. The reply
  budget goes as ``max_tokens``; OpenAI's reasoning models take only ``max_completion_tokens``
  (``max_tokens_field: max_completion_tokens``).
- **Finish reasons** map to "stop" or "length"; anything else the server says (``content_filter``,
  ``tool_calls``) counts as "stop", the server's own word kept in ``usage["finish_reason"]``.
- **Tokens and log-probs.** ``token_ids`` are the text encoded with ``tokenizer`` (a hub id, folder, .gguf or
  ``smollm2-135m``; ``[]`` without one), not necessarily the tokens the server sampled. Log-probs are asked for
  only with ``logprobs: true`` and are then the server's, of its own tokens, as it defines them (some servers
  temper them, some do not); an endpoint that returns none is refused. GRPO needs log-probs that match the
  trainer's tokens and weights it can update, so the registry refuses this engine for training; evaluation
  (pass@k, cons@k), rejection sampling and distillation need none.
- **Not streamed.** ``on_token`` sees each reply's tokens (with a tokenizer) once the whole reply is back;
  returning False there cuts the completion at that token ("abort") but cannot stop a request already answered.
- **Ctrl-C** (a KeyboardInterrupt in the calling thread) returns at once: nothing more is sent, and requests in
  flight are abandoned, not awaited (their daemon threads never hold up the exit). :meth:`OpenAIEngine.each`
  hands back each prompt's samples as soon as they are all in, so a caller can save them before the rest.

The endpoint cannot take a trainer's weights (:meth:`OpenAIEngine.load_weights` says so) and has no memory here to
give back (``sleep`` and ``wake_up`` do nothing); its context length is unknown (None). The API key is read from
the environment variable ``api_key_env`` ("unused" when unset, for local servers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from r1lab.chat import CLOSE, OPEN, prepare_messages, with_zero_instruction
from r1lab.console import log
from r1lab.engine.base import Completion, OnToken, Prompt, SamplingParams, Weights, render_prompt
from r1lab.engine.transcript import cut_at_stop
from r1lab.models import load_tokenizer

#: the ``engine_args`` of ``--engine openai`` (:class:`OpenAIEngine`'s options)
OPENAI_ARGS = ("base_url", "api_key_env", "concurrency", "max_retries", "backoff", "timeout", "api", "tokenizer",
               "logprobs", "extra_body", "max_tokens_field")
#: what the reply budget is called in a request: OpenAI's reasoning models take only the second
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
APIS = ("chat", "completions")
#: the templates a chat API can honour (the server applies the model's own; native-zero adds the instruction)
CHAT_API_TEMPLATES = ("native", "native-zero")
#: answers worth asking again: timeout, conflict, rate limit, and every server error
RETRY_STATUS = frozenset({408, 409, 429} | set(range(500, 600)))
#: seconds a connection may take to open (a dead host fails fast; a long reply is the read timeout's business)
CONNECT_TIMEOUT = 10.0
#: request fields the engine sets itself: ``extra_body`` may not override them
RESERVED_FIELDS = frozenset({"model", "messages", "prompt", "n", "stream", "temperature", "top_p", "max_tokens",
                             "max_completion_tokens", "stop", "seed", "logprobs"})
#: requests in flight at once unless ``concurrency`` says otherwise
DEFAULT_CONCURRENCY = 8


class Abandoned(Exception):
    """A request given up because its caller stopped waiting (Ctrl-C, or an iterator closed)."""


class OpenAIEngine:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = DEFAULT_CONCURRENCY, max_retries: int = 5, backoff: float = 1.0,
                 timeout: float | None = None,
                 api: str = "chat", tokenizer: str | None = None, logprobs: bool = False,
                 extra_body: dict | None = None, max_tokens_field: str = "max_tokens"):
        """``model``: the name the endpoint serves; ``base_url``: its API root (usually ending in ``/v1``).
        The other options are described in the module docstring."""
        problems = option_problems(base_url, concurrency, max_retries, backoff, timeout, api, tokenizer, logprobs,
                                   extra_body, api_key_env, max_tokens_field)
        if problems:
            raise ValueError("engine openai: " + "; ".join(problems))
        try:
            import openai
        except ImportError as e:
            raise ValueError(f"an OpenAI-compatible endpoint is asked through the openai package, which does not "
                             f"import here ({e}); pip install openai") from None
        self.openai = openai
        self.model, self.base_url, self.api, self.api_key_env = model, base_url, api, api_key_env
        self.concurrency, self.max_retries, self.backoff, self.timeout = concurrency, max_retries, backoff, timeout
        self.logprobs = bool(logprobs)
        self.extra_body = dict(extra_body or {})
        self.max_tokens_field = max_tokens_field
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused",
                                    max_retries=0, timeout=openai.Timeout(600.0, connect=CONNECT_TIMEOUT))
        #: whether the server says which stop string ended a reply (vLLM's ``stop_reason``, SGLang's
        #: ``matched_stop``), so a kept one can be put back; None until a reply shows it
        self.names_stop: bool | None = None
        #: the tokenizer prompts are rendered (completions API) and replies encoded with; None: text only
        self.tokenizer = load_tokenizer(tokenizer) if tokenizer else None
        #: prompt + reply tokens the endpoint's model attends to, where its model card says (vLLM's and r1lab
        #: serve's ``max_model_len``); None: unknown, replies are not cut to it here
        self.context_length = self._served_context()

    @staticmethod
    def check_args(args: dict, template: str | None = None, prefill: str | None = None) -> None:
        """Refuse, before anything runs, options the engine does not take or cannot use, and (with the chat API) a
        ``template`` or ``prefill`` the server's own template cannot honour (:func:`chat_api_problem`)."""
        unknown = sorted(set(args) - set(OPENAI_ARGS))
        if unknown:
            raise ValueError(f"engine_args: engine 'openai' takes no {', '.join(map(repr, unknown))}; it takes "
                             f"{', '.join(OPENAI_ARGS)}")
        problems = option_problems(**args)
        if args.get("api", "chat") == "chat" and template is not None:
            problems += [chat_api_problem(template, prefill) or ""]
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("engine openai: " + "; ".join(problems))

    def _served_context(self) -> int | None:
        """``max_model_len`` from the endpoint's card for this model (``GET /models``), where it gives one; a server
        that does not answer in a few seconds, or says nothing of it, leaves it unknown."""
        try:
            models = self.client.models.list(timeout=self.openai.Timeout(5.0, connect=min(5.0, CONNECT_TIMEOUT)))
            for card in getattr(models, "data", None) or []:
                length = (card.model_extra or {}).get("max_model_len")
                if card.id == self.model and isinstance(length, int) and length > 0:
                    return length
        except Exception:  # noqa: BLE001  (a card is a courtesy: any failure means unknown)
            return None
        return None

    @classmethod
    def open(cls, model: str, args: dict, threads: int, device, dtype) -> OpenAIEngine:
        """``--engine openai``: ``args`` are :data:`OPENAI_ARGS`; threads, device and dtype are the server's."""
        return cls(model, **args)

    def prompt(self, messages: list[dict], template: str, prefill: str | None = None) -> Prompt:
        """Chat API: the conversation after R1's rules, for the server to render with its own template (so
        ``template`` is not used, and a ``prefill`` is refused). Completions API: rendered here with ``template``."""
        if self.api == "completions":
            return render_prompt(self.tokenizer, messages, template, prefill)
        problem = chat_api_problem(template, prefill)
        if problem:
            raise ValueError(problem)
        prepared = prepare_messages(messages)
        prepared = tuple(with_zero_instruction(prepared) if template == "native-zero" else prepared)
        return Prompt(token_ids=(), messages=prepared, text=json.dumps(list(prepared), ensure_ascii=False))

    def _server_text(self, text: str) -> str:
        """A prompt rendered here, as the completions API takes it: without the template's leading BOS where the
        tokenizer adds one itself (a server encodes the text with special tokens, so it would begin with two)."""
        tok = self.tokenizer
        bos = getattr(tok, "bos_token", None)
        if not bos or not text.startswith(bos):
            return text
        ids = tok("a")["input_ids"]
        return text[len(bos):] if ids and ids[0] == tok.bos_token_id else text

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"the endpoint {self.base_url} sends text, and r1lab has no tokenizer for "
                             f"{self.model!r} to count its tokens with: give the engine arg tokenizer (a hub id, "
                             "folder, .gguf or smollm2-135m)")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def load_weights(self, weights: Weights) -> None:
        raise ValueError(f"the endpoint {self.base_url} serves its own model and cannot take trained weights: sample "
                         "for training with --engine torch or vllm")

    def sleep(self) -> None:
        """Nothing to give back: the model lives in the server."""

    def wake_up(self) -> None:
        """Nothing to take back (see :meth:`sleep`)."""

    def close(self) -> None:
        """Close the client's connections; a request still in flight on an abandoned thread fails quietly."""
        self.client.close()

    def generate(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """``params.n`` completions per prompt, one request each (see the module docstring); result[i] holds
        prompt i's. ``stream_ids`` key the samples' seeds."""
        results: list[list[Completion]] = [[] for _ in prompts]
        for i, completions in self.each(prompts, params, on_token, stream_ids):
            results[i] = completions
        return results

    def each(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
             on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None
             ) -> Iterator[tuple[int, list[Completion]]]:
        """``(i, prompt i's params.n completions)`` as soon as all of them are back, in the order prompts finish.
        On an error nothing more is sent, what is in flight still comes back, then the first error is raised.
        Stop iterating (Ctrl-C, ``close()``) and nothing more is sent, nothing in flight awaited."""
        bodies = [self._body(p, params) for p in prompts]
        keys = list(range(len(prompts))) if stream_ids is None else [int(k) for k in stream_ids]
        if len(keys) != len(prompts) or (keys and min(keys) < 0):
            raise ValueError(f"stream_ids: give one key >= 0 per prompt ({len(prompts)}), got {len(keys)}")
        requests = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        stopped = threading.Event()
        timeout = self.openai.Timeout(self.request_timeout(params.max_new_tokens), connect=CONNECT_TIMEOUT)

        def ask(request: tuple[int, int]) -> Completion:
            i, j = request
            seed = None if params.seed is None else sample_seed(params.seed, keys[i], j)
            kept = params.stop if params.include_stop_str_in_output else ()
            body = {**bodies[i], **({} if seed is None else {"seed": seed})}
            if kept and self.names_stop is False:  # it would not say which it matched: cut them here
                body.pop("stop", None)
            return self._ask(i, body, timeout, stopped, kept)

        samples: dict[int, list[Completion | None]] = {}
        replies = run_all(ask, requests, self.concurrency, stopped)
        try:
            for (i, j), completion in replies:
                group = samples.setdefault(i, [None] * params.n)
                group[j] = _seen(completion, j, on_token, self.tokenizer) if on_token else completion
                if all(c is not None for c in group):
                    yield i, samples.pop(i)
        finally:
            replies.close()  # the caller stopped early: nothing more is sent

    def request_timeout(self, max_new_tokens: int) -> float:
        """Seconds one request may take: ``timeout``, else ``max_new_tokens`` at 10 tokens a second (at least
        the client's usual 600 s), since a reply that is not streamed sends nothing until it is done."""
        return float(self.timeout) if self.timeout else max(600.0, max_new_tokens / 10)

    def _body(self, prompt: Prompt | Sequence[int], params: SamplingParams) -> dict:
        """The request for one sample of ``prompt``, but its seed."""
        body: dict = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                      "max_tokens": params.max_new_tokens}
        if self.api == "chat":
            if not isinstance(prompt, Prompt) or not prompt.messages:
                raise ValueError("an endpoint's chat API takes the conversation: make each prompt with "
                                 "engine.prompt(messages, template), not token ids")
            body["messages"] = list(prompt.messages)
        else:
            body["prompt"] = self._server_text(prompt.text) if isinstance(prompt, Prompt) else [int(t) for t in prompt]
        if params.stop:  # kept ones (include_stop_str_in_output) are put back from the reply: _completion
            body["stop"] = list(params.stop)
        if self.logprobs:
            body["logprobs"] = True if self.api == "chat" else 1
        extra = {"top_k": params.top_k, "stop_token_ids": list(params.stop_token_ids), "ignore_eos": params.ignore_eos}
        if self.max_tokens_field != "max_tokens":  # sent as a server field: older openai clients lack the argument
            extra[self.max_tokens_field] = body.pop("max_tokens")
        extra = {**self.extra_body, **{key: value for key, value in extra.items() if value}}  # not OpenAI's fields
        if extra:
            body["extra_body"] = extra
        return body

    def _ask(self, index: int, body: dict, timeout, stopped: threading.Event, stop: Sequence[str] = ()) -> Completion:
        """One request, retried on the statuses of :data:`RETRY_STATUS` and on connection errors; ``stop``: stop
        strings the reply keeps (put back from the server's word where ``body`` sent them, else cut at here).
        A reply that stopped without saying at what is asked again once without them (:class:`_UnnamedStop`)."""
        create = self.client.chat.completions.create if self.api == "chat" else self.client.completions.create
        retries = 0
        while True:
            try:
                reply = create(**body, timeout=timeout)
            except (self.openai.APIConnectionError, self.openai.APITimeoutError, self.openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                if (status is not None and status not in RETRY_STATUS) or retries >= self.max_retries:
                    raise ConnectionError(self._failure(exc, status, retries)) from exc
                if stopped.wait(self.backoff * 2 ** retries):
                    raise Abandoned from exc
                retries += 1
                continue
            except (ValueError, TypeError, self.openai.APIResponseValidationError) as exc:  # a 200 that is not JSON
                raise ConnectionError(f"the endpoint {self.base_url} (model {self.model!r}) answered something that "
                                      f"is not a {self.api} completion ({type(exc).__name__}: {str(exc)[:200]}); is "
                                      f"it an OpenAI {self.api}-completions API?") from exc
            try:
                return self._completion(index, reply, retries, stop, sent_stop="stop" in body)
            except _UnnamedStop:  # ask again without the stop strings and cut the reply at them here
                if stopped.is_set():  # Ctrl-C or close() meanwhile: nothing more is sent
                    raise Abandoned from None
                if self.names_stop is None:
                    log(f"warning: the endpoint {self.base_url} does not say which stop string ended a reply, so "
                        "the ones kept in the text are cut here and no longer sent: it generates past them")
                self.names_stop = False
                body = {key: value for key, value in body.items() if key != "stop"}
                continue
            except (AttributeError, TypeError, KeyError) as exc:  # a 200 whose fields have the wrong types
                raise ConnectionError(f"the endpoint {self.base_url} (model {self.model!r}) answered a {self.api} "
                                      f"completion r1lab cannot read ({type(exc).__name__}: {str(exc)[:200]}); is "
                                      f"it an OpenAI {self.api}-completions API?") from exc

    def _failure(self, exc: Exception, status: int | None, retries: int) -> str:
        hint = ""
        if status in (404, 405):
            hint = (f"; is {self.base_url} the API's root (it usually ends in /v1), and does it serve the "
                    f"{self.api} API and the model {self.model!r}?")
        if status is None and isinstance(exc, self.openai.APITimeoutError):
            hint = ("; a reply took longer than the request's timeout: give a larger one (--engine-args "
                    "'{timeout: SECONDS}') or a smaller --max-new-tokens")
        elif status is None:
            hint = (f"; nothing answered at {self.base_url}: start the server, or check --base-url (and that this "
                    "machine can reach it)")
        if status == 400 and "unsupported parameter" in str(exc).lower():
            hint = ("; the endpoint does not take a field r1lab sent (named above): drop the option that sets it "
                    "(for max_tokens: --engine-args '{max_tokens_field: max_completion_tokens}')")
        elif status == 400 and "max_tokens" in str(exc):
            hint = "; the reply budget does not fit the endpoint's model: give a smaller --max-new-tokens"
        if status in (401, 403):
            where = (f"${self.api_key_env}" if os.environ.get(self.api_key_env)
                     else f"${self.api_key_env}, which is not set, so 'unused' was sent")
            hint = f"; the API key is read from {where}: set it, or name another variable with --api-key-env"
        tried = f" after {retries} retries" if retries else ""
        return (f"the endpoint {self.base_url} (model {self.model!r}) failed{tried}: {type(exc).__name__}: "
                f"{str(exc)[:300]}{hint}")

    def _completion(self, index: int, reply, retries: int, stop: Sequence[str] = (),
                    sent_stop: bool = False) -> Completion:
        """A :class:`Completion` from the server's reply to one request, ending with the first of ``stop`` it
        holds (kept). Where ``stop`` was sent (``sent_stop``) the server left out the one it stopped at: put back
        from the reply's ``stop_reason`` (vLLM) or ``matched_stop`` (SGLang); a reply that ended at a stop
        with neither field raises :class:`_UnnamedStop` (it cannot tell a stop string from the end of text)."""
        choices = getattr(reply, "choices", None)
        if not choices or (self.api == "chat" and getattr(choices[0], "message", None) is None):
            raise ConnectionError(f"the endpoint {self.base_url} (model {self.model!r}) answered with no choices "
                                  f"({str(reply)[:200]}); is it an OpenAI {self.api}-completions API?")
        choice = choices[0]
        if self.api == "chat":
            message = choice.message
            extra = message.model_extra or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
            reasoning, content = reasoning if isinstance(reasoning, str) else "", message.content or ""
            matched = self._matched_stop(choice, content or reasoning, stop) if sent_stop else ""
            if matched and not content and reasoning:  # it stopped inside the reasoning: the think block stays open
                text = reply_text(reasoning + matched, "", "length")
            else:
                text = reply_text(reasoning, content + matched, choice.finish_reason)
        else:
            text = choice.text or ""
            text += self._matched_stop(choice, text, stop) if sent_stop else ""
        if not isinstance(text, str):
            raise TypeError(f"its text is {type(text).__name__}, not a string")
        finish = "length" if choice.finish_reason == "length" else "stop"
        cut = cut_at_stop(text, stop, True) if stop else text
        if cut != text:  # a stop string the server was not told about: the reply ends there, as a local engine's
            text, finish = cut, "stop"
        usage = getattr(reply, "usage", None)
        return Completion(
            prompt_index=index, token_ids=self.encode(text) if self.tokenizer is not None else [],
            logprobs=self._logprobs(choice), finish_reason=finish,
            text=text, usage={"prompt_tokens": getattr(usage, "prompt_tokens", None),
                              "completion_tokens": getattr(usage, "completion_tokens", None),
                              "retries": retries, "finish_reason": choice.finish_reason})

    def _matched_stop(self, choice, end: str, stop: Sequence[str]) -> str:
        """The stop string to put back at the end of a reply that ended at one (``end``: the text it ended with),
        as the server names it (``stop_reason``, ``matched_stop``); "" where it ended otherwise or already holds
        it. :class:`_UnnamedStop` where it stopped and names nothing: a stop string or the end of text?"""
        if not stop or choice.finish_reason != "stop" or not isinstance(end, str) or end.endswith(tuple(stop)):
            return ""
        extra = getattr(choice, "model_extra", None) or {}
        if "stop_reason" not in extra and "matched_stop" not in extra:
            raise _UnnamedStop
        self.names_stop = True
        matched = extra.get("stop_reason") if "stop_reason" in extra else extra.get("matched_stop")
        return matched if isinstance(matched, str) and matched in stop else ""

    def _logprobs(self, choice) -> list[float]:
        """The server's log-prob of each token it sampled, where they were asked for (:data:`OPENAI_ARGS`)."""
        if not self.logprobs:
            return []
        given = getattr(choice, "logprobs", None)
        if self.api == "chat":
            values = [t.logprob for t in (getattr(given, "content", None) or [])]
        else:
            values = [float(v) for v in (getattr(given, "token_logprobs", None) or []) if v is not None]
        if not values:
            raise ValueError(f"the endpoint {self.base_url} returned no log-probs though they were asked for "
                             "(logprobs: true); it does not give them: leave logprobs out")
        return values


class _UnnamedStop(Exception):
    """A reply ended at a stop and the server did not say whether at a stop string, nor which."""


def option_problems(base_url=None, concurrency=DEFAULT_CONCURRENCY, max_retries=5, backoff=1.0, timeout=None,
                    api="chat", tokenizer=None, logprobs=False, extra_body=None, api_key_env="OPENAI_API_KEY",
                    max_tokens_field="max_tokens") -> list[str]:
    """What is wrong with the engine's options (empty: nothing), each naming the option and what to write."""
    whole = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    reserved = sorted(set(extra_body or {}) & RESERVED_FIELDS) if isinstance(extra_body, dict) else []
    return [text for bad, text in [
        (not base_url or not str(base_url).startswith(("http://", "https://")),
         f"base_url={base_url!r}: give the endpoint's API root, e.g. http://127.0.0.1:8000/v1"),
        (not whole(concurrency, 1), f"concurrency={concurrency!r}: a whole number >= 1"),
        (not whole(max_retries, 0), f"max_retries={max_retries!r}: a whole number >= 0"),
        (not number(backoff) or backoff < 0, f"backoff={backoff!r}: a number of seconds >= 0"),
        (timeout is not None and not (number(timeout) and timeout > 0),
         f"timeout={timeout!r}: a number of seconds > 0 (or null: from max_tokens)"),
        (api not in APIS, f"api={api!r}: use one of {', '.join(APIS)}"),
        (max_tokens_field not in MAX_TOKENS_FIELDS,
         f"max_tokens_field={max_tokens_field!r}: use one of {', '.join(MAX_TOKENS_FIELDS)}"),
        (max_tokens_field == "max_completion_tokens" and api != "chat",
         "max_tokens_field=max_completion_tokens is a chat-API field: use it with api: chat"),
        (not isinstance(logprobs, bool), f"logprobs={logprobs!r}: true or false"),
        (not isinstance(api_key_env, str) or not api_key_env, f"api_key_env={api_key_env!r}: a variable's name"),
        (extra_body is not None and not isinstance(extra_body, dict),
         f"extra_body={extra_body!r}: must be a mapping of request fields, e.g. {{repeat_penalty: 1.0}}"),
        (bool(reserved), f"extra_body: {', '.join(reserved)} {'is' if len(reserved) == 1 else 'are'} r1lab's to "
                         "send (--model, the prompt and the sampling flags); drop them from extra_body"),
        (tokenizer is not None and not (isinstance(tokenizer, str) and tokenizer),
         f"tokenizer={tokenizer!r}: a hub id, folder, .gguf or smollm2-135m"),
        (api == "completions" and not tokenizer,
         "api=completions renders prompts here and needs the model's tokenizer: give tokenizer (a hub id, "
         "folder, .gguf or smollm2-135m)")] if bad]


def chat_api_problem(template: str, prefill: str | None) -> str | None:
    """Why a prompt with ``template`` and ``prefill`` cannot go through a chat API (None: it can). The server
    renders the conversation with the model's own template, so only ``native`` and ``native-zero`` (the R1-Zero
    instruction in the user turn) mean anything there, and no forced start of the reply can be sent.

    >>> chat_api_problem("native-zero", None) is None, chat_api_problem("r1", None)[:28]
    (True, "template='r1' renders the pr")
    """
    if template not in CHAT_API_TEMPLATES:
        return (f"template={template!r} renders the prompt text itself, and an endpoint's chat API renders the "
                f"conversation with the server's own template: use --template {' or '.join(CHAT_API_TEMPLATES)}, "
                "or engine_args {api: completions, tokenizer: MODEL} to send text rendered here")
    if prefill:
        return (f"prefill={prefill!r}: an endpoint's chat API renders the conversation with the server's own "
                "template, so a forced start of the reply cannot be sent; leave the prefill out, or use engine_args "
                "{api: completions, tokenizer: MODEL}")
    return None


def reply_text(reasoning: str, content: str, finish_reason: str | None) -> str:
    """A chat reply in R1's form: a reasoning the server split off goes back inside the think block, left open
    when the reply was cut at the length limit before any content; a reply whose ``</think>`` the server's
    template opened gets its ``<think>``.

    >>> reply_text("2+3 is 5.", "The answer is 5.", "stop")
    '<think>\\n2+3 is 5.\\n</think>\\n\\nThe answer is 5.'
    >>> reply_text("2+3 is", "", "length")
    '<think>\\n2+3 is'
    >>> reply_text("", "2+3 is 5.\\n</think>\\n\\n5", "stop"), reply_text("", "Hello!", "stop")
    ('<think>\\n2+3 is 5.\\n</think>\\n\\n5', 'Hello!')
    """
    if reasoning:
        if not content and finish_reason == "length":
            return f"{OPEN}\n{reasoning.lstrip()}"
        return f"{OPEN}\n{reasoning.strip()}\n{CLOSE}\n\n{content.strip()}"
    if CLOSE in content and OPEN not in content.split(CLOSE, 1)[0]:
        return f"{OPEN}\n{content}"
    return content


def sample_seed(seed: int, key: int, sample: int) -> int:
    """The seed sent for sample ``sample`` of the prompt keyed ``key`` in a run seeded ``seed``: a hash of the three,
    below 2**31 (what every server takes, llama.cpp's 32-bit seed included).

    >>> sample_seed(0, 3, 1) == sample_seed(0, 3, 1) != sample_seed(0, 3, 2)
    True
    """
    digest = hashlib.blake2b(f"{seed}/{key}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def run_all(work: Callable, jobs: Iterable, concurrency: int, stopped: threading.Event) -> Iterator[tuple]:
    """``(job, work(job))`` for every job as it returns, ``concurrency`` at a time on daemon threads.

    On an error nothing more is started, what is in flight still comes back, then the first error is raised. When
    the caller stops (Ctrl-C, a KeyboardInterrupt in its thread, or the iterator closed) ``stopped`` is set, nothing
    more is started and nothing is awaited: work in flight is abandoned, and its thread, a daemon, never holds up
    the exit (a ThreadPoolExecutor's workers are joined at exit, so a Ctrl-C there waits for every request)."""
    pending = deque(jobs)
    lock = threading.Lock()
    done: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while True:
            with lock:
                if stopped.is_set() or not pending:
                    break
                job = pending.popleft()
            try:
                done.put((job, work(job), None))
            except BaseException as e:  # handed to the caller's thread, raised there
                done.put((job, None, e))
        done.put(None)  # this worker has ended

    threads = [threading.Thread(target=worker, name=f"openai-{i}", daemon=True)
               for i in range(min(concurrency, len(pending)))]
    for thread in threads:
        thread.start()
    live, error = len(threads), None
    try:
        while live:
            item = done.get()
            if item is None:
                live -= 1
                continue
            job, result, exc = item
            if exc is not None:
                error = error or exc
                with lock:
                    pending.clear()
                continue
            yield job, result
    finally:
        stopped.set()
        with lock:
            pending.clear()
    if error is not None:
        raise error


def _seen(completion: Completion, sample: int, on_token: OnToken, tokenizer) -> Completion:
    """``on_token`` over a whole reply's tokens; False at one cuts the completion there ("abort")."""
    for n, token in enumerate(completion.token_ids):
        if on_token(completion.prompt_index, sample, token) is False:
            ids = completion.token_ids[:n + 1]
            completion.token_ids, completion.finish_reason = ids, "abort"
            completion.text = tokenizer.decode(ids, skip_special_tokens=True)
            completion.logprobs = completion.logprobs[:n + 1]
            break
    return completion
