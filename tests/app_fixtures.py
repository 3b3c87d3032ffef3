"""Fixtures shared by the app's tests: the tiny model's registry, the app served on 127.0.0.1, a Chromium page.

A test module loads them with ``pytest_plugins = ["tests.app_fixtures"]`` (allowed in test modules; only a
non-root ``conftest.py`` may not), and imports nothing else from it: plain helpers are in ``tests/app_launch.py``.
Every fixture is module-scoped: each test module gets its own registry and app.
"""

from __future__ import annotations

import pytest

from anllm.ui.blocks import build_demo
from anllm.ui.registry import ModelRegistry
from tests.app_launch import CHROMIUM, LAUNCH_ARGS, launch


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    """The tiny random model, already loaded."""
    reg = ModelRegistry("tiny-random")
    reg.get()
    return reg


@pytest.fixture(scope="module")
def served(registry):
    """``(demo, url)``: the app on ``registry``, streaming often and without a time limit (these tests pin answers
    and numbers, not speed; the limit has its own tests), for ``gradio_client``."""
    demo = build_demo(registry, interval_s=0.005, plot_interval_s=0.05, max_request_s=None, max_documents=4)
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def browser_app(registry):
    """``(demo, url)``: the app as a browser test needs it, re-sending at most every 0.05 s (charts 0.2 s), so a
    headless renderer on a busy machine keeps up."""
    demo = build_demo(registry, interval_s=0.05, plot_interval_s=0.2, max_request_s=None)
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def page():
    """A headless Debian Chromium page (Playwright) that records every request leaving 127.0.0.1
    (``page.external_requests``)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/extra-setup.sh)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        pg = context.new_page()
        external = []
        pg.on(
            "request",
            lambda r: external.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None,
        )
        pg.external_requests = external
        yield pg
        browser.close()
