"""Continuous batching on mixed lengths: wall time and tokens/s with it off and on, and the outputs compared.

The embedded SmolLM2-135M decodes ``--rows`` different prompts greedily with a budget of ``--max-rows`` rows at once.
Lengths are forced per row (``on_token`` ends each row after a length of its own): one row in ``--long-every``
runs to ``--max-new-tokens``, the rest stop after 4-24 tokens. Off (``max_rows=0``), rows go in chunks of
``--max-rows`` and each chunk runs until its long row ends; on, finished rows' slots are refilled from the queue.
The same is done with seeded sampling (temperature 1). Every setting runs ``--repeats`` times; the best time counts.

Usage: ``python benchmarks/continuous_batching.py [--rows 32] [--max-rows 8] [--max-new-tokens 128] [--threads 0]``
"""

from __future__ import annotations

import argparse
import time

from r1lab.engine import SamplingParams, open_engine


def lengths(rows: int, long_every: int, max_new: int) -> list[int]:
    """Row i's length: max_new for one row in long_every (the middle one of each group), else 4-24 tokens."""
    return [max_new if i % long_every == long_every // 2 else 4 + (7 * i) % 21 for i in range(rows)]


def capped(caps: list[int]):
    """on_token that ends prompt i's sample after caps[i] tokens."""
    counts = [0] * len(caps)

    def on_token(i, j, token):
        counts[i] += 1
        return counts[i] < caps[i]

    return on_token


def run(engine, prompts, params, caps, max_rows: int, repeats: int):
    engine.max_rows = max_rows
    best, out = float("inf"), None
    for _ in range(repeats):
        on_token = capped(caps)

        start = time.perf_counter()
        out = engine.generate(prompts, params, on_token)
        best = min(best, time.perf_counter() - start)
    tokens = sum(len(c.token_ids) for group in out for c in group)
    return best, tokens, [[(c.token_ids, c.finish_reason) for c in group] for group in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-rows", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--long-every", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    # max_batch: the chunk size with continuous batching off
    engine = open_engine(args.model, "torch", {"max_batch": args.max_rows}, threads=args.threads)
    topics = ["the sea", "prime numbers", "a red bicycle", "winter", "the moon", "bread", "rivers", "chess"]
    prompts = [engine.encode(f"Write a short story number {i} about {topics[i % len(topics)]}:")
               for i in range(args.rows)]
    engine.generate(prompts[:2], SamplingParams(temperature=0, max_new_tokens=4))  # warm-up: weights packed, etc.
    caps = lengths(args.rows, args.long_every, args.max_new_tokens)
    print(f"{args.rows} rows, budget {args.max_rows} rows, lengths {min(caps)}-{max(caps)} "
          f"({sum(caps)} tokens in all), model {args.model}")
    for name, params in (("greedy", SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens,
                                                   ignore_eos=True)),
                         ("sampled", SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0,
                                                    ignore_eos=True))):
        results = {}
        for mode, max_rows in (("off", 0), ("on", args.max_rows)):
            seconds, tokens, outputs = run(engine, prompts, params, caps, max_rows, args.repeats)
            results[mode] = outputs
            print(f"{name:8s} continuous {mode:3s}: {seconds:7.2f} s  {tokens / seconds:7.1f} tokens/s  "
                  f"({tokens} tokens)")
        print(f"{name:8s} outputs identical (token ids and finish reasons): {results['off'] == results['on']}")


if __name__ == "__main__":
    main()
