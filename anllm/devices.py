"""Device and dtype names, chosen at the edges (CLI, app, lm-eval harness) and passed down as plain values."""

from __future__ import annotations

import torch

from anllm.config import AnLLMError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_devices() -> list[str]:
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(name: str | None) -> str:
    """``name`` (default: cuda if available, else cpu) if this machine has it; else an error listing what it has."""
    if name is None or not name.strip():
        return default_device()
    have = available_devices()
    try:
        dev = torch.device(name.strip())
    except (RuntimeError, ValueError):
        raise AnLLMError(f"--device {name!r} is not a device name; this machine has: {', '.join(have)}") from None
    ok = dev.type == "cpu" or (dev.type == "mps" and "mps" in have)
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if not ok:
        why = "" if torch.version.cuda or dev.type != "cuda" else " (this torch build has no CUDA support)"
        raise AnLLMError(f"--device {name}: not available on this machine{why}; available: {', '.join(have)}")
    return str(dev)
