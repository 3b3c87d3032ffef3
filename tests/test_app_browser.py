"""Real-browser test: headless Debian Chromium driven by Playwright against the app on 127.0.0.1 (tiny model).

Skipped only when chromium or playwright is not installed (``.ci/extra-setup.sh`` installs both in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from anllm.models import load_model
from anllm.ui.blocks import build_demo
from anllm.ui.registry import ModelRegistry
from anllm.ui.render import MEASURED_RECALL
from tests.app_launch import CHROMIUM, launch

if not Path(CHROMIUM).is_file():
    pytest.skip("Debian chromium is not installed (run .ci/extra-setup.sh)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/extra-setup.sh)")

pytest_plugins = ["tests.app_fixtures"]


def test_browser_streams_both_columns_and_draws_charts(browser_app, page, tmp_path):
    page.goto(browser_app[1])
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    page.fill("#prompt textarea", "Hello there. How are you? I am fine!")
    page.click("#go")
    full = page.locator("#out-full .anllm-text")
    anchor = page.locator("#out-anchor .anllm-text")
    # text streams into the full column first, then the anchor column (the two runs share one slot)
    has_text = "() => { const e = document.querySelector('#out-full .anllm-text'); return e && e.innerText.trim() }"
    page.wait_for_function(has_text, timeout=30_000)
    page.wait_for_function(
        "() => { const e = document.querySelector('#status'); return e && e.innerText.includes('done') }",
        timeout=60_000,
    )
    assert full.inner_text().strip() and anchor.inner_text().strip()
    assert "waiting for" not in anchor.inner_text()
    page.wait_for_selector("#kv-plot .js-plotly-plot", timeout=30_000)
    page.wait_for_selector("#speed-plot .js-plotly-plot", timeout=30_000)
    assert page.locator("#kv-plot .js-plotly-plot .scatterlayer .trace").count() >= 2  # full + anchor curves
    stats = page.locator("#stats").inner_text()
    assert "full" in stats and "anchor" in stats
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ANLLM_SCREENSHOT_DIR"):  # keep a copy to look at
        shutil.copy(shot, Path(os.environ["ANLLM_SCREENSHOT_DIR"]) / "app-generate.png")
    assert page.external_requests == []


def test_browser_memory_test_shows_a_tally_and_five_items(browser_app, page):
    page.goto(browser_app[1])
    page.wait_for_selector("#memory-test", timeout=30_000)
    page.click("#memory-test")
    page.wait_for_function(
        "() => (document.querySelector('#memory-tally')?.innerText || '').includes('exact matches')", timeout=90_000
    )
    tally = page.locator("#memory-tally").inner_text()
    assert re.search(r"full \d/5, anchor \d/5, streaming \d/5", tally), tally
    anchor = MEASURED_RECALL[0][2]  # the measured rate beside the five items (anllm/ui/render.py)
    assert f"{anchor[0]} % [{anchor[1]}, {anchor[2]}]" in tally
    table = page.locator("#memory-table").inner_text()
    assert "expected" in table
    marks = [ln for ln in table.splitlines() if ln.startswith(("✓ ", "✗ "))]
    assert len(marks) == 15  # five items x three columns, each marked
    assert page.external_requests == []


def test_browser_mask_explorer(browser_app, page, tmp_path):
    page.goto(browser_app[1])
    page.get_by_role("tab", name="Mask explorer").click()
    page.fill("#mask-text textarea", "The cat sat. It was warm! Was it happy? Yes.")
    page.click("#show-masks")
    page.wait_for_selector("#mask-plot .js-plotly-plot", timeout=30_000)
    page.wait_for_selector("#schedule-plot .js-plotly-plot", timeout=30_000)
    assert page.locator("#mask-tokens .anllm-tok.anllm-anchor").count() == 4
    assert "4 anchors" in page.locator("#mask-summary").inner_text()
    shot = tmp_path / "masks.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ANLLM_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["ANLLM_SCREENSHOT_DIR"]) / "app-masks.png")


def columns_text(page) -> str:
    return page.locator("#out-full").inner_text() + page.locator("#out-anchor").inner_text()


def set_max_new(page, box, n: int) -> None:
    """Type ``n`` into the slider's number box; the slider takes it when the box loses focus."""
    check = f"() => document.querySelector('#max-new input[type=range]')?.value === '{n}'"
    for _ in range(3):
        box.fill(str(n))
        box.press("Enter")
        box.press("Tab")
        try:
            page.wait_for_function(check, timeout=10_000)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"the max-new-tokens slider did not take {n}")


def test_browser_mask_explorer_starts_from_the_served_setting(page):
    """The default model is served with 1 sink and a 16-token window: the explorer opens with those, not 0 and 0."""

    def served_tiny(name, **kw):
        lm = load_model("tiny-random", **kw)
        lm.anchor = lm.anchor.replace(n_sink=1, window=16)
        return lm

    demo = build_demo(ModelRegistry("tiny-random", loader=served_tiny))
    url = launch(demo)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Mask explorer").click()
        page.wait_for_function("() => document.querySelector('#mask-window input')?.value === '16'", timeout=30_000)
        assert page.locator("#mask-sink input").input_value() == "1"
        page.fill("#mask-text textarea", "One two three. Four five six seven!")
        page.click("#show-masks")
        page.wait_for_selector("#mask-plot .js-plotly-plot", timeout=30_000)
        assert "2 anchors" in page.locator("#mask-summary").inner_text()
    finally:
        demo.close()


@pytest.fixture
def slow_app():
    """The app on a tiny model slowed to at most 50 tokens/s, so a 1024-token run cannot finish during the test."""

    def slow_tiny(name, **kw):
        lm = load_model("tiny-random", **kw)
        lm.model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
        return lm

    demo = build_demo(ModelRegistry("tiny-random", loader=slow_tiny), interval_s=0.1, plot_interval_s=0.5)
    url = launch(demo)
    yield url, demo
    demo.close()


def test_browser_stop_button_stops_the_stream(slow_app, page):
    app_url, demo = slow_app
    h = demo.handlers
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    page.locator("#settings").get_by_text("Settings").first.click()
    box = page.locator("#max-new input[type=number]")
    set_max_new(page, box, 1024)
    page.fill("#prompt textarea", "Hello there. How are you?")
    page.click("#go")
    page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('generating')", timeout=30_000)
    # a DOM click on the button: Playwright's pointer click waits for a fresh frame, which a starved headless
    # renderer on a busy 2-core machine can take tens of seconds to produce
    page.locator("#stop").dispatch_event("click")
    # the text stops growing: two reads a second apart agree within a few seconds (a run left going streams for
    # 20+ s in each column)
    texts = [columns_text(page)]
    for _ in range(8):
        page.wait_for_timeout(1000)
        texts.append(columns_text(page))
        if texts[-1] == texts[-2]:
            break
    assert texts[-1] == texts[-2], "text kept streaming after Stop"
    status = page.locator("#status").inner_text()
    assert "done" not in status, status
    for _ in range(100):  # the server side stopped too: no stream left running, none completed
        if h.active_streams == 0:
            break
        page.wait_for_timeout(100)
    assert h.active_streams == 0 and h.completed_streams == 0
    # the slot is free again: a new short run completes
    set_max_new(page, box, 8)
    page.click("#go")
    page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('done')", timeout=60_000)
    assert h.completed_streams == 1
