"""Files shipped with anllm (evaluation texts, a toy task; listed in ``README.md`` here), read through
:mod:`importlib.resources` so they are found in a wheel install as in a checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

KJV_GENESIS = "kjv_genesis.txt"  # the built-in benchmark passage and recall filler
HELDOUT_PROSE = "heldout_prose.txt"  # held-out English prose of the default model's evaluation
NETTLE_PROSE = "nettle_manual_prose.txt"  # held-out technical prose (recall acceptance filler, never trained on)
TOY_MC = "toy_mc.jsonl"  # `anllm eval qa --task toy`


def resource_path(name: str) -> Path:
    """The path of the packaged file ``name`` (anllm is installed as files, so this is a real path)."""
    return Path(str(files(__name__) / name))


def read_resource(name: str) -> str:
    """The text (UTF-8) of the packaged file ``name``."""
    return (files(__name__) / name).read_text(encoding="utf-8")
