"""r1lab export: tiny random Llama / Qwen2 models with a byte-level BPE tokenizer, built in-process, written as GGUF,
read back by transformers (and llama.cpp where installed) and compared with the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from r1lab.chat import TEMPLATES, render
from r1lab.export import MAX_LOGIT_DIFF, export_model, find_checkpoint
from r1lab.export.templates import go_template, jinja_template, modelfile, r1lab_format, render_format
from r1lab.export.writer import rope_permute
from r1lab.files import CHECKPOINT_MARKER
from r1lab.models import save_checkpoint

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokenizer():
    """A GPT-2 style byte-level BPE tokenizer: 256 byte symbols, a few merges, ChatML control tokens and
    ``<think>`` tags as plain added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("1", "2")]
    vocab = {s: i for i, s in enumerate(symbols + ["".join(m) for m in merges])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = CHATML
    return tok


def tiny_model(tokenizer, kind: str = "llama", extra_vocab: int = 3, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    shape = dict(vocab_size=len(tokenizer) + extra_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True, rope_theta=10000.0))
    else:  # untied output, attention biases
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False, rope_theta=10000.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.ndim > 1 else p.add_(0.05 * torch.randn_like(p))  # peaked logits, random biases
    return model.eval()


@pytest.fixture
def run(tmp_path):
    """A finished run folder ``run/final`` holding a tiny Llama trained (so its marker says) with ``native``."""
    tok = byte_tokenizer()
    save_checkpoint(tiny_model(tok), tok, tmp_path / "run" / "final", meta={"template": "native", "prefill": None})
    return tmp_path / "run"


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader.tensors


def test_rope_permute_is_undone_by_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.random.default_rng(0).normal(size=(8 * 16, 24)).astype(np.float32)
    undo = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 8})
    assert np.array_equal(undo._reverse_permute_weights(rope_permute(weight, 8), 8, 8), weight)
    assert not np.array_equal(rope_permute(weight, 8), weight)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_export_reads_back_with_the_checkpoints_logits_and_tokens(run, tmp_path, quant):
    out = tmp_path / quant / "tiny.gguf"
    s = export_model(str(run), str(out), quant=quant, log=lambda _: None)
    c = s["check"]
    assert s["checkpoint"] == str(run / "final") and s["template"] == "native"
    assert c["max_abs_logit_diff"] < {"f16": 0.05, "q8_0": 1.0}[quant]
    assert c["max_abs_logit_diff"] < c["bound"] == MAX_LOGIT_DIFF[quant] * c["logit_std"]
    assert c["top1_agreement"] > 0.9 and not c["token_mismatches"] and c["chat_template_matches"]

    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "run-final"
    assert fields["general.sampling.temp"] == pytest.approx(0.6) and fields["general.sampling.top_p"] == pytest.approx(0.95)
    assert fields["r1lab.source"] == str(run) and fields["r1lab.template"] == "native"
    assert fields["tokenizer.chat_template"] == CHATML and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == byte_tokenizer().eos_token_id
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert types[tokens.index("<|im_end|>")] == 3 and types[tokens.index("<think>")] == 4  # control, user-defined
    assert tokens[-1].startswith("[PAD") and types[-1] == 5  # embeddings beyond the tokenizer: unused
    kinds = {t.name: t.tensor_type.name for t in tensors}
    assert "output.weight" not in kinds and kinds["blk.0.attn_norm.weight"] == "F32"  # tied; norms stay f32
    assert kinds["blk.0.attn_q.weight"] == {"f16": "F16", "q8_0": "Q8_0"}[quant]

    text = (out.parent / "Modelfile").read_text()
    assert "FROM ./tiny.gguf\n" in text and "PARAMETER temperature 0.6\n" in text and "PARAMETER top_p 0.95\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and '{{ "<|im_start|>user\\n" }}{{- if $system }}' in text


def test_qwen2_with_biases_and_untied_output(tmp_path):
    tok = byte_tokenizer()
    folder = save_checkpoint(tiny_model(tok, "qwen2", extra_vocab=0), tok, tmp_path / "qwen")
    s = export_model(str(folder), str(tmp_path / "q.gguf"), log=lambda _: None)
    assert s["check"]["max_abs_logit_diff"] < 0.05
    fields, tensors = read_gguf(tmp_path / "q.gguf")
    names = {t.name for t in tensors}
    assert fields["general.architecture"] == "qwen2" and {"output.weight", "blk.0.attn_q.bias"} <= names


