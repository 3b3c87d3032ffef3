"""``anllm app``: serve the Gradio demo (full vs anchor KV cache, side by side; mask explorer).

The flags are :func:`anllm.ui.launch.add_app_args` (shared with ``app/app.py``). Gradio is imported only when the
command runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import os

from anllm.ui.launch import add_app_args


def register(sub) -> None:
    p = sub.add_parser("app", help="serve the Gradio demo (binds 127.0.0.1 by default)")
    add_app_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # --host, --port and --model were checked (anllm.commands.checks) before gradio or a model loads
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads; the host may turn it on
    from anllm.ui.blocks import serve

    return serve(args)
