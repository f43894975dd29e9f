"""``benchmarks/gpu.py`` runs end to end: its tiny decode part on the CPU (so the script is exercised without a
GPU), and every part of it on a CUDA GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def run(tmp_path, *args, timeout):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_the_tiny_decode_benchmark_runs_on_the_cpu(tmp_path):
    stdout, results = run(tmp_path, "--device", "cpu", "--only", "decode", "--threads", "1", timeout=300)
    assert "memory bandwidth" in stdout and "r1lab throughput from batch 4 to 8" in stdout
    assert results["bandwidth_bytes_per_second"] > 0 and results["matmul_flops_per_second"] > 0
    rows = results["decode"]
    assert {r["variant"] for r in rows} == {"r1lab", "hf-eager", "hf-static"} and {r["batch"] for r in rows} == {4, 8}
    for r in rows:
        assert "error" not in r, r
        assert r["tokens"] == r["batch"] * 16 and r["tokens_per_second"] > 0 and 0 < r["roofline"]
    assert "grpo" not in results and "mfu" not in results


@pytest.mark.gpu
def test_every_part_of_the_benchmark_runs_on_the_gpu(tmp_path):
    stdout, results = run(tmp_path, "--device", "cuda", timeout=540)
    assert {r["variant"] for r in results["decode"]} == {"r1lab", "r1lab-dynamic", "hf-eager", "hf-static-compiled"}
    assert all("error" not in r and r["peak_gib"] > 0 for r in results["decode"]), results["decode"]
    ours = results["grpo"]["r1lab"]
    assert ours["sec_per_step"] > 0 and ours["peak_gib"] > 0
    assert all("error" not in r and 0 < r["mfu"] < 1 for r in results["mfu"]), results["mfu"]
