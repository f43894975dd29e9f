"""The chat page in a real headless Chromium (Debian's package, driven by Playwright): send a message, see the
reasoning and the answer stream in, toggle DeepThink. Skipped where Chromium or Playwright is missing
(``apt-get install chromium && pip install playwright``). Set R1LAB_SCREENSHOTS=DIR to keep the screenshots."""

import os
import shutil
from pathlib import Path

import pytest

from r1lab.serve.app import create_app

from serving import ScriptedEngine, running, thinking_tokenizer

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def test_chat_page_streams_reasoning_and_answer_and_toggles_deepthink(tmp_path):
    shots = Path(os.environ.get("R1LAB_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    engine = ScriptedEngine(thinking_tokenizer(), "First, 2+2 means two and two more.\nThat makes 4.\n</think>\n\n"
                            "The answer is **4**.", delay=0.02)
    with running(create_app(engine, "scripted-r1")) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'scripted-r1'")
        page.fill("#input", "What is 2+2?")
        page.keyboard.press("Enter")
        # while streaming, the reasoning grows before the answer exists
        page.wait_for_function("document.querySelector('details.reasoning div')?.textContent.includes('two more')")
        assert page.locator(".answer").inner_text() == ""
        page.wait_for_function("document.querySelector('.answer')?.textContent === 'The answer is **4**.'")
        page.wait_for_function("document.querySelector('details.reasoning summary').textContent.startsWith('Thought')")
        assert page.locator(".msg.user").inner_text() == "What is 2+2?"
        page.locator("details.reasoning summary").click()  # open the collapsed reasoning
        assert "That makes 4." in page.locator("details.reasoning").inner_text()
        page.screenshot(path=str(shots / "chat_deepthink_on.png"), full_page=True)
        page.uncheck("#deepthink")
        assert not page.locator("details.reasoning").is_visible() and page.locator(".answer").is_visible()
        page.screenshot(path=str(shots / "chat_deepthink_off.png"), full_page=True)
        page.check("#deepthink")
        assert page.locator("details.reasoning").is_visible()
        # a second turn: the page sends the history back without the reasoning
        page.fill("#input", "And 3+3?")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelectorAll('.answer').length === 2 && "
                               "document.querySelectorAll('.answer')[1].textContent.length > 0")
        page.wait_for_function("!document.getElementById('send').disabled")
        browser.close()
    assert (shots / "chat_deepthink_on.png").stat().st_size > 10_000
