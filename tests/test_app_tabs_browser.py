"""Real-browser test of the Document and Chat tabs: headless Debian Chromium driven by Playwright (tiny model).

Skipped only when chromium or playwright is not installed (``.ci/extra-setup.sh`` installs both in CI).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from tests.app_launch import CHROMIUM

if not Path(CHROMIUM).is_file():
    pytest.skip("Debian chromium is not installed (run .ci/extra-setup.sh)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/extra-setup.sh)")

pytest_plugins = ["tests.app_fixtures"]

DOC = " ".join(f"Item {i} is kept in box {i % 7}. The box {i % 7} is blue!" for i in range(30)) + " That is all."


def text_of(selector: str) -> str:
    return f"document.querySelector('{selector}')?.innerText ?? ''"


def keep(page, tmp_path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ANLLM_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["ANLLM_SCREENSHOT_DIR"]) / name)


def test_browser_document_upload_compress_and_ask(browser_app, page, tmp_path):
    demo, url = browser_app
    page.goto(url)
    page.get_by_role("tab", name="Document").click()
    upload = tmp_path / "boxes.txt"
    upload.write_text(DOC, encoding="utf-8")
    page.locator("#doc-upload input[type=file]").set_input_files(str(upload))
    page.wait_for_function("() => document.querySelector('#doc-text textarea')?.value.startsWith('Item 0')")
    assert "boxes.txt" in page.locator("#doc-status").inner_text()
    page.click("#doc-compress")
    page.wait_for_function(f"() => ({text_of('#doc-status')}).includes('now ask questions')", timeout=60_000)
    href = page.locator("#doc-file a").first.get_attribute("href")  # offered for download
    assert href.endswith("document-anchor.kv")
    (entry,) = demo.documents.store._values.values()
    assert httpx.get(urljoin(url, href), timeout=30).content == entry.path.read_bytes()
    sizes = page.locator("#doc-sizes").inner_text()
    assert "full" in sizes and "anchor" in sizes
    for question in ("Which box holds item 12?", "And box 3?"):
        page.fill("#doc-question textarea", question)
        page.click("#doc-ask")
        page.wait_for_function(f"() => ({text_of('#doc-ask-status')}).includes('{question}')", timeout=60_000)
        assert "from the saved anchor file" in page.locator("#doc-ask-status").inner_text()
    assert page.locator("#doc-out-full .anllm-text").inner_text().strip()
    assert page.locator("#doc-out-anchor .anllm-text").inner_text().strip()
    page.wait_for_selector("#doc-plot .js-plotly-plot", timeout=30_000)
    assert page.locator("#doc-plot .js-plotly-plot .barlayer .trace").count() == 2  # full + anchor bars
    assert "And box 3?" in page.locator("#doc-history").inner_text()
    keep(page, tmp_path, "app-document.png")
    assert page.external_requests == []


def test_browser_chat_keeps_one_cache_and_resets(browser_app, page, tmp_path):
    demo, url = browser_app
    page.goto(url)
    page.get_by_role("tab", name="Chat").click()
    box = page.locator("#chat-message textarea")
    for i in range(3):
        box.fill(f"Turn {i}. Is box {i} <b>blue</b>? Tell me.")
        box.press("Enter")
        page.wait_for_function(f"() => ({text_of('#chat-stats')}).includes('turn {i + 1}')", timeout=60_000)
    assert page.locator("#chatbot").get_by_text("<b>blue</b>").count() == 3  # shown as typed, not as HTML
    assert page.locator("#chatbot b").count() == 0
    page.wait_for_selector("#chat-plot .js-plotly-plot", timeout=30_000)
    assert page.locator("#chat-plot .js-plotly-plot .scatterlayer .trace").count() == 2
    keep(page, tmp_path, "app-chat.png")
    page.click("#chat-reset")
    page.wait_for_function(f"() => ({text_of('#chat-status')}).includes('new conversation')", timeout=30_000)
    assert page.locator("#chatbot").get_by_text("<b>blue</b>").count() == 0
    assert page.external_requests == []