def test_r1_run_gets_a_template_that_opens_the_think_block(tmp_path):
    from r1lab.models import load_model

    tok = byte_tokenizer()
    save_checkpoint(tiny_model(tok), tok, tmp_path / "run" / "final", meta={"template": "r1"})
    out = tmp_path / "r1.gguf"
    s = export_model(str(tmp_path / "run"), str(out), log=lambda _: None)
    assert s["template"] == "r1" and s["check"]["chat_template_matches"]
    _, exported_tok = load_model(str(out))
    chat = [{"role": "user", "content": "What is 2+3?"}]
    text = exported_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜><think>\n" == render(chat, "r1").text
    modelfile_text = (tmp_path / "Modelfile").read_text()
    assert '{{ "<｜Assistant｜><think>\\n" }}' in modelfile_text and 'PARAMETER stop "<｜end▁of▁sentence｜>"' in modelfile_text


CHATS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "<think>\nsay hi\n</think>\n\nHello!"}, {"role": "user", "content": "7*6?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_generated_templates_render_as_r1lab(template):
    """The Jinja written into the GGUF (rendered by transformers) and the pieces the ollama template is made of both
    give r1lab's own prompt text, system prompt folded and old reasoning dropped."""
    tok = byte_tokenizer()
    fmt = r1lab_format(template, tok)
    exported = byte_tokenizer()
    exported.chat_template = tok.chat_template if template == "native" else jinja_template(fmt)
    for chat in CHATS:
        exported_text = exported.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        if template == "native" and chat[0]["role"] == "system":
            continue  # the model's own template keeps its system turn and the reasoning sent back to it
        assert exported_text == render(chat, template, tok).text == render_format(fmt, chat)
    go = go_template(fmt)
    assert all(line.startswith("{{-") for line in go.splitlines())  # no template whitespace reaches the prompt
    assert json.dumps(fmt.reply, ensure_ascii=False) in go


def test_native_template_that_is_not_a_turn_format_keeps_its_jinja_without_an_ollama_template():
    tok = byte_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"  # numbers turns
    assert r1lab_format("native", tok) is None
    with pytest.raises(ValueError, match="--template native"):
        r1lab_format("native-zero", tok)
    text = modelfile("m.gguf", None, ["<|im_end|>"], 0.6, 0.95, source="x")
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "") and "FROM ./m.gguf" in text


