"""The chat page in a real headless Chromium (Debian's package, driven by Playwright): against a scripted engine
(the reasoning streams in before the answer, then collapses; DeepThink off hides it) and against the real
``r1lab serve`` command on a tiny random model (replies arrive, nothing on the page goes wrong).

DeepThink is the page's display switch only: the request is the same either way and the server still reasons;
off, the reasoning is streamed into a hidden block. Screenshots go to ``runs/page-test/`` (R1LAB_SCREENSHOTS=DIR
elsewhere). Skipped where Chromium or Playwright is missing (``apt-get install chromium && pip install
playwright``), unless R1LAB_REQUIRE_BROWSER=1 (CI), which makes that a failure."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from r1lab.models import save_checkpoint
from r1lab.serve.app import create_app

from conftest import make_model, make_tokenizer
from serving import ScriptedEngine, running, thinking_tokenizer

ROOT = Path(__file__).parents[2]
SCRIPT = "First, 2+2 means two and two more.\nThat makes 4.\n</think>\n\nThe answer is **4**."


def screenshots() -> Path:
    folder = Path(os.environ.get("R1LAB_SCREENSHOTS") or ROOT / "runs" / "page-test")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium_page():
    """A fresh page in headless Chromium, the errors it reports (uncaught exceptions, console errors) and the JSON
    bodies of the chat requests it sends. Without Chromium or Playwright: a skip, or under R1LAB_REQUIRE_BROWSER=1
    a failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [what for what, there in (("chromium on PATH", chromium), ("playwright module", sync_playwright))
               if there is None]
    if missing:
        why = f"no {' and no '.join(missing)}: apt-get install chromium && pip install playwright"
        if os.environ.get("R1LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"R1LAB_REQUIRE_BROWSER=1 but {why}", pytrace=False)
        pytest.skip(why)
    errors, asked = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text} at {m.location.get('url')}")
                    if m.type == "error" else None)
            page.on("request", lambda r: asked.append(json.loads(r.post_data))
                    if r.url.endswith("/v1/chat/completions") else None)
            yield page, errors, asked
        finally:
            browser.close()


def send(page, text: str, turn: int):
    """Type ``text``, press Enter, and wait until reply ``turn`` (from 1) has ended and Send is back."""
    page.fill("#input", text)
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length === {turn} && "
                           "!document.getElementById('send').disabled")


def shot(page, name: str) -> Path:
    path = screenshots() / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_chat_page_streams_reasoning_then_answer_and_deepthink_off_only_hides_the_reasoning():
    engine = ScriptedEngine(thinking_tokenizer(), SCRIPT, delay=0.02)
    with chromium_page() as (page, errors, asked), running(create_app(engine, "scripted-r1", access_log=False)) as url:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'scripted-r1'")
        assert page.is_checked("#deepthink")
        page.fill("#input", "What is 2+2?")
        page.keyboard.press("Enter")
        # while streaming, the reasoning grows (open, "Thinking...") before the answer exists
        page.wait_for_function("document.querySelector('details.reasoning div')?.textContent.includes('two more')")
        assert page.locator(".answer").inner_text() == ""
        assert page.locator("details.reasoning").get_attribute("open") == ""
        assert page.locator("details.reasoning summary").inner_text() == "Thinking..."
        page.wait_for_function("document.querySelector('.answer')?.textContent === 'The answer is **4**.'")
        page.wait_for_function("document.querySelector('details.reasoning summary').textContent.startsWith('Thought')")
        assert page.locator("details.reasoning").get_attribute("open") is None  # collapsed once done
        assert not page.locator("details.reasoning div").is_visible()
        assert page.locator(".msg.user").inner_text() == "What is 2+2?"
        page.locator("details.reasoning summary").click()  # open the collapsed reasoning
        assert "That makes 4." in page.locator("details.reasoning").inner_text()
        on = shot(page, "scripted_deepthink_on.png")

        page.uncheck("#deepthink")  # DeepThink off hides the reasoning already shown...
        assert not page.locator("details.reasoning").is_visible() and page.locator(".answer").is_visible()
        send(page, "And 3+3?", 2)  # ...and that of a message sent with it off, which still streams in
        second = page.locator(".msg.assistant").nth(1)
        assert second.locator(".answer").inner_text() == "The answer is **4**."
        assert not second.locator("details.reasoning").is_visible()
        assert "That makes 4." in second.locator("details.reasoning div").text_content()
        off = shot(page, "scripted_deepthink_off.png")
        page.check("#deepthink")
        assert page.locator("details.reasoning").nth(1).is_visible()
        assert errors == []
    # the page asks the same whether DeepThink is on or off, and sends earlier replies back without their reasoning
    assert engine.calls == [1, 1] and [sorted(body) for body in asked] == [["messages", "stream"]] * 2
    assert asked[1]["messages"] == [{"role": "user", "content": "What is 2+2?"},
                                    {"role": "assistant", "content": "The answer is **4**."},
                                    {"role": "user", "content": "And 3+3?"}]
    assert on.stat().st_size > 10_000 and off.stat().st_size > 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def r1lab_serve(model: str, log: Path, timeout: float = 90):
    """``python -m r1lab serve MODEL`` on a free loopback port (its output to ``log``), once it answers /health: its
    URL. On leaving, Ctrl-C: it must end at once and without a traceback (it is killed if not, and the test fails)."""
    port = free_port()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "r1lab", "serve", model, "--port", str(port),
                                  "--template", "r1", "--device", "cpu", "--threads", "1", "--max-tokens", "48"],
                                 stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert child.poll() is None, f"r1lab serve ended ({child.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"r1lab serve did not answer in {timeout} s:\n{log.read_text()}"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=20) == 0 and "Traceback" not in log.read_text(), log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_chat_page_against_r1lab_serve_with_a_tiny_model_deepthink_on_and_off(tmp_path):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok, seed=3), tok, tmp_path / "tiny"))
    log = tmp_path / "serve.log"
    with chromium_page() as (page, errors, asked), r1lab_serve(model, log) as url:
        page.goto(url + "/")
        page.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(model)}")
        send(page, "What is 2+2?", 1)  # a random model writes garbage: check the shape of what comes back
        on = shot(page, "serve_deepthink_on.png")
        page.uncheck("#deepthink")
        send(page, "And 3+3?", 2)
        off = shot(page, "serve_deepthink_off.png")
        assert page.locator(".msg.user").all_inner_texts() == ["What is 2+2?", "And 3+3?"]
        assert page.locator(".msg.assistant").count() == 2 and page.locator(".answer").count() == 2
        # each reply ended: its reasoning (the r1 template opens the think block) collapsed, or none was written
        assert page.locator("details.reasoning[open]").count() == 0
        assert all(s.startswith("Thought for ") for s in page.locator("details.reasoning summary").all_inner_texts())
        hidden = page.locator(".msg.assistant").nth(1).locator("details.reasoning")  # sent with DeepThink off
        assert hidden.count() == 0 or not hidden.is_visible()
        assert "Error" not in "".join(page.locator(".answer").all_inner_texts())
        assert errors == []
        assert [sorted(body) for body in asked] == [["messages", "stream"]] * 2
    served = [line for line in log.read_text().splitlines() if "POST /v1/chat/completions 200" in line]
    assert len(served) == 2, log.read_text()
    assert on.stat().st_size > 10_000 and off.stat().st_size > 10_000
