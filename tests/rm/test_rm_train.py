"""r1lab rm on a tiny random Llama: the Bradley-Terry loss falls, held-out accuracy rises, the run folder is complete
and the checkpoint loads back with the same scores."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.cli import main
from r1lab.config import RmConfig
from r1lab.rewards.reward_model import encode, load_reward_model
from r1lab.rm.train import bt_loss, freeze_below, pair_values, rm_step, score_pairs, train_rm, value_head_model

from conftest import make_model, make_tokenizer


def separable_pairs(path, n=64):
    """Chosen replies agree politely, rejected ones refuse rudely: a value head can tell them apart."""
    rows = [{"prompt": f"Can you help with task {i}?", "chosen": f"Yes, gladly, task {i}.",
             "rejected": f"No. Go away, {i}!"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from r1lab.models import save_checkpoint

    folder = tmp_path_factory.mktemp("rm")
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, folder / "tiny"))
    cfg = RmConfig(model=model, data=separable_pairs(folder / "pairs.jsonl"), test_size=16, epochs=3, lr=3e-3,
                   train_layers=0, eval_every=3, threads=1, out=str(folder / "run"))
    return cfg, train_rm(cfg, progress=False)


def test_loss_falls_and_held_out_accuracy_rises_on_a_separable_set(finished_run):
    cfg, summary = finished_run
    from pathlib import Path

    history = [json.loads(line) for line in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    evals = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
    assert len(history) == summary["steps"] == 3 * 6 and len(evals) == 6
    assert sum(h["loss"] for h in history[-3:]) / 3 < 0.5 * sum(h["loss"] for h in history[:3]) / 3
    assert summary["held_out"]["accuracy"] == 1.0 and evals[-1] == 1.0
    held = summary["held_out"]
    assert held["ci_low"] <= held["accuracy"] <= held["ci_high"] and held["pairs"] == 16
    assert held["mean_chosen"] > held["threshold"] > held["mean_rejected"]


def test_the_run_folder_has_config_report_plots_metrics_and_a_marked_checkpoint(finished_run):
    cfg, summary = finished_run
    from pathlib import Path

    run = Path(cfg.out)
    assert (run / "config.yaml").read_text().startswith("# r1lab rm\n")
    assert yaml.safe_load((run / "config.yaml").read_text())["test_size"] == 16
    assert (run / "plots" / "loss.png").stat().st_size > 0 and (run / "plots" / "accuracy.png").stat().st_size > 0
    assert "Held-out pairwise accuracy: 100.0%" in (run / "report.md").read_text()
    meta = json.loads((run / "final" / "r1lab_complete.json").read_text())
    assert meta["kind"] == "reward_model" and meta["max_length"] == cfg.max_length
    for key in ("score_mean", "score_std", "threshold", "mean_chosen", "mean_rejected"):
        assert meta[key] == pytest.approx(summary["held_out"][key])
    with pytest.raises(ValueError, match="already holds a finished reward model"):
        train_rm(cfg, progress=False)


def test_the_checkpoint_loads_back_and_scores_as_it_did_in_training(finished_run):
    cfg, summary = finished_run
    rm = load_reward_model(f"{cfg.out}/final", device="cpu")
    prompts = [f"Can you help with task {i}?" for i in range(4)]
    raw = rm.raw_scores(prompts + prompts, [f"Yes, gladly, task {i}." for i in range(4)] +
                        [f"No. Go away, {i}!" for i in range(4)])
    encoded = [encode([{"role": "user", "content": p}], [f"Yes, gladly, task {i}.", f"No. Go away, {i}!"],
                      rm.tokenizer, cfg.max_length)[:2] for i, p in enumerate(prompts)]
    chosen, rejected = score_pairs(rm.model, encoded, rm.tokenizer.pad_token_id)
    assert raw == pytest.approx(chosen + rejected, abs=1e-5)
    assert all(c > r for c, r in zip(chosen, rejected))

    from transformers import AutoModelForSequenceClassification  # an ordinary HF folder too

    assert AutoModelForSequenceClassification.from_pretrained(f"{cfg.out}/final").config.num_labels == 1


def test_bt_loss_is_the_logistic_loss_of_the_margin():
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    want = torch.log1p(torch.exp(-(chosen - rejected))).mean()
    assert bt_loss(chosen, rejected).item() == pytest.approx(want.item())


def test_freezing_keeps_only_the_top_layers_and_the_head_trainable_and_the_frozen_ones_unchanged(tokenizer):
    model = value_head_model(make_model(tokenizer, layers=3), tokenizer.pad_token_id)
    freeze_below(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("score") for n in trainable) and any(".layers.2." in n for n in trainable)
    assert not any(".layers.0." in n or ".layers.1." in n or "embed" in n for n in trainable)
    frozen = model.model.layers[0].mlp.up_proj.weight.clone()
    top = model.model.layers[2].mlp.up_proj.weight.clone()
    from r1lab.optim import make_optimizer

    optimizer, _ = make_optimizer(model, 1e-2, 0.0, 0, 1, "constant")
    batch = [encode([{"role": "user", "content": "hi"}], ["yes", "no"], tokenizer, 64)[:2]] * 2
    rm_step(model, optimizer, batch, tokenizer.pad_token_id, 1.0)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, frozen)
    assert not torch.equal(model.model.layers[2].mlp.up_proj.weight, top)


def test_packed_pair_scores_equal_scoring_each_reply_alone(tokenizer):
    model = value_head_model(make_model(tokenizer), tokenizer.pad_token_id).eval()
    prompt, (a, b), _ = encode([{"role": "user", "content": "Tell me a joke"}], ["Knock knock.", "No!"], tokenizer, 64)
    with torch.no_grad():
        together = torch.stack(pair_values(model, [(prompt, [a, b])], tokenizer.pad_token_id), -1)[0]
        alone = [model(input_ids=torch.tensor([prompt + r])).logits[0, 0] for r in (a, b)]
    assert together.tolist() == pytest.approx([x.item() for x in alone], abs=1e-5)


def test_long_texts_are_cut_to_max_length_keeping_the_reply_end(tokenizer):
    prompt, (reply,), cut = encode([{"role": "user", "content": "x" * 100}], ["y" * 100 + "END"], tokenizer, 40)
    assert cut and len(prompt) + len(reply) <= 40 and tokenizer.decode(reply).endswith("END<eos>")


def test_the_cli_reports_accuracy_and_bad_data_is_one_line(tmp_path, capsys):
    from r1lab.models import save_checkpoint

    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
    assert main(["rm", "--model", model, "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "bad.jsonl:2: no field 'chosen' or 'rejected'" in capsys.readouterr().err
    assert main(["rm", "--model", model, "--data", separable_pairs(tmp_path / "p.jsonl", 12), "--test-size", "4",
                 "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out


def test_the_same_run_gives_the_same_reward_model_whatever_ran_before(finished_run, tmp_path):
    import dataclasses

    cfg, _ = finished_run
    torch.rand(1000)  # the global random state moved on, as other work in the same process would move it
    again = dataclasses.replace(cfg, out=str(tmp_path / "again"))
    train_rm(again, progress=False)
    first = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
    second = (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert [drop(line) for line in first] == [drop(line) for line in second]
