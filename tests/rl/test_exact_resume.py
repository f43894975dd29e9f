"""Exact resume: a 12-step `r1lab zero` run killed with SIGKILL at random moments, and resumed each time with
`--resume true`, ends with the same metrics, samples, summary and weights, bit for bit, as a run never stopped.

Nothing in a step depends on state that lives only in memory: a step's prompts and its sampling seed are functions
of (seed, step), the weights, optimizer and scheduler come back from the checkpoint, and log lines past it are
moved aside and redone. This test is what keeps it so.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab.models import save_checkpoint
from r1lab.rl.run import results as outcome

from conftest import digit_reward_env, make_model, make_tokenizer


def command(model, out):
    return [sys.executable, "-m", "r1lab.cli", "zero", "--model", model, "--task-args", "{n_train: 60, n_test: 4}",
            "--template", "native", "--rewards", "{test_digit_share: 1.0}", "--steps", "12",
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "12", "--eval-examples", "2",
            "--eval-max-new-tokens", "4", "--warmup-steps", "2", "--lr", "1e-3", "--save-every", "1",
            "--keep-checkpoints", "2", "--threads", "1", "--out", str(out)]


def slow_digit_reward_env(folder) -> dict:
    """``digit_reward_env`` whose reward also sleeps 50 ms a completion: a training step (8 completions) then lasts
    over 0.4 s on any machine, longer than the random wait (under 0.3 s) between seeing a step logged and the kill,
    so the kill lands inside the next step by construction, not because this machine's steps happen to be slow.
    The reward's values are those of ``digit_reward_env``."""
    env = digit_reward_env(folder)
    (folder / "sitecustomize.py").write_text(
        "import time\nfrom r1lab.rewards import register\n\n\n@register('test_digit_share')\n"
        "def _digit_share(completion, **_):\n    time.sleep(0.05)\n"
        "    return sum(c.isdigit() for c in completion) / max(1, len(completion))\n")
    return env


def logged_steps(out) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_five_kills_at_random_moments_change_nothing(tmp_path):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok, layers=2, hidden=32), tok, tmp_path / "tiny"))
    env = slow_digit_reward_env(tmp_path / "plugin")  # a reward a random model gets signal from: every step trains

    straight = tmp_path / "straight"
    subprocess.run(command(model, straight), check=True, env=env, capture_output=True, timeout=300)
    trained = [json.loads(line)["trained_groups"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(n > 0 for n in trained), trained  # every step updates the weights and AdamW

    run, rng, kills = tmp_path / "killed", random.Random(1234), []
    for _ in range(5):
        resume = ["--resume", "true"] if (run / "config.yaml").is_file() else []
        child = subprocess.Popen(command(model, run) + resume, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        target = min(11, logged_steps(run) + rng.randint(1, 3))  # into the run, then a random part of a step
        deadline = time.monotonic() + 240
        while logged_steps(run) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills.append(logged_steps(run))
        child.wait(timeout=60)
    assert len(kills) >= 4, f"the run ended before it could be killed often enough (kills after steps {kills})"

    resume = ["--resume", "true"] if (run / "config.yaml").is_file() else []
    finished = subprocess.run(command(model, run) + resume, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]

    killed, expected = outcome(run), outcome(straight)
    assert killed["metrics"] == expected["metrics"]  # every step once, in order, with the same values
    assert killed["samples"] == expected["samples"]
    assert killed["summary"] == expected["summary"]
    assert killed["weights"] == expected["weights"]


def running(folder) -> list[int]:
    """Processes whose command line names ``folder`` (a run's --out)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_kill_under_torchrun_changes_nothing(tmp_path):
    """SIGKILL to the `r1lab zero --nproc 2` job (the launcher and torchrun) of a sharded (FSDP2) run, mid-run: the
    ranks, which torchrun starts in sessions of their own, die with it; `--resume` then ends as the same 2-process
    run never stopped, bit for bit, reading each rank's shards of the weights and AdamW state back."""
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok, layers=2, hidden=32), tok, tmp_path / "tiny"))
    env = slow_digit_reward_env(tmp_path / "plugin")  # a reward a random model gets signal from: every step trains
    flags = ["--steps", "6", "--nproc", "2", "--parallel", "fsdp"]

    straight = tmp_path / "straight"
    done = subprocess.run(command(model, straight) + flags, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = [json.loads(line)["trained_groups"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(n > 0 for n in trained), trained  # every step updates the weights and AdamW

    run = tmp_path / "killed"
    child = subprocess.Popen(command(model, run) + flags, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while logged_steps(run) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(7).uniform(0, 0.3))
    assert child.poll() is None, "the run ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)  # the launcher's session: it and torchrun, not the ranks themselves
    child.wait(timeout=60)
    deadline = time.monotonic() + 10
    while running(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(run), "training processes outlived the killed job"
    killed_after = logged_steps(run)
    assert killed_after < 6

    finished = subprocess.run(command(model, run) + flags + ["--resume", "true"], env=env, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    killed, expected = outcome(run), outcome(straight)
    assert killed["metrics"] == expected["metrics"], killed_after
    assert killed["samples"] == expected["samples"]
    assert killed["summary"] == expected["summary"]
    assert killed["weights"] == expected["weights"]
