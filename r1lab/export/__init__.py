"""``r1lab export``: a checkpoint (or a run's final one) as one GGUF file for llama.cpp, with an ollama Modelfile.

The steps, each its own function: find the checkpoint a run folder names (:func:`find_checkpoint`), load it (a LoRA
model merged), write the GGUF (:mod:`r1lab.export.writer`) with the chat template the run was trained with
(:mod:`r1lab.export.templates`) and R1's sampling defaults, write the Modelfile, then load the file back with
transformers and compare logits and token ids with the checkpoint (:func:`check_export`). Files appear under their
final names only when complete, and an existing one is replaced only with ``--force``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from r1lab.chat import TEMPLATES, render
from r1lab.export.templates import go_template, jinja_template, modelfile, r1lab_format, rendered_check
from r1lab.export.writer import ARCHITECTURES, QUANTS, write_gguf
from r1lab.files import CHECKPOINT_MARKER, write_atomic

#: R1's recommended sampling (the paper's evaluation setting), written into the GGUF and the Modelfile
SAMPLING = {"temperature": 0.6, "top_p": 0.95}
#: the largest max abs logit difference the check accepts, by format, in standard deviations of the checkpoint's
#: logits. Measured on SmolLM2-135M after 2 GRPO steps: f16 0.11, q8_0 0.19 (the untrained embedded model's weights
#: come from a Q4_1 file and are almost exact in f16: 0.005); a wrong tensor layout or vocabulary differs by several
MAX_LOGIT_DIFF = {"f16": 0.25, "q8_0": 0.5}

__all__ = ["ARCHITECTURES", "MAX_LOGIT_DIFF", "QUANTS", "SAMPLING", "check_export", "export_model", "find_checkpoint"]


def find_checkpoint(source: str) -> str:
    """The checkpoint ``source`` names: a checkpoint folder itself; a run folder's ``final/``; a pipeline run's
    ``pipeline.json`` ``final_checkpoint`` (else its last stage folder with a ``final/``); or a model name r1lab
    loads (the embedded ``smollm2-135m``, a hub id, a .gguf file), returned as it is."""
    path = Path(source).expanduser()
    if not path.is_dir():
        if path.exists() and path.suffix != ".gguf":
            raise FileNotFoundError(f"{source} is a file: pass a run folder, a checkpoint folder or a model name")
        if not path.exists() and source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"{source} does not exist: pass a run folder, a checkpoint folder or a model name")
        return source
    if (path / "config.json").is_file():
        if not (path / CHECKPOINT_MARKER).is_file() and path.name.startswith(("step-", "final")):
            raise FileNotFoundError(f"{path} is an incomplete checkpoint (no {CHECKPOINT_MARKER}: its run was stopped "
                                    "while writing it); pick another one")
        return str(path)
    named = _pipeline_final(path)
    if named is not None:
        return named
    stage_finals = [stage / sub for stage in _stages(path) for sub in ("zero/final", "sft/final", "student/final",
                                                                         "final")]
    for candidate in [path / "final", *stage_finals]:
        if (candidate / CHECKPOINT_MARKER).is_file():
            return str(candidate)
    if (path / "final").exists():
        raise FileNotFoundError(f"{path / 'final'} is incomplete (no {CHECKPOINT_MARKER}); the run did not finish")
    steps = sorted(path.glob("checkpoints/step-*/" + CHECKPOINT_MARKER))
    hint = f"; its last checkpoint is {steps[-1].parent}, pass that to export it" if steps else ""
    raise FileNotFoundError(f"{path} holds no finished checkpoint (no final/ with {CHECKPOINT_MARKER}, no config.json)"
                            f"{hint}")


def _pipeline_final(run: Path) -> str | None:
    """``pipeline.json``'s ``final_checkpoint``, found as written, beside the run, or as a model name."""
    try:
        saved = json.loads((run / "pipeline.json").read_text())
        final, in_run = saved.get("final_checkpoint"), saved.get("final_checkpoint_in_run")
    except (OSError, ValueError, AttributeError):
        return None
    if not final:
        return None
    inside = [run / in_run] if isinstance(in_run, str) and in_run else []  # wherever the run is, wherever we are
    for candidate in (*inside, Path(final), run / final, run / Path(final).name, run.parent / final):
        if (candidate / CHECKPOINT_MARKER).is_file() or (candidate / "config.json").is_file():
            return str(candidate)
    if Path(final).is_absolute() or (run / Path(final).parts[0]).exists():
        raise FileNotFoundError(f"{run}/pipeline.json names {final} as the final checkpoint, which does not exist")
    return final  # the starting model, by name (a pipeline with no training stage)


