"""anllm demo: the same model answering with a full KV cache and with an anchor cache, side by side.

Run ``python app/app.py`` (or ``anllm app``); flags ``--host`` (default 127.0.0.1), ``--port`` and ``--model``,
or the environment variables ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT`` and ``ANLLM_MODEL`` (Spaces).
Importing this file builds ``demo`` without loading a model or starting a server (``gradio app/app.py`` reloads).
``python app/deploy.py OUT`` assembles a Hugging Face Space from this file (docs/app.md, "Hugging Face Spaces").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Before torch loads: OpenMP threads that spin while waiting starve the server and the other decode thread on a
# busy CPU (measured on a shared 2-core machine: 4 -> 15 tokens/s, first token 6 s -> 0.25 s). Override to taste.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Gradio's usage analytics stay off unless the host sets GRADIO_ANALYTICS_ENABLED=True (an offline demo must not
# try to phone home); set before gradio is imported, as it reads the variable then.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Hugging Face ZeroGPU: `spaces` must be imported before torch (anllm imports it) and before any device is chosen;
# on ZeroGPU hardware it makes torch report the GPU it attaches to `@spaces.GPU` calls, so the model is placed on
# cuda at start-up and generation runs on the GPU. Elsewhere the package is absent or changes nothing.
try:
    import spaces  # noqa: F401
except ImportError:
    pass

try:
    import anllm  # noqa: F401
except ImportError:  # running from a checkout (or a Space) where anllm is not installed: use the copy next door
    for root in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
        if (root / "anllm" / "__init__.py").is_file():
            sys.path.insert(0, str(root))
            break

import gradio as gr  # noqa: E402

from anllm.config import AnLLMError  # noqa: E402
from anllm.devices import default_device  # noqa: E402
from anllm.ui.blocks import build_demo, serve  # noqa: E402
from anllm.ui.launch import (  # noqa: E402
    add_app_args,
    check_bind,
    default_model_name,
    max_request_seconds,
)
from anllm.ui.registry import ModelRegistry, allowed_models_from_env  # noqa: E402
from anllm.ui.runtime import MAX_REQUEST_S  # noqa: E402

if gr.NO_RELOAD:
    REGISTRY = ModelRegistry(  # loads lazily, on first use
        default_model_name(), device=default_device(), allowed=allowed_models_from_env(default_model_name())
    )

try:
    MAX_REQUEST = max_request_seconds(os.environ.get("ANLLM_MAX_REQUEST_S", str(MAX_REQUEST_S)))
except argparse.ArgumentTypeError as e:
    sys.exit(f"ANLLM_MAX_REQUEST_S {e}")
demo = build_demo(REGISTRY, max_request_s=MAX_REQUEST or None)

__all__ = ["build_demo", "demo"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="anllm demo: full vs anchor KV cache, side by side")
    add_app_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        check_bind(args.host, args.port)  # before a model loads: a bad address or a port in use is one line
        return serve(args)
    except AnLLMError as e:  # e.g. a --device this machine does not have
        print(f"app: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
