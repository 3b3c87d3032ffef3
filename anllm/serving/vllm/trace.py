"""An optional per-step record of each request's kept rows and blocks, for the block-accounting test and benchmarks.

Off unless ``ANLLM_VLLM_TRACE`` names a file: then the worker and the scheduler append one JSON line per request and
step (``side``, ``req``, ``computed`` tokens, ``kept`` rows, ``blocks`` held), each from its own process.
"""

from __future__ import annotations

import json
import os

_ENV = "ANLLM_VLLM_TRACE"


def record(side: str, req: str, computed: int, kept: int, blocks: int) -> None:
    path = os.environ.get(_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"side": side, "req": req, "computed": computed, "kept": kept, "blocks": blocks}) + "\n")
