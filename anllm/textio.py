"""Reading the user's text and JSONL files: every problem is one :class:`AnLLMError` naming the file and where.

A file that is missing, a directory, too large, not UTF-8 or holding NUL bytes (a binary file) fails here with the
byte offset (and line), instead of a ``UnicodeDecodeError`` traceback from wherever the text is first used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anllm.config import AnLLMError

MAX_TEXT_BYTES = 64 * 2**20  # prompts, texts to verify/score/bench: far beyond any model's context window


def _check_file(path: Path, what: str, max_bytes: int | None) -> None:
    if not path.exists():
        raise AnLLMError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise AnLLMError(f"{what} file {path} is a directory; give the path of a file")
    if not path.is_file():
        raise AnLLMError(f"{what} file {path} is not a regular file")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise AnLLMError(f"{what} file {path} has {size:,} bytes; the limit is {max_bytes:,}: give a shorter text")


def decode_utf8(data: bytes, where: str, *, offset: int = 0, line: int = 1) -> str:
    """``data`` as text; not UTF-8 or a NUL byte is an error naming ``where``, the byte offset and the line.

    Args:
        data: the bytes read.
        where: how the error names their origin (``"prompt file p.txt"``).
        offset, line: byte offset and line number of ``data[0]`` in the file.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        n = line + data.count(b"\n", 0, e.start)
        raise AnLLMError(
            f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {at}, line {n}): save it as UTF-8"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        n = line + data.count(b"\n", 0, nul)
        raise AnLLMError(f"{where} contains a NUL byte at offset {offset + nul} (line {n}): is it a binary file?")
    return text


def read_text_file(path: str | Path, what: str = "text", *, max_bytes: int | None = MAX_TEXT_BYTES) -> str:
    """The whole file as text (a leading UTF-8 byte-order mark dropped).

    Raises:
        AnLLMError: missing, a directory, larger than ``max_bytes``, unreadable, not UTF-8 or with NUL bytes.
    """
    path = Path(path)
    _check_file(path, what, max_bytes)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnLLMError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    return decode_utf8(data, f"{what} file {path}").removeprefix("\ufeff")


def read_jsonl(path: str | Path, what: str = "JSONL") -> Iterator[tuple[int, Any]]:
    """``(line_number, value)`` for each non-blank line of a JSON Lines file, read as a stream.

    Raises:
        AnLLMError: as :func:`read_text_file`, or ``file:line: malformed JSON (...)``.
    """
    path = Path(path)
    _check_file(path, what, None)
    offset = 0
    try:
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, 1):
                line = decode_utf8(raw, f"{what} file {path}", offset=offset, line=line_no)
                offset += len(raw)
                if line_no == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise AnLLMError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
                yield line_no, value
    except OSError as e:
        raise AnLLMError(f"cannot read {what} file {path}: {e.strerror or e}") from None
