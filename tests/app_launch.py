"""Helpers of the app tests: launching the app on a free loopback port, the Chromium to drive it with, and what an
output column shows. (The fixtures built on them are in ``tests/app_fixtures.py``.)"""

import html
import os
import re
import shutil
import socket

CHROMIUM = os.environ.get("ANLLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def visible_text(html_value: str) -> str:
    """The generated text shown in an output column (placeholders left out)."""
    html_value = re.sub(r'<span class="anllm-placeholder">.*?</span>', "", html_value)
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo) -> str:
    """Launch on a free 127.0.0.1 port; retried, as gradio's own start-up probe can time out on a saturated CPU."""
    for attempt in range(3):
        try:
            _, url, _ = demo.launch(
                prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, show_error=False
            )
            assert url.startswith("http://127.0.0.1:")
            return url
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == 2:
                raise
            demo.close()
    raise AssertionError("unreachable")