def _stages(run: Path) -> list[Path]:
    """A pipeline run's stage folders (``0-base``, ``1-coldstart``...), last first."""
    stages = [p for p in run.iterdir() if p.is_dir() and re.match(r"\d+-", p.name)]
    return sorted(stages, key=lambda p: int(p.name.split("-")[0]), reverse=True)


def _recorded(checkpoint: str) -> dict:
    """What r1lab wrote in a checkpoint's marker (template, prefill, license...); {} for other models."""
    try:
        meta = json.loads((Path(checkpoint) / CHECKPOINT_MARKER).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def export_model(source: str, gguf: str, quant: str = "f16", template: str | None = None,
                 modelfile_name: str = "Modelfile", force: bool = False, check: bool = True,
                 max_logit_diff: float = 0.0, log=print) -> dict:
    """Export ``source`` (see :func:`find_checkpoint`) to the GGUF file ``gguf``; returns what was written and
    measured. ``template``: the chat template written (None: the one the checkpoint was trained with, else
    ``native``). ``check``: load the file back and compare (raises ValueError above ``max_logit_diff``; 0 = the
    format's :data:`MAX_LOGIT_DIFF` times the standard deviation of the checkpoint's logits)."""
    from r1lab.models import EMBEDDED, load_model

    if quant not in QUANTS:
        raise ValueError(f"quant={quant!r}: choose one of {', '.join(QUANTS)}")
    out = Path(gguf).expanduser()
    if out.suffix != ".gguf":
        raise ValueError(f"--gguf {gguf}: name the file to write, ending in .gguf")
    side = out.parent / modelfile_name if modelfile_name else None
    existing = [str(p) for p in (out, side) if p is not None and p.exists()]
    if existing and not force:
        raise FileExistsError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "pass --force true to replace, or choose another --gguf")
    checkpoint = find_checkpoint(source)
    recorded = _recorded(checkpoint)
    if template is None:
        template = recorded.get("template") or "native"
        prefill = recorded.get("prefill") if recorded.get("template") else None
    else:
        prefill = recorded.get("prefill") if template == recorded.get("template") else None
    if template not in TEMPLATES:
        raise ValueError(f"template {template!r}: choose one of {', '.join(TEMPLATES)}")

    t0 = time.perf_counter()
    log(f"r1lab export: loading {checkpoint} ...")
    model, tokenizer = load_model(checkpoint)
    if hasattr(model, "merge_and_unload"):  # a LoRA model: its adapters folded into the weights
        model = model.merge_and_unload()
    model.eval()
    if template == "native" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{checkpoint} has no chat template of its own; export with --template r1 or r1zero")
    fmt = r1lab_format(template, tokenizer, prefill)
    if fmt is not None:
        rendered_check(fmt, template, tokenizer, prefill)
    chat_template = tokenizer.chat_template if template == "native" and not prefill else jinja_template(fmt)
    license = recorded.get("license") or EMBEDDED.get(checkpoint, {}).get("license")
    metadata = {"name": _name(checkpoint), "license": license, **SAMPLING,
                "source": source, "checkpoint": checkpoint, "template": template}
    log(f"r1lab export: writing {out} ({quant}, template {template}) ...")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(model, tokenizer, out, quant, chat_template, metadata)
    seconds = time.perf_counter() - t0
    summary = {"gguf": str(out), "bytes": out.stat().st_size, "quant": quant, "checkpoint": checkpoint,
               "template": template, "seconds": seconds}
    if side is not None:
        stops = _stops(tokenizer, fmt, checkpoint)
        write_atomic(side, modelfile(out.name, go_template(fmt) if fmt else None, stops, source=source, **SAMPLING))
        summary["modelfile"] = str(side)
    if check:
        log(f"r1lab export: checking {out.name} against the checkpoint (transformers reads it back) ...")
        t1 = time.perf_counter()
        summary["check"] = check_export(model, tokenizer, out, template, prefill)
        summary["check"]["seconds"] = time.perf_counter() - t1
        bound = max_logit_diff or MAX_LOGIT_DIFF[quant] * summary["check"]["logit_std"]
        summary["check"]["bound"] = bound
        if not summary["check"]["max_abs_logit_diff"] <= bound:
            raise ValueError(f"check failed: the GGUF's logits differ from the checkpoint's by up to "
                             f"{summary['check']['max_abs_logit_diff']:.3g} (bound {bound:.3g} for {quant}); the file "
                             f"is written ({out}) but should not be trusted")
        if summary["check"]["token_mismatches"]:
            raise ValueError(f"check failed: the GGUF's tokenizer encodes differently from the checkpoint's: "
                             f"{summary['check']['token_mismatches'][:3]}")
        if not summary["check"]["chat_template_matches"]:
            raise ValueError(f"check failed: the GGUF's chat template renders differently from r1lab's {template}")
    return summary


