"""Flags shared by several subcommands; the device and dtype names are :mod:`anllm.devices`."""

from __future__ import annotations

import argparse
import json
import sys

from anllm.config import AnLLMError
from anllm.devices import DTYPES, check_device
from anllm.textio import read_text_file


def add_model_args(p: argparse.ArgumentParser, *, dtype_default: str = "float32") -> None:
    p.add_argument("--model", default="default", help="default | smollm2-135m | tiny-random | preset | hub id | path")
    p.add_argument("--anchors", choices=["ep", "ac"], default=None, help="anchor kind (default: the model's)")
    p.add_argument("--positions", choices=["true", "compact"], default=None, help="position policy after eviction")
    p.add_argument("--chunk-size", type=int, default=None, help="prefill chunk length in anchor mode")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=dtype_default)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run code from the model repo")


def load_from_args(args):
    """Load the model named on the command line; anchor flags change only their field of the model's own setting."""
    from anllm.models import load_model

    overrides = dict(kind=args.anchors, position_policy=args.positions, chunk_size=args.chunk_size)
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


def int_list(s: str, flag: str) -> tuple[int, ...]:
    """Comma-separated integers >= 0 given to ``flag`` (at least one), or an error naming the flag."""
    try:
        out = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise AnLLMError(f"{flag} must be comma-separated integers, got {s!r}") from None
    if not out or any(x < 0 for x in out):
        raise AnLLMError(f"{flag} must list at least one integer >= 0, got {s!r}")
    return out


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
