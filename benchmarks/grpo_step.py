"""GRPO step time: TRL's GRPOTrainer vs r1lab on the same workload, in one run; engine decode vs HF generate.

Workload (both frameworks): SmolLM2-135M-Instruct in fp32 on the CPU, 4 prompts x 8 samples per step, at most
64 new tokens, temperature 0.7, beta = 0, one policy update per batch, full fine-tuning, AdamW, the same
prompt token ids (r1lab's native-zero rendering of arithmetic problems) and the same accuracy reward.

Prints:
- seconds per step for TRL and for r1lab (mean over the steps after the first, which warms up) and the ratio;
- decode tokens/s of r1lab's engine vs ``model.generate`` at batch 32 (4 prompts x 8): tokens returned per
  second when rows stop at EOS (the real workload), and with EOS ignored (both decode exactly 64 per row);
- the training phase's achieved GFLOP/s against a 2048x2048 fp32 matmul measured in the same run, both as
  PyTorch's ``mm`` (MKL) and through oneDNN (on AMD CPUs MKL takes a generic path and oneDNN is ~2x faster).
  Training FLOPs = 3 x (2 x decoder params x positions computed + 2 x hidden x vocab x tokens scored);
  attention FLOPs are left out, so the figure slightly understates the work done.

Usage: ``python benchmarks/grpo_step.py [--steps 4] [--trl-steps 3] [--skip-trl]`` (needs ``pip install trl``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from r1lab.chat import render
from r1lab.config import ZeroConfig
from r1lab.engine import SamplingParams, TorchEngine
from r1lab.engine.onednn import onednn_linears
from r1lab.models import load_model
from r1lab.packing import pack
from r1lab.policy import Policy
from r1lab.rewards.build import build_rewards
from r1lab.rl import grpo
from r1lab.rollout import generate_groups, score_group
from r1lab.tasks import get_task

PROMPTS, GROUP, MAX_NEW, TEMPERATURE, LR = 4, 8, 64, 0.7, 1e-6


def matmul_gflops(n: int = 2048, reps: int = 10, onednn: bool = False) -> float:
    """fp32 ``a @ b`` (PyTorch's CPU mm: MKL), or the same product through oneDNN's linear op."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    if onednn:
        def product():
            return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    else:
        def product():
            return a @ b
    for _ in range(2):
        product()
    t = time.perf_counter()
    for _ in range(reps):
        product()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def workload(steps: int, tokenizer, task):
    """The prompts of each step, as (text, example) pairs, identical for both frameworks."""
    train = task.examples("train")
    out = []
    for step in range(steps):
        examples = [train[(step * PROMPTS + i) % len(train)] for i in range(PROMPTS)]
        out.append([(render([{"role": "user", "content": ex["prompt"]}], "native-zero", tokenizer).text, ex)
                    for ex in examples])
    return out


def decoder_params(model) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - embed.numel()


def bench_r1lab(steps, task) -> dict:
    model, tok = load_model("smollm2-135m")
    engine = TorchEngine(model, tok)
    cfg = ZeroConfig(prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=MAX_NEW, temperature=TEMPERATURE,
                     beta=0.0, updates_per_batch=1, lr=LR, warmup_steps=0, stop=[], rewards={"accuracy": 1.0},
                     dtype="fp32")  # the workload is fp32 in both frameworks (auto is bf16 on a CPU with AMX)
    rewards = build_rewards(cfg.rewards, task)
    policy = Policy(model, tok, cfg)
    params = SamplingParams(n=GROUP, temperature=TEMPERATURE, max_new_tokens=MAX_NEW)
    n_body, hidden, vocab = decoder_params(model), model.config.hidden_size, model.config.vocab_size
    times, train_times, flops, trained = [], [], [], []
    for step, batch in enumerate(workload(steps, tok, task)):
        t0 = time.perf_counter()
        params.seed = step
        groups = generate_groups(engine, [ex for _, ex in batch], "native-zero", None, params, task)
        for g in groups:
            score_group(g, rewards)
        grpo.set_advantages(groups, cfg.advantage)
        t1 = time.perf_counter()
        with onednn_linears(model):  # as grpo.train does
            stats = grpo.update_policy(policy, groups, cfg)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        train_times.append(t2 - t1)
        active = [g for g in groups if any(abs(a) > 0 for a in g.advantages)]
        f = 0
        for i in range(0, len(active), cfg.groups_per_micro_batch):
            pk = pack([(g.prompt_ids, [c.token_ids for c in g.completions])
                       for g in active[i:i + cfg.groups_per_micro_batch]], tok.pad_token_id)
            f += 3 * (2 * n_body * pk.input_ids.numel() + 2 * hidden * vocab * len(pk.targets))
        flops.append(f)
        trained.append(stats["trained_groups"])
        print(f"  r1lab step {step}: {t2 - t0:.1f}s (generate+score {t1 - t0:.1f}s, train {t2 - t1:.1f}s, "
              f"{stats['trained_groups']}/{len(groups)} groups with signal)", flush=True)
    later = slice(1, None) if steps > 1 else slice(None)
    gflops = [f / t / 1e9 for f, t in zip(flops[later], train_times[later]) if f]
    return {"sec_per_step": statistics.mean(times[later]),
            "train_gflops": statistics.mean(gflops) if gflops else float("nan"), "groups_trained": trained,
            "model": model, "tok": tok}


def bench_trl(steps, task) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model("smollm2-135m")
    rows = [{"prompt": text, "answer": ex["answer"]} for batch in workload(steps, tok, task) for text, ex in batch]

    def accuracy(completions, answer, **_):
        return [task.verify(c, answer=a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, *a, **k):
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t)
            print(f"  TRL step {len(self.times) - 1}: {self.times[-1]:.1f}s", flush=True)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                          gradient_accumulation_steps=1, max_completion_length=MAX_NEW, temperature=TEMPERATURE,
                          top_p=1.0, beta=0.0, num_iterations=1, learning_rate=LR, max_steps=steps, use_cpu=True,
                          bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
                          disable_tqdm=True, seed=0, dataloader_num_workers=0, shuffle_dataset=False)
        trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, callbacks=[timer])
        trainer.train()
    later = timer.times[1:] if len(timer.times) > 1 else timer.times
    return {"sec_per_step": statistics.mean(later)}