def test_refuses_to_overwrite_without_force_and_never_leaves_half_a_file(run, tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    export_model(str(run), str(out), check=False, log=lambda _: None)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        export_model(str(run), str(out), check=False, log=lambda _: None)
    (tmp_path / "Modelfile").unlink()
    with pytest.raises(FileExistsError, match="m.gguf already exists"):
        export_model(str(run), str(out), check=False, log=lambda _: None)

    import r1lab.export.writer as writer

    def crash(*args, **kwargs):
        yield from []
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(writer, "gguf_tensors", crash)
    with pytest.raises(RuntimeError, match="killed"):
        export_model(str(run), str(out), force=True, check=False, log=lambda _: None)
    assert out.read_bytes() == before and not list(tmp_path.glob(".*partial"))  # the old file, whole; no leftovers
    monkeypatch.undo()
    export_model(str(run), str(out), quant="q8_0", force=True, check=False, log=lambda _: None)
    assert out.stat().st_size < len(before)


def test_errors_name_the_problem(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="does not exist|not a folder"):
        export_model(str(tmp_path / "nowhere"), str(tmp_path / "x.gguf"), log=lambda _: None)
    (run / "final" / CHECKPOINT_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        find_checkpoint(str(run))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        find_checkpoint(str(run / "final"))
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    folder = save_checkpoint(gpt2, tok, tmp_path / "gpt2")
    with pytest.raises(ValueError, match="llama, qwen2"):
        export_model(str(folder), str(tmp_path / "g.gguf"), log=lambda _: None)
    assert not (tmp_path / "g.gguf").exists()
    with pytest.raises(ValueError, match="ending in .gguf"):
        export_model(str(folder), str(tmp_path / "g.bin"), log=lambda _: None)


def test_finds_a_pipeline_runs_final_checkpoint(tmp_path):
    tok = byte_tokenizer()
    model = tiny_model(tok)
    pipe = tmp_path / "pipe"
    for stage in ("1-coldstart", "2-reasoning-rl", "10-later"):
        save_checkpoint(model, tok, pipe / stage / "final", meta={"template": "r1"})
    (pipe / "10-later" / "final" / CHECKPOINT_MARKER).unlink()  # interrupted: not finished
    assert find_checkpoint(str(pipe)) == str(pipe / "2-reasoning-rl" / "final")
    (pipe / "pipeline.json").write_text(json.dumps({"final_checkpoint": str(pipe / "1-coldstart" / "final")}))
    assert find_checkpoint(str(pipe)) == str(pipe / "1-coldstart" / "final")
    (pipe / "pipeline.json").write_text(json.dumps({"final_checkpoint": "smollm2-135m"}))
    assert find_checkpoint(str(pipe)) == "smollm2-135m"  # no training stage: the starting model, by name
    assert find_checkpoint("smollm2-135m") == "smollm2-135m"


def test_a_pipeline_run_is_found_from_anywhere_and_its_stage_checkpoints_without_pipeline_json(tmp_path,
                                                                                              monkeypatch):
    tok = byte_tokenizer()
    model = tiny_model(tok)
    pipe = tmp_path / "work" / "runs" / "r1"
    save_checkpoint(model, tok, pipe / "2-reasoning-rl" / "zero" / "final", meta={"template": "r1"})
    save_checkpoint(model, tok, pipe / "3-rejection-sft" / "sft" / "final", meta={"template": "r1"})
    assert find_checkpoint(str(pipe)) == str(pipe / "3-rejection-sft" / "sft" / "final")  # the last stage's
    (pipe / "pipeline.json").write_text(json.dumps({"final_checkpoint": "runs/r1/2-reasoning-rl/zero/final",
                                                    "final_checkpoint_in_run": "2-reasoning-rl/zero/final"}))
    monkeypatch.chdir(tmp_path)  # not where the pipeline ran: its relative path means nothing here
    assert find_checkpoint(str(pipe)) == str(pipe / "2-reasoning-rl" / "zero" / "final")


def test_cli_prints_the_check(run, tmp_path, capsys):
    from r1lab.cli import main

    out = tmp_path / "cli" / "m.gguf"
    assert main(["export", str(run), "--gguf", str(out), "--quant", "q8_0", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference|" in printed and "ollama create" in printed and out.is_file()
    assert main(["export", str(run), "--gguf", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run), "--gguf", str(tmp_path / "m.bin")]) == 2


@pytest.mark.slow
def test_llama_cpp_generates_the_checkpoints_greedy_tokens(run, tmp_path):
    """llama.cpp (llama-cpp-python) reads the exported file: same prompt tokens, same greedy continuation, logits
    close to transformers' on the checkpoint."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from r1lab.models import load_model

    out = tmp_path / "m.gguf"
    export_model(str(run), str(out), check=False, log=lambda _: None)
    model, tok = load_model(str(run / "final"))
    prompt = render([{"role": "user", "content": "What is 12 + 30? Think, then answer."}], "native", tok).text
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
        expected_logits = model(torch.tensor([ids])).logits[0, -1].numpy()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False, logits_all=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    assert np.abs(llm.scores[len(ids) - 1][: len(expected_logits)] - expected_logits).max() < 0.05
    generated = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if token == llm.token_eos() or len(generated) == len(greedy):
            break
        generated.append(token)
    assert generated == greedy[: len(generated)] and len(generated) >= min(len(greedy), 4)


GO_RENDER = """package main

import ("encoding/json"; "os"; "strings"; "text/template")

type Message struct { Role string `json:"role"`; Content string `json:"content"` }

func main() {
	src, _ := os.ReadFile(os.Args[1])
	data, _ := os.ReadFile(os.Args[2])
	var chats [][]Message
	if err := json.Unmarshal(data, &chats); err != nil { panic(err) }
	tmpl := template.Must(template.New("t").Parse(string(src)))
	outs := []string{}
	for _, messages := range chats {
		var b strings.Builder
		if err := tmpl.Execute(&b, map[string]any{"Messages": messages}); err != nil { panic(err) }
		outs = append(outs, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(outs)
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_ollama_template_renders_as_r1lab_in_go(template, tmp_path):
    """The Modelfile's TEMPLATE, executed by Go's text/template (ollama's engine), gives r1lab's prompt text."""
    import shutil
    import subprocess

    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the Go toolchain (go on PATH)")
    (tmp_path / "main.go").write_text(GO_RENDER)
    (tmp_path / "go.mod").write_text("module render\ngo 1.19\n")
    subprocess.run([go, "build", "-o", "render", "."], cwd=tmp_path, check=True, capture_output=True)
    tok = byte_tokenizer()
    fmt = r1lab_format(template, tok)
    (tmp_path / "t.tmpl").write_text(go_template(fmt))
    chats = [*CHATS[:1], *CHATS[2:], [{"role": "system", "content": "S"}, {"role": "user", "content": 'q {{ x }} "\\n'}]]
    (tmp_path / "chats.json").write_text(json.dumps(chats))
    result = subprocess.run([str(tmp_path / "render"), "t.tmpl", "chats.json"], cwd=tmp_path, check=True,
                            capture_output=True, text=True)
    for chat, text in zip(chats, json.loads(result.stdout)):
        expected = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) \
            if template == "native" else render(chat, template, tok).text
        assert text == expected == render_format(fmt, chat)
