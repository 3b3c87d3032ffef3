"""Progress on stderr for the loops that run for minutes (eval, bench, ablations, the first-run model conversion).

Library functions take ``progress: bool = False``; the CLI turns it on, so a user sees work going on while notebooks
and tests stay quiet.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress_bar(
    iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it", enabled=True
):
    """A tqdm bar on stderr (a no-op wrapper when ``enabled`` is False); use as an iterable or call ``update(n)``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, file=sys.stderr, leave=False)


def note(message: str) -> None:
    """One line on stderr, for a one-off slow step that has no units to count."""
    print(f"anllm: {message}", file=sys.stderr, flush=True)