def _name(checkpoint: str) -> str:
    """``general.name``: a model's name, or ``RUN-final`` / ``RUN-step-N`` for a run's checkpoint."""
    path = Path(checkpoint)
    if not path.is_dir():
        return checkpoint
    return f"{path.parent.name}-{path.name}" if path.name == "final" or path.name.startswith("step-") else path.name


def _stops(tokenizer, fmt, checkpoint: str) -> list[str]:
    """The Modelfile's stop strings: the end-of-sequence token, the format's end of turn, and the run's own stop
    strings (``stop`` in its config.yaml, e.g. ``</answer>``)."""
    import yaml

    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    stops += list(fmt.stop) if fmt is not None else []
    for folder in list(Path(checkpoint).parents)[:3] if Path(checkpoint).is_dir() else []:
        try:
            config = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        stops += [s for s in (config or {}).get("stop") or [] if isinstance(s, str)]
        break
    return list(dict.fromkeys(s for s in stops if s))


def check_prompts(template: str, tokenizer, prefill: str | None = None) -> list[str]:
    """The texts the check compares on: a few chats rendered with ``template``, and plain text."""
    questions = ["What is 17 + 25?", "Write a haiku about the sea.", "Name three prime numbers."]
    chats = [render([{"role": "user", "content": q}], template, tokenizer, prefill).text for q in questions]
    return chats + ["The quick brown fox jumps over the lazy dog. 12345 + 678 = ?"]


def check_export(model, tokenizer, gguf_path: Path, template: str, prefill: str | None = None) -> dict:
    """Load ``gguf_path`` with transformers and compare with ``model``: the max abs logit difference and top-1
    agreement over every position of :func:`check_prompts`, and token ids of those texts and of tricky strings
    (chat markers, think tags, non-ASCII, whitespace) through both tokenizers."""
    import torch

    from r1lab.models import load_model

    exported, exported_tokenizer = load_model(str(gguf_path))
    exported.eval()
    prompts = check_prompts(template, tokenizer, prefill)
    diffs, stds, agree, positions = [], [], 0, 0
    with torch.no_grad():
        for text in prompts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            a, b = model(ids).logits[0].float(), exported(ids).logits[0].float()  # (T, V)
            diffs.append((a - b).abs().max().item())
            stds.append(a.std().item())
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            positions += a.shape[0]
    strings = prompts + ["<think>\n2+3=5\n</think>\n\n<answer>5</answer>", "héllo wörld, 世界 🙂 — ok",
                         "  two  spaces\tand\ttabs\n\nnewlines  ", "x = [1, 22, 333, 4444]"]
    strings += [t for t in (tokenizer.eos_token, tokenizer.bos_token) if t]
    mismatches = []
    for s in strings:
        ids = tokenizer(s)["input_ids"]
        if ids != exported_tokenizer(s)["input_ids"] or tokenizer.decode(ids) != exported_tokenizer.decode(ids):
            mismatches.append(s)
    messages = [{"role": "user", "content": "What is 2+3?"}]
    template_ok = exported_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        render(messages, template, tokenizer, prefill).text
    return {"max_abs_logit_diff": max(diffs), "logit_std": sum(stds) / len(stds),
            "top1_agreement": agree / positions, "positions": positions, "prompts": len(prompts),
            "strings": len(strings), "token_mismatches": mismatches, "chat_template_matches": template_ok}
