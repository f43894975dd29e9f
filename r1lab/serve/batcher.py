"""One thread owns the engine; requests wait in a bounded line and run together in batches.

Requests that arrive while a batch is generating are collected into the next one (static batching: a batch
runs until its rows finish; rows that finish early stop costing compute inside the engine). Requests whose
sampling settings differ cannot share one ``generate`` call and go in separate batches. A job's tokens are
turned into reasoning/content deltas on this thread and handed to the request's asyncio queue. A job whose
client has gone is stopped at its next token through the engine's ``on_token`` hook.

Admission is bounded: at most ``max_pending`` jobs are waiting or running; one more is refused with
:class:`Overloaded`, which the server answers as 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from r1lab.chat import ReasoningSplitter
from r1lab.engine import Prompt, SamplingParams
from r1lab.serve.stream import TextStream


class Overloaded(Exception):
    pass


@dataclass
class Job:
    prompt: Prompt  # prompt.thinking: it opened the think block (R1's prefill), so the reply starts as reasoning
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Batcher:
    def __init__(self, engine, max_pending: int = 16, max_batch_rows: int = 32):
        self.engine, self.max_pending, self.max_batch_rows = engine, max_pending, max_batch_rows
        #: the CPU threads torch runs on here (--threads): a thread's OpenMP team size is its own, so the batcher's
        #: thread is given the one its engine was opened with (vLLM's CPU attention refuses any other)
        self._threads = torch.get_num_threads()
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self.running = 0  # jobs inside the current generate call
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="r1lab-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs waiting or running; one whose client left while it waited no longer counts."""
        with self._lock:  # a reentrant lock: submit() holds it already
            return sum(not job.cancelled.is_set() for job in self._waiting) + self.running

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.pending >= self.max_pending:
                raise Overloaded
            self._waiting.append(job)
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _next_batch(self) -> list[Job]:
        """The oldest waiting job and every waiting job with the same sampling settings, up to the row cap."""
        with self._lock:
            while not self._waiting and not self._closed:
                self._lock.wait()
            if self._closed:
                return []
            first = self._waiting[0]
            batch, rows = [], 0
            for job in list(self._waiting):
                if job.params == first.params and rows + job.params.n <= max(self.max_batch_rows, first.params.n):
                    batch.append(job)
                    rows += job.params.n
                    self._waiting.remove(job)
            batch = [j for j in batch if not j.cancelled.is_set()]  # their clients left while they waited
            self.running = len(batch)
            return batch

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        while True:
            batch = self._next_batch()
            if self._closed:
                return
            if batch:
                try:
                    self._generate(batch)
                except Exception as exc:  # noqa: BLE001  (reported to each client, the thread lives on)
                    for job in batch:
                        job.send(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            with self._lock:
                self.running = 0

    def _generate(self, batch: list[Job]) -> None:
        n = batch[0].params.n
        streams = [[TextStream(self.engine.tokenizer, tuple(job.params.stop)) for _ in range(n)] for job in batch]
        splitters = [[ReasoningSplitter(job.prompt.thinking) for _ in range(n)] for job in batch]

        def on_token(prompt: int, sample: int, token: int) -> bool:
            job = batch[prompt]
            if job.cancelled.is_set():
                return False
            text = streams[prompt][sample].push(token)
            if text:
                reasoning, content = splitters[prompt][sample].feed(text)
                if reasoning or content:
                    job.send(("delta", sample, reasoning, content))
            return True  # stop strings end the row inside the engine (finish reason "stop")

        results = self.engine.generate([job.prompt for job in batch], batch[0].params, on_token=on_token)
        for i, (job, completions) in enumerate(zip(batch, results)):
            for j in range(n):
                reasoning, content = splitters[i][j].finish(streams[i][j].finish())
                if reasoning or content:
                    job.send(("delta", j, reasoning, content))
            job.send(("done", completions))
