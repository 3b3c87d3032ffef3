"""``anllm`` command line: a thin dispatcher; each subcommand lives in ``anllm/commands/<name>.py``.

A command module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import platform
import sys

from anllm import __version__
from anllm.config import AnLLMError

COMMANDS = ("generate", "compress", "chat", "verify", "train", "eval", "bench", "app", "export")
# optional packages -> the pyproject extra that installs them (tests/test_packaging.py checks they agree)
EXTRAS = {"gradio": "app", "plotly": "app", "accelerate": "train", "sacrebleu": "eval", "lm_eval": "harness"}


def version_line() -> str:
    """``anllm X (torch Y, transformers Z, Python W)``: what a bug report needs, read without importing."""
    deps = []
    for name in ("torch", "transformers"):
        try:
            deps.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            deps.append(f"{name} not installed")
    return f"anllm {__version__} ({', '.join(deps)}, Python {platform.python_version()})"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``anllm generate: error: ...``) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="anllm", description="Anchor-based LLMs: AnSAN masks and anchor KV caches")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"anllm.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"anllm.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad value is one line on stderr and exit 2, found before any model loads."""
    from anllm.commands.checks import check_args

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for records of the run
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        check_args(parser, args)  # every path, number, name and address, before the slow part
        return int(args.func(args) or 0)
    except AnLLMError as e:
        print(f"anllm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the system refused (permissions, a full disk): the user's to fix
        if args.verbose:
            raise
        what = f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else "")
        print(f"anllm {args.command}: error: {what}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"anllm {args.command}: error: this needs {e.name.split('.')[0]}, an optional dependency: "
            f"python3 -m pip install 'anllm[{extra}]' (in a checkout: python3 -m pip install '.[{extra}]')",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(e: Exception) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
