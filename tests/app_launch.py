"""Launching the app on a free loopback port, shared by the server and browser tests."""

import socket


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
