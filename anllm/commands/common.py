"""Flags shared by several subcommands, and the device/dtype choice made at the CLI edge."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from anllm.config import AnLLMError
from anllm.textio import read_text_file

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_args(p: argparse.ArgumentParser, *, dtype_default: str = "float32") -> None:
    p.add_argument("--model", default="default", help="default | smollm2-135m | tiny-random | preset | hub id | path")
    p.add_argument("--anchors", choices=["ep", "ac"], default=None, help="anchor kind (default: the model's)")
    p.add_argument("--positions", choices=["true", "compact"], default=None, help="position policy after eviction")
    p.add_argument("--chunk-size", type=int, default=None, help="prefill chunk length in anchor mode")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dtype_default)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run code from the model repo")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_from_args(args):
    """Load the model named on the command line; anchor flags change only their field of the model's own setting."""
    from anllm.models import load_model

    overrides = dict(mode=args.anchors, position_policy=args.positions, chunk_size=args.chunk_size)
    return load_model(
        args.model,
        anchor_overrides=overrides,
        dtype=DTYPES[args.dtype],
        device=check_device(args.device),
        trust_remote_code=args.trust_remote_code,
    )


def read_text(prompt: str | None, prompt_file: str | None, what: str = "prompt") -> str:
    """``prompt``, or the text of ``prompt_file`` (UTF-8; an empty or unreadable file is an error naming it)."""
    if prompt_file is not None:
        text = read_text_file(prompt_file, what)
        if not text.strip():
            raise AnLLMError(f"{what} file {prompt_file} is empty: put some text in it")
        return text
    return prompt if prompt is not None else ""


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


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
