"""r1lab on a GPU, measured: decode throughput against HF ``generate`` and the memory-bandwidth roofline, the GRPO
step against TRL's GRPOTrainer, and training MFU, each with its peak GPU memory. Nothing is downloaded.

The machine's own limits are measured first, in the same run, and every fraction below is of these:

- memory bandwidth: a large device-to-device copy (4 GiB on CUDA, timed with CUDA events), ``2 x bytes / time``
  (each byte is read once and written once);
- matmul peak: 8192^3 products in the compute precision on CUDA (CUDA events), ``2 x n^3 / time``; on a CPU the
  faster of PyTorch's fp32 ``mm`` and oneDNN's (:func:`grpo_step.matmul_gflops`), which r1lab's CPU training uses.

Parts (``--only decode,grpo,mfu``):

decode
    Tokens per second of r1lab's engine (``TorchEngine``, its default ``decode="auto"``: the static KV cache +
    CUDA-graph path on CUDA; and ``decode="dynamic"`` on CUDA for comparison), of HF ``generate`` (eager,
    DynamicCache) and of HF ``generate`` with a static cache compiled by ``torch.compile`` (transformers'
    ``cache_implementation="static"`` plus a ``CompileConfig``, its automatic compile of the decoding forward,
    warmed up with the same shapes before the timed call; CUDA only, a CPU runs the static cache eager). Models:
    random-weight Llamas of Qwen2.5-0.5B and -1.5B shape (built in-process) and ``--model``; batches 32/64/128 of
    distinct random prompts of 120 tokens, 256 new tokens each, sampled at T=0.7, EOS ignored so every variant
    decodes the same count. Roofline: bytes a decode step must read (every weight once, the input embedding
    of an untied model excepted, plus the K and V cache at the mean length ``prompt + new / 2``), times the
    steps, over the time, as a share of the measured bandwidth; the time includes the prefill.
grpo
    Seconds per GRPO step, r1lab against TRL's GRPOTrainer, on ``benchmarks/grpo_step.py``'s workload (its
    prompts, 4 prompts x 8 samples, at most 64 new tokens, T=0.7, beta=0, one update per batch, full fine-tuning,
    AdamW, the task's accuracy reward), both computing in the same precision over fp32 weights (r1lab: the
    ZeroConfig ``dtype``; TRL: ``bf16=True``, i.e. autocast) and both without gradient checkpointing (TRL's
    default is on). Mean over the steps after the first. Needs a real model (``--model``); ``--tiny`` uses a
    tiny random model and a coin-flip reward (both frameworks), so every group has signal.
mfu
    Achieved FLOP/s of r1lab's training update on packed rows against the measured matmul peak, on the 0.5B
    shape and the 1.5B one (out of memory is reported, not fatal): GRPO (``rl.grpo.update_policy``, 8 groups of
    a 120-token prompt and 8 completions of 256 tokens, two groups per micro-batch) and SFT
    (``sft.trainer.sft_step``, 64 samples of a 120-token prompt whose first half they share and a 128-384-token
    reply, in rows of at most 4096 tokens). The time is the whole update: forward, backward, clipping, AdamW.
    FLOPs per update = 6 x (decoder-layer params) x (positions computed) + 6 x hidden x vocab x (tokens scored;
    the LM head runs only there) + 12 x layers x (heads x head_dim) x (query-key pairs attended: QK^T and AV, 2
    FLOPs a multiply-add each, forward once and backward twice). Pairs are the useful ones (a packed
    completion attends to its prompt and itself), not what a block-sparse kernel may compute; recomputation (the
    chunked LM head's) is not counted, as MFU does not count it.

Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported per measurement; on a CPU it is not measured.

On a CPU everything runs too (fp32, ``time.perf_counter``), so the script is exercised without a GPU:
``python benchmarks/gpu.py --device cpu --tiny`` (a tiny random Llama, small batches, under a few minutes).
On a GPU: ``python benchmarks/gpu.py --model PATH.gguf --json out.json``; the parts take minutes each (compiling
HF's decode step is most of it), so split them over calls with ``--only`` and ``--shapes``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import platform
import statistics
import string
import sys
import tempfile
import time
import traceback
import types
import zlib
from pathlib import Path

import torch
import transformers
from grpo_step import GROUP, LR, MAX_NEW, PROMPTS, TEMPERATURE, matmul_gflops, workload

from r1lab.config import ZeroConfig
from r1lab.engine import Completion, Prompt, SamplingParams, TorchEngine, open_engine
from r1lab.files import write_json
from r1lab.models import DTYPES, load_model, resolve_device, resolve_dtype, use_threads
from r1lab.optim import make_optimizer
from r1lab.packing import pack, pack_samples
from r1lab.policy import Policy
from r1lab.rewards import register
from r1lab.rewards.build import build_rewards
from r1lab.rl import grpo
from r1lab.rollout import Group, generate_groups, score_group
from r1lab.sft.data import pack_rows
from r1lab.sft.trainer import sft_step
from r1lab.tasks import get_task

#: Llama shapes of Qwen2.5 models (both tie the LM head to the input embedding, as the released models do)
SHAPES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
}
PARTS = ("decode", "grpo", "mfu")
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}  # torch.bfloat16 -> "bf16"
GIB = 2**30


# --------------------------------------------------------------------------------------------- building
def synthetic_tokenizer(vocab_size: int):
    """Character-level (pad, EOS, the printable characters) then filler tokens ``<t{i}>`` up to ``vocab_size``,
    with a plain chat template: renders any prompt and decodes any id a random-weight model samples."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<eos>", *string.printable]
    names += [f"<t{i}>" for i in range(len(names), vocab_size)]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(names)}, merges=[], unk_token=None))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    return tok


