"""The demo page in real headless Chromium (Debian's chromium, driven by Playwright)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = ROOT / "test-output"
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
        # the live views: next-character bars, round-trip times, and the state heatmaps drawn in colour
        page.wait_for_function("document.querySelectorAll('#probs tr').length === 10")
        assert float(page.locator("#rtt-median").text_content()) > 0
        assert int(page.locator("#rtt-count").text_content().split()[0]) >= 1          # one per input message sent
        for canvas, units in (("heat-h", 256), ("heat-c", 256)):
            drawn = page.evaluate(f"""() => {{
                const c = document.getElementById('{canvas}'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let coloured = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) coloured++;
                return [c.height, coloured];
            }}""")
            assert drawn[0] == units and drawn[1] > units, (canvas, drawn)          # one row per unit, many columns
        page.screenshot(path=str(OUT / "demo-autocomplete.png"), full_page=True)
        box.press("Tab")
        assert box.input_value() == "ROMEO:\nWhat, shall I" + ghost
        box.press("Backspace")                                               # an edit replays from a fresh state
        page.wait_for_function("document.getElementById('ghost').textContent.length > 0")
        live = page.locator("#live-input")                       # the classifier streaming as you type
        page.wait_for_function("document.getElementById('live-status').textContent === 'connected'")
        live.press_sequentially("B" + "ab" * 6 + "X" + "cd" * 20 + "Y" + "ba" * 22 + "E", delay=5)
        page.wait_for_function("document.getElementById('live-label').textContent === 'R'")
        assert page.locator("#live-result tr").count() == 4
        page.locator("#cls-example").click()
        page.locator("#cls-go").click()
        page.wait_for_function("document.getElementById('cls-status').textContent.startsWith('label:')")
        assert page.locator("#cls-result tr").count() == 4
        page.screenshot(path=str(OUT / "demo.png"), full_page=True)
        browser.close()
    assert not errors
