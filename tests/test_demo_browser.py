"""The demo page in real headless Chromium (Debian's chromium, driven by Playwright)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = Path(__file__).resolve().parents[1] / "test-output"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_typing_shows_suggestions_and_tab_accepts_the_completion(live_server):
    OUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://{live_server}/")
        page.wait_for_function("document.getElementById('lm-model').options.length > 0")
        page.wait_for_function("document.getElementById('lm-status').textContent === 'connected'")
        box = page.locator("#text")
        box.click()
        box.press_sequentially("ROMEO:\nWhat, shall I", delay=30)
        page.wait_for_function("document.querySelectorAll('#suggestions .chip').length >= 3")
        page.wait_for_function("document.getElementById('ghost').textContent.length > 0")
        ghost = page.locator("#ghost").text_content()
        page.screenshot(path=str(OUT / "demo-autocomplete.png"), full_page=True)
        box.press("Tab")
        assert box.input_value() == "ROMEO:\nWhat, shall I" + ghost
        box.press("Backspace")                                               # an edit replays from a fresh state
        page.wait_for_function("document.getElementById('ghost').textContent.length > 0")
        page.locator("#cls-example").click()
        page.locator("#cls-go").click()
        page.wait_for_function("document.getElementById('cls-status').textContent.startsWith('label:')")
        assert page.locator("#cls-result tr").count() == 4
        page.screenshot(path=str(OUT / "demo.png"), full_page=True)
        browser.close()
    assert not errors