def random_model(shape: str, device: torch.device, dtype: torch.dtype):
    """``(model, tokenizer)``: a Llama of ``SHAPES[shape]`` with random weights, built on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=32768, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval(), synthetic_tokenizer(config.vocab_size)


def load(name: str, device: torch.device, dtype: torch.dtype):
    """A random shape (a key of :data:`SHAPES`) or anything :func:`r1lab.models.load_model` reads."""
    if name in SHAPES:
        return random_model(name, device, dtype)
    model, tok = load_model(name, dtype=dtype, device=device)
    return model.eval(), tok


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    """``(fn(), seconds)``, the device idle before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def event_seconds(fn, reps: int) -> float:
    """Seconds per call of ``fn`` on the current CUDA stream, by CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict):
    """Sets ``into["peak_gib"]``: the most GPU memory allocated inside the block (None on a CPU)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        into["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def bandwidth(device: torch.device, tiny: bool) -> float:
    """Bytes per second of a large copy: each byte read once and written once."""
    size = (64 if tiny else 256) * 2**20 if device.type == "cpu" else 4 * GIB
    src = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        seconds = event_seconds(lambda: dst.copy_(src), reps=10)
    else:
        dst.copy_(src)
        seconds = timed(device, lambda: [dst.copy_(src) for _ in range(5)])[1] / 5
    return 2 * size / seconds


def matmul_peak(device: torch.device, dtype: torch.dtype, tiny: bool) -> float:
    """FLOP/s of large square products in ``dtype`` (on a CPU: fp32, the better of MKL's and oneDNN's)."""
    if device.type == "cpu":
        n = 1024 if tiny else 2048
        rates = [matmul_gflops(n, reps=5)]
        with contextlib.suppress(RuntimeError, AttributeError, NotImplementedError):
            rates.append(matmul_gflops(n, reps=5, onednn=True))
        return max(rates) * 1e9
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / event_seconds(lambda: a @ b, reps=20)


# ----------------------------------------------------------------------------------------------- decode
def decode_bytes_per_step(model, batch: int, context: float) -> float:
    """What one decode step must read: every weight once (an untied input embedding only reads ``batch`` rows,
    left out) and the K and V cache of ``batch`` rows of ``context`` tokens."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    if embed is not model.get_output_embeddings().weight:
        weights -= embed.numel() * embed.element_size()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    kv = 2 * c.num_hidden_layers * kv_heads * head_dim * batch * context * embed.element_size()
    return weights + kv


def run_r1lab(model, tok, prompts, new: int, decode: str) -> tuple[int, float]:
    engine = TorchEngine(model, tok, max_batch=len(prompts), decode=decode)
    params = SamplingParams(temperature=TEMPERATURE, max_new_tokens=new, ignore_eos=True, seed=0)
    device = next(model.parameters()).device
    # warm-up; for the static path with the same shapes, so every CUDA graph the timed call replays is captured
    engine.generate(prompts, params if decode != "dynamic" else SamplingParams(max_new_tokens=8, ignore_eos=True))
    out, seconds = timed(device, lambda: engine.generate(prompts, params))
    return sum(len(c) for group in out for c in group), seconds


def run_hf(model, tok, prompts, new: int, static: bool) -> tuple[int, float]:
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)  # (B, P): every prompt has the same length, no padding
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=tok.pad_token_id)
    if static:
        kwargs["cache_implementation"] = "static"
        if device.type == "cuda":  # transformers compiles the decoding forward itself for a static cache on CUDA
            kwargs["compile_config"] = transformers.CompileConfig(mode="reduce-overhead")
    warm_up = kwargs if static else {**kwargs, "max_new_tokens": 8, "min_new_tokens": 8}
    model.generate(ids, **warm_up)  # static: the same shapes, so the compiled step and its CUDA graphs are ready
    out, seconds = timed(device, lambda: model.generate(ids, **kwargs))
    return (out.shape[1] - ids.shape[1]) * out.shape[0], seconds


def decode_part(args, device, dtype, bw: float) -> list[dict]:
    models = ([args.model] if args.model else []) + args.shapes
    variants = {"r1lab": functools.partial(run_r1lab, decode="auto")}  # each: (model, tok, prompts, new) -> count, s
    if device.type == "cuda":  # on a CPU "auto" is the dynamic path
        variants["r1lab-dynamic"] = functools.partial(run_r1lab, decode="dynamic")
    variants["hf-eager"] = functools.partial(run_hf, static=False)
    if not args.no_compile:  # transformers compiles only on a GPU: a CPU runs the static cache eager
        compiled = "hf-static-compiled" if device.type == "cuda" else "hf-static"
        variants[compiled] = functools.partial(run_hf, static=True)
    rows = []
    for name in models:
        model, tok = load(name, device, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n[decode] {Path(name).name}: {n_params / 1e6:.1f}M params, {dtype}, prompts of {args.prompt_tokens} "
              f"tokens, {args.new_tokens} new tokens, EOS ignored", flush=True)
        print(f"  {'variant':<20}{'batch':>6}{'tok/s':>10}{'ms/step':>9}{'roofline':>10}{'bound tok/s':>13}"
              f"{'peak GiB':>10}")
        gen = torch.Generator().manual_seed(0)
        prompts = {batch: torch.randint(2, model.config.vocab_size, (batch, args.prompt_tokens), generator=gen).tolist()
                   for batch in args.batches}  # the same for every variant
        for variant, run in variants.items():
            for batch in args.batches:
                row = {"model": name, "variant": variant, "batch": batch, "dtype": str(dtype)}
                try:
                    with peak_memory(device, row):
                        tokens, seconds = run(model, tok, prompts[batch], args.new_tokens)
                except Exception as e:  # one failing variant (a compile error, out of memory) must not end the run
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    print(f"  {variant:<20}{batch:>6}  failed: {row['error']}", flush=True)
                    rows.append(row)
                    free(device)
                    continue
                steps = tokens / batch
                step_bytes = decode_bytes_per_step(model, batch, args.prompt_tokens + args.new_tokens / 2)
                row.update(tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds,
                           ms_per_step=1e3 * seconds / steps, bytes_per_step=step_bytes,
                           roofline=step_bytes * steps / seconds / bw, bound_tokens_per_second=batch * bw / step_bytes)
                print(f"  {variant:<20}{batch:>6}{row['tokens_per_second']:>10.0f}{row['ms_per_step']:>9.2f}"
                      f"{row['roofline']:>10.1%}{row['bound_tokens_per_second']:>13.0f}"
                      f"{_gib(row['peak_gib']):>10}", flush=True)
                rows.append(row)
            if variant.startswith("hf-static") and device.type == "cuda":
                torch._dynamo.reset()  # drop the compiled graphs and their CUDA-graph memory pools
            free(device)
        ours = [r for r in rows if r["model"] == name and r["variant"] == "r1lab" and "error" not in r]
        if len(ours) > 1:
            ratio = ours[-1]["tokens_per_second"] / ours[0]["tokens_per_second"]
            verdict = "grows" if ratio >= 1.2 else "flat"
            print(f"  r1lab throughput from batch {ours[0]['batch']} to {ours[-1]['batch']}: x{ratio:.2f} ({verdict} "
                  f"with batch; batch x{ours[-1]['batch'] / ours[0]['batch']:.0f})", flush=True)
        del model, tok
        free(device)
    return rows


# ------------------------------------------------------------------------------------------------- GRPO
@register("bench_coin")
def coin(completion, **_):
    """0 or 1 by a hash of the text: a reward a random-weight model gets signal from, the same in both frameworks."""
    return float(zlib.crc32(completion.encode()) % 2)


def grpo_model(args, device: torch.device):
    """``(model, tokenizer)`` in fp32 (the trained weights; compute precision is autocast's), or None."""
    if args.tiny:
        model, tok = random_model("tiny", device, torch.float32)
        return model, tok
    name = args.model or ("smollm2-135m" if device.type == "cpu" else None)  # no network on a lent GPU
    return load_model(name, device=device) if name else None


def sample_groups(engine, batch, params: SamplingParams, task, rewards) -> list[Group]:
    """Generate and score one step's groups, with their advantages, as ``grpo.train`` does."""
    groups = generate_groups(engine, [ex for _, ex in batch], "native-zero", None, params, task)
    for g in groups:
        score_group(g, rewards)
    grpo.set_advantages(groups, "grpo")
    return groups


def grpo_r1lab(args, device, dtype_name: str, task, reward: str) -> dict:
    model, tok = grpo_model(args, device)
    engine = open_engine((model, tok), "torch", device=str(device), dtype=dtype_name, train=True)
    cfg = ZeroConfig(prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=MAX_NEW, temperature=TEMPERATURE,
                     beta=0.0, updates_per_batch=1, lr=LR, warmup_steps=0, stop=[], rewards={reward: 1.0},
                     device=str(device), dtype=dtype_name)
    rewards = build_rewards(cfg.rewards, task)
    policy = Policy(engine.model, tok, cfg)
    params = SamplingParams(n=GROUP, temperature=TEMPERATURE, max_new_tokens=MAX_NEW)
    out = {"steps": []}
    with peak_memory(device, out):
        for step, batch in enumerate(workload(args.grpo_steps, tok, task)):
            params.seed = step
            groups, t_gen = timed(device, functools.partial(sample_groups, engine, batch, params, task, rewards))
            stats, t_train = timed(device, functools.partial(grpo.update_policy, policy, groups, cfg))
            out["steps"].append({"seconds": t_gen + t_train, "generate": t_gen, "train": t_train,
                                 "groups_with_signal": stats["trained_groups"],
                                 "logprob_gap_mean": stats.get("logprob_gap_mean")})
            print(f"  r1lab step {step}: {t_gen + t_train:.2f}s (generate+score {t_gen:.2f}s, train {t_train:.2f}s, "
                  f"{stats['trained_groups']}/{len(groups)} groups with signal)", flush=True)
    later = out["steps"][1:] or out["steps"]
    out["sec_per_step"] = statistics.mean(s["seconds"] for s in later)
    out["sec_generate"] = statistics.mean(s["generate"] for s in later)
    out["sec_train"] = statistics.mean(s["train"] for s in later)
    return out


def grpo_trl(args, device, dtype: torch.dtype, task, reward: str) -> dict:
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # whatever importing TRL raises (a missing or mismatched dependency): no TRL here
        return {"skipped": f"TRL not importable ({type(e).__name__}: {e})"[:300]}

    model, tok = grpo_model(args, device)
    rows = [{"prompt": text, "answer": ex["answer"]} for batch in workload(args.trl_steps, tok, task)
            for text, ex in batch]

    def accuracy(completions, answer, **_):
        return [task.verify(c, answer=a) for c, a in zip(completions, answer)]

    def bench_coin(completions, **_):
        return [coin(c) for c in completions]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, *a, **k):
            sync(device)
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            self.times.append(time.perf_counter() - self._t)
            print(f"  TRL step {len(self.times) - 1}: {self.times[-1]:.2f}s", flush=True)

    timer, out = StepTimer(), {}
    config = dict(per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP, gradient_accumulation_steps=1,
                  max_completion_length=MAX_NEW, temperature=TEMPERATURE, top_p=1.0, beta=0.0, num_iterations=1,
                  learning_rate=LR, max_steps=args.trl_steps, use_cpu=device.type == "cpu",
                  bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, gradient_checkpointing=False,
                  report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                  dataloader_num_workers=0, shuffle_dataset=False)
    try:
        with tempfile.TemporaryDirectory() as folder, peak_memory(device, out):
            trainer = GRPOTrainer(model=model, reward_funcs=accuracy if reward == "accuracy" else bench_coin,
                                  args=GRPOConfig(output_dir=folder, **config), processing_class=tok,
                                  train_dataset=Dataset.from_list(rows), callbacks=[timer])
            trainer.train()
    except Exception as e:  # reported, not raised: r1lab's results are kept
        traceback.print_exc()
        return {"skipped": f"TRL failed ({type(e).__name__}: {e})"[:300]}
    later = timer.times[1:] or timer.times
    out.update(steps=timer.times, sec_per_step=statistics.mean(later))
    return out


def grpo_part(args, device, dtype) -> dict:
    dtype_name = DTYPE_NAMES[dtype]
    if not args.tiny and args.model is None and device.type != "cpu":
        print("\n[grpo] skipped: needs a real model, --model PATH (the embedded GGUF: see ../shared/GPU.md)")
        return {"skipped": "no --model"}
    task = get_task("arithmetic", digits=1, operands=2, operators="+")
    reward = "bench_coin" if args.tiny else "accuracy"
    model = "tiny random Llama" if args.tiny else Path(args.model or "smollm2-135m").name
    print(f"\n[grpo] {model}, {PROMPTS} prompts x {GROUP} samples, <= {MAX_NEW} new tokens, T={TEMPERATURE}, beta=0, "
          f"one update, {dtype_name} compute over fp32 weights, reward {reward}", flush=True)
    result = {"reward": reward, "dtype": dtype_name, "r1lab": grpo_r1lab(args, device, dtype_name, task, reward)}
    free(device)
    result["trl"] = {"skipped": "--skip-trl"} if args.skip_trl else grpo_trl(args, device, dtype, task, reward)
    free(device)
    ours, trl = result["r1lab"], result["trl"]
    print(f"  r1lab: {ours['sec_per_step']:.2f} s/step (generate+score {ours['sec_generate']:.2f} s, train "
          f"{ours['sec_train']:.2f} s), peak {_gib(ours['peak_gib'])} GiB")
    if "skipped" in trl:
        print(f"  TRL:   skipped: {trl['skipped']}")
    else:
        print(f"  TRL:   {trl['sec_per_step']:.2f} s/step, peak {_gib(trl['peak_gib'])} GiB")
        result["speedup"] = trl["sec_per_step"] / ours["sec_per_step"]
        print(f"  speed-up of r1lab over TRL (TRL s/step / r1lab s/step): {result['speedup']:.2f}x", flush=True)
    return result


# -------------------------------------------------------------------------------------------------- MFU
def training_flops(model, packs) -> float:
    """FLOPs of one forward + backward over ``packs`` (see the module docstring for the formula)."""
    c = model.config
    layer_params = sum(p.numel() for p in model.get_decoder().layers.parameters())
    attn_width = c.num_attention_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    total = 0.0
    for pk in packs:  # rows here have no padding: every position is a real token
        pairs = sum((end - start) * shared + (end - start) * (end - start + 1) // 2
                    for row in pk.segments for start, end, shared in row)
        total += (6 * layer_params * pk.input_ids.numel() + 6 * c.hidden_size * c.vocab_size * len(pk.targets)
                  + 12 * c.num_hidden_layers * attn_width * pairs)
    return total


def grpo_update(model, device, dtype_name: str, sizes: dict):
    """A GRPO update over synthetic groups (random tokens, alternating advantages) and its packed micro-batches."""
    gen = torch.Generator().manual_seed(0)
    vocab, G, P, C = model.config.vocab_size, 8, sizes["prompt"], sizes["completion"]
    groups = []
    for i in range(sizes["groups"]):
        completions = [Completion(i, torch.randint(2, vocab, (C,), generator=gen).tolist(), [-math.log(vocab)] * C,
                                  "length") for _ in range(G)]
        groups.append(Group(example={}, prompt=Prompt(tuple(torch.randint(2, vocab, (P,), generator=gen).tolist())),
                            completions=completions, advantages=[1.0 if k % 2 else -1.0 for k in range(G)]))
    cfg = ZeroConfig(beta=0.0, updates_per_batch=1, group_size=G, device=str(device), dtype=dtype_name,
                     warmup_steps=0, steps=10, lr_schedule="constant")
    policy = Policy(model, types.SimpleNamespace(pad_token_id=0), cfg)
    size = cfg.groups_per_micro_batch  # packed as update_policy packs them
    packs = [pack([(g.prompt_ids, [c.token_ids for c in g.completions]) for g in groups[i:i + size]], 0)
             for i in range(0, len(groups), size)]
    return lambda: grpo.update_policy(policy, groups, cfg), packs


def sft_update(model, dtype: torch.dtype, sizes: dict):
    """An SFT step over synthetic samples sharing a prompt prefix, packed into rows, and its packed rows."""
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prefix = torch.randint(2, vocab, (sizes["shared"],), generator=gen).tolist()
    samples = [(prefix + torch.randint(2, vocab, (sizes["prompt"] - sizes["shared"],), generator=gen).tolist(),
                torch.randint(2, vocab, (int(torch.randint(*sizes["reply"], (1,), generator=gen)),),
                              generator=gen).tolist()) for _ in range(sizes["samples"])]
    rows = pack_rows(samples, sizes["row_tokens"])
    optimizer, _ = make_optimizer(model, 1e-5, 0.0, 0, 10, "constant")
    return lambda: sft_step(model, optimizer, rows, 0, 1.0, dtype), [pack_samples([row], 0) for row in rows]


def mfu_part(args, device, dtype, peak: float) -> list[dict]:
    dtype_name = DTYPE_NAMES[dtype]
    small = args.tiny
    grpo_sizes = {"groups": 2 if small else 8, "prompt": args.prompt_tokens, "completion": args.new_tokens}
    sft_sizes = {"samples": 8 if small else 64, "shared": args.prompt_tokens // 2, "prompt": args.prompt_tokens,
                 "reply": (args.new_tokens // 2, args.new_tokens * 3 // 2), "row_tokens": 256 if small else 4096}
    reps = 1 if small else 3
    print(f"\n[mfu] {dtype_name} compute over fp32 weights; peak = measured matmul {peak / 1e12:.3g} TFLOP/s\n"
          f"  FLOPs = 6 x layer params x positions + 6 x hidden x vocab x scored + 12 x layers x heads x head_dim x "
          f"pairs attended")
    print(f"  {'model':<8}{'stage':<6}{'tokens':>8}{'scored':>8}{'s/update':>10}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>10}")
    rows = []
    for shape in args.shapes:
        for stage in ("grpo", "sft"):
            row = {"model": shape, "stage": stage, "dtype": dtype_name}
            model = step = packs = None
            try:
                with peak_memory(device, row):
                    model, _ = random_model(shape, device, torch.float32)  # fp32 master weights
                    model.train()
                    step, packs = (grpo_update(model, device, dtype_name, grpo_sizes) if stage == "grpo"
                                   else sft_update(model, dtype, sft_sizes))
                    flops = training_flops(model, packs)
                    step()  # warm-up: allocator, kernels, AdamW state
                    seconds = statistics.mean(timed(device, step)[1] for _ in range(reps))
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"out of memory: {e}"[:300]
                print(f"  {shape:<8}{stage:<6}  out of memory", flush=True)
            else:
                row.update(tokens=sum(pk.input_ids.numel() for pk in packs),
                           scored=sum(len(pk.targets) for pk in packs), flops=flops, seconds=seconds,
                           flops_per_second=flops / seconds, mfu=flops / seconds / peak)
                print(f"  {shape:<8}{stage:<6}{row['tokens']:>8}{row['scored']:>8}{seconds:>10.3f}"
                      f"{row['flops_per_second'] / 1e12:>9.3g}{row['mfu']:>7.1%}{_gib(row['peak_gib']):>10}",
                      flush=True)
            rows.append(row)
            model = step = packs = None
            free(device)
    return rows


# ------------------------------------------------------------------------------------------------- main
def _gib(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="compute precision: auto (bf16 on a GPU, fp32 on a CPU) | "
                                                        "fp32 | bf16 | fp16")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama and small sizes: a quick smoke run")
    parser.add_argument("--model", help="also decode with this model, and train GRPO on it: a path to a .gguf or HF "
                                        "folder (on a lent GPU, the embedded GGUF; see ../shared/GPU.md)")
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run, comma-separated: decode,grpo,mfu")
    parser.add_argument("--shapes", help="random-weight shapes for decode and mfu, comma-separated, from "
                                         f"{', '.join(SHAPES)}; 'none' for none (default: 0.5b,1.5b; tiny with --tiny)")
    parser.add_argument("--batches", type=_ints, help="decode batch sizes (default 32,64,128; 4,8 with --tiny)")
    parser.add_argument("--prompt-tokens", type=int, help="decode/mfu prompt length (default 120; 16 with --tiny)")
    parser.add_argument("--new-tokens", type=int, help="decode/mfu new tokens (default 256; 16 with --tiny)")
    parser.add_argument("--no-compile", action="store_true", help="leave out HF generate with a compiled static cache")
    parser.add_argument("--grpo-steps", type=int, help="r1lab GRPO steps, the first untimed (default 4; 2 with --tiny)")
    parser.add_argument("--trl-steps", type=int, help="TRL GRPO steps, the first untimed (default 3; 2 with --tiny)")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = all cores")
    parser.add_argument("--json", help="write every result to this JSON file (rewritten after each part)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.only = [p for p in PARTS if p in args.only.split(",")]
    shapes = args.shapes or ("tiny" if args.tiny else "0.5b,1.5b")
    args.shapes = [] if shapes == "none" else shapes.split(",")
    if set(args.shapes) - set(SHAPES):
        parser.error(f"--shapes: unknown {sorted(set(args.shapes) - set(SHAPES))}; choose from {', '.join(SHAPES)}")
    defaults = dict(batches=[4, 8], prompt_tokens=16, new_tokens=16, grpo_steps=2, trl_steps=2) if args.tiny else \
        dict(batches=[32, 64, 128], prompt_tokens=120, new_tokens=256, grpo_steps=4, trl_steps=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    use_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
               "dtype": str(dtype), "args": {k: v for k, v in vars(args).items()}}
    print(f"{name}: torch {torch.__version__}, transformers {transformers.__version__}, compute {dtype}", flush=True)

    bw = bandwidth(device, args.tiny)
    peak = matmul_peak(device, dtype if device.type == "cuda" else torch.float32, args.tiny)
    free(device)
    results["bandwidth_bytes_per_second"], results["matmul_flops_per_second"] = bw, peak
    print(f"measured: memory bandwidth {bw / 1e9:.0f} GB/s (copy), matmul {peak / 1e12:.3g} TFLOP/s "
          f"({'8192^3 ' + str(dtype) if device.type == 'cuda' else 'fp32'})", flush=True)

    save = (lambda: write_json(Path(args.json), results)) if args.json else (lambda: None)
    save()
    if "decode" in args.only:
        results["decode"] = decode_part(args, device, dtype, bw)
        save()
    if "grpo" in args.only:
        results["grpo"] = grpo_part(args, device, dtype)
        save()
    if "mfu" in args.only:
        results["mfu"] = mfu_part(args, device, dtype, peak)
        save()
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