def bench_decode(model, tok, task, reps: int = 2) -> dict:
    """Tokens returned per second at batch 32, for two workloads: ``eos`` (real: rows stop at EOS, so work
    on finished rows is waste) and ``fixed`` (EOS ignored: every row decodes exactly MAX_NEW tokens)."""
    engine = TorchEngine(model, tok)
    texts = [text for text, _ in workload(1, tok, task)[0]]
    prompts = [engine.encode(t) for t in texts]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    eos = set(engine.eos_ids)
    result = {}
    for mode in ("eos", "fixed"):
        ignore = mode == "fixed"
        ours, hf = [], []
        for rep in range(reps):
            params = SamplingParams(n=GROUP, temperature=TEMPERATURE, max_new_tokens=MAX_NEW, ignore_eos=ignore,
                                    seed=rep)
            t = time.perf_counter()
            out = engine.generate(prompts, params)
            ours.append(sum(len(c) for g in out for c in g) / (time.perf_counter() - t))
            t = time.perf_counter()
            gen = model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0,
                                 max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW if ignore else 0,
                                 num_return_sequences=GROUP, pad_token_id=tok.pad_token_id)
            elapsed = time.perf_counter() - t
            new = gen[:, enc.input_ids.shape[1]:].tolist()
            returned = sum(len(row) if ignore else next((i + 1 for i, x in enumerate(row) if x in eos), len(row))
                           for row in new)
            hf.append(returned / elapsed)
        result[mode] = (max(ours), max(hf))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="r1lab steps (the first is not timed)")
    parser.add_argument("--trl-steps", type=int, default=3, help="TRL steps (the first is not timed)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    task = get_task("arithmetic", digits=1, operands=2, operators="+")
    peak = matmul_gflops()
    print(f"fp32 matmul 2048^3: {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
    try:  # on AMD CPUs MKL takes a generic path; oneDNN shows what the cores can do
        onednn_peak = matmul_gflops(onednn=True)
        print(f"fp32 matmul 2048^3 through oneDNN: {onednn_peak:.0f} GFLOP/s", flush=True)
    except (RuntimeError, AttributeError, NotImplementedError):
        onednn_peak = None

    ours = bench_r1lab(args.steps, task)
    decode = bench_decode(ours["model"], ours["tok"], task)
    trl = None if args.skip_trl else bench_trl(args.trl_steps, task)

    print("\n=== results ===")
    print(f"r1lab  GRPO step: {ours['sec_per_step']:.1f} s/step "
          f"(groups with signal per step: {ours['groups_trained']})")
    if trl:
        print(f"TRL    GRPO step: {trl['sec_per_step']:.1f} s/step")
        print(f"speed-up r1lab vs TRL: {trl['sec_per_step'] / ours['sec_per_step']:.2f}x (target >= 3x)")
    for mode, label in (("eos", "stopping at EOS"), ("fixed", f"EOS ignored, {MAX_NEW} tokens per row")):
        r1, hf = decode[mode]
        print(f"decode at batch 32 ({label}): r1lab {r1:.0f} tok/s, HF generate {hf:.0f} tok/s, "
              f"ratio {r1 / hf:.2f}x (target >= 2.5x)")
    print(f"training phase: {ours['train_gflops']:.0f} GFLOP/s achieved vs {peak:.0f} GFLOP/s fp32 matmul "
          f"({ours['train_gflops'] / peak:.0%})"
          + (f"; {ours['train_gflops'] / onednn_peak:.0%} of oneDNN's {onednn_peak:.0f}" if onednn_peak else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
