"""Write a transformers causal LM and its tokenizer as one GGUF file, through the ``gguf`` package (llama.cpp's).

The layout mirrors what llama.cpp's converter writes for a Llama or Qwen2 model, and what the SmolLM2 GGUF r1lab
embeds holds: ``{arch}.*`` hyper-parameters, a byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``: tokens,
token types, merges, the pre-tokenizer's name, special ids), the chat template, and the weights under llama.cpp's
tensor names. Two details are easy to miss:

- llama.cpp applies rotary embeddings to adjacent pairs of a head's dimensions, HF Llama to its two halves, so
  Llama's q and k rows are permuted per head (:func:`rope_permute`); transformers undoes it when it reads a GGUF.
  Qwen2 uses the halves in llama.cpp too (NeoX rope), so its weights go as they are.
- Norms (1-D tensors) stay f32 in every format, as llama.cpp expects; ``q8_0`` quantises each matrix whose rows
  split into blocks of 32 and writes the rest as f16.

Left out: sentencepiece vocabularies (``tokenizer.ggml.model = llama``), rope scaling other than linear, and
architectures other than Llama and Qwen2 (:data:`ARCHITECTURES`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

#: HF ``model_type`` -> (GGUF architecture, whether q/k are permuted for llama.cpp's rope)
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}
QUANTS = ("f16", "q8_0")

#: byte-level pre-tokenizer regexes (``tokenizer.json``'s ``Split`` pattern) by llama.cpp's ``tokenizer.ggml.pre``
_SPLITS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def check_supported(model) -> tuple[str, bool]:
    """``(gguf architecture, permute q/k)`` for ``model``, or a ValueError naming what is supported."""
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"cannot export a {kind!r} model ({type(model).__name__}) to GGUF; r1lab exports "
                         f"{', '.join(ARCHITECTURES)} models (llama covers SmolLM, TinyLlama, Llama 2/3 without rope "
                         "scaling, Mistral-like Llamas); for others use llama.cpp's convert_hf_to_gguf.py")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported by r1lab export (only none or "
                         "linear); use llama.cpp's convert_hf_to_gguf.py")
    return ARCHITECTURES[kind]


def _rope_parameters(config) -> dict:
    """``rope_theta`` and the scaling settings, from transformers 5's ``rope_parameters`` or the older fields."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if "factor" in scaling:
        rope.setdefault("factor", scaling["factor"])
    return rope


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half layout of q or k rows (weight or bias) -> llama.cpp's interleaved pairs, per head: within
    each head, rows ``[x0..x(d/2-1), y0..y(d/2-1)]`` become ``[x0, y0, x1, y1, ...]``.

    >>> rope_permute(np.arange(8), heads=2).tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rest = weight.shape[1:]
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, arch: str, permute: bool, quant: str):
    """``(gguf name, array, raw_dtype or None)`` for each weight, converted for ``quant``."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd for the output when there is no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"tensor {hf_name} {tuple(tensor.shape)} has no GGUF name for {arch}; this model is not a "
                             "plain one r1lab can export")
        array = tensor.detach().to("cpu", torch.float32).numpy()
        if permute and (".attn_q." in name or ".attn_k." in name):
            array = rope_permute(array, heads if ".attn_q." in name else kv_heads)
        yield (name, *_converted(array, quant))


def _converted(array: np.ndarray, quant: str) -> tuple[np.ndarray, object]:
    import gguf

    if array.ndim < 2:
        return array.astype(np.float32), None
    if quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def vocabulary(tokenizer, vocab_size: int) -> dict:
    """A byte-level BPE tokenizer as GGUF metadata: tokens, token types, merges and the pre-tokenizer's name.
    Added tokens are control tokens when special (``<|im_end|>``) and user-defined otherwise (``<think>``);
    ids the model has beyond the tokenizer's vocabulary are unused ``[PADn]`` tokens, as llama.cpp writes them."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer; r1lab exports fast (tokenizer.json) ones")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or model.get("byte_fallback") or pre is None:
        raise ValueError("r1lab exports byte-level BPE tokenizers (GPT-2 style: SmolLM, Qwen2, Llama 3); this one is "
                         f"{model.get('type')} with pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]}; use "
                         "llama.cpp's convert_hf_to_gguf.py")
    ids = {i: token for token, i in tokenizer.get_vocab().items()}
    if len(ids) > vocab_size:
        raise ValueError(f"the tokenizer has {len(ids)} tokens but the model only {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in ids:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(ids[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name (``tokenizer.ggml.pre``) for a ``tokenizer.json`` pre-tokenizer, or None if unknown.

    >>> pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    'gpt-2'
    """
    if not pre:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        return next((name for name, split in _SPLITS.items() if split == pattern), None)
    return None


def special_ids(tokenizer, config) -> dict:
    """bos/eos/unk/pad ids and whether encoding adds BOS or EOS, as the tokenizer does it."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(config, "bos_token_id", None)
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return {"bos": bos, "eos": eos, "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id,
            "add_bos": len(full) > len(plain) and full[0] == bos, "add_eos": len(full) > len(plain) and full[-1] == eos}


def write_gguf(model, tokenizer, path: Path, quant: str, chat_template: str | None, metadata: dict) -> Path:
    """Write ``model`` + ``tokenizer`` to ``path`` atomically: a hidden partial file beside it, synced, renamed into
    place only when complete (a crash never leaves a half file under the final name). ``metadata``: ``general.*``
    extras (``name``, ``license``, ``temperature``, ``top_p``) and ``r1lab.*`` keys (any other key)."""
    import gguf

    arch, permute = check_supported(model)
    config = model.config
    vocab = vocabulary(tokenizer, config.vocab_size)
    ids = special_ids(tokenizer, config)
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch)
    try:
        metadata = dict(metadata)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(metadata.pop("name"))
        if metadata.get("license"):
            writer.add_license(metadata.pop("license"))
        metadata.pop("license", None)
        writer.add_sampling_temp(metadata.pop("temperature"))
        writer.add_sampling_top_p(metadata.pop("top_p"))
        for key, value in metadata.items():
            writer.add_string(f"r1lab.{key}", str(value))
        _add_hyperparameters(writer, config)
        writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        writer.add_add_space_prefix(False)
        for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
            if ids[key] is not None:
                add(ids[key])
        writer.add_add_bos_token(ids["add_bos"])
        writer.add_add_eos_token(ids["add_eos"])
        if chat_template:
            writer.add_chat_template(chat_template)
        for name, array, raw_dtype in gguf_tensors(model, arch, permute, quant):
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=sys.stderr.isatty())
        writer.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return path


def _add_hyperparameters(writer, config) -> None:
    rope = _rope_parameters(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
