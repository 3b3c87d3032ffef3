"""Add a static PNG to every plotly figure saved in the tutorial notebooks, without re-running them.

Viewers that run no JavaScript (GitHub, Hub previews, Colab's view of saved outputs) cannot draw plotly JSON. A
notebook run with kaleido and a Chrome/Chromium saves each figure as JSON plus a PNG
(:func:`anllm.plots.notebook_renderer`); this tool gives outputs saved without kaleido the same shape::

    python notebooks/tools/add_static_images.py notebooks/*.ipynb

It needs kaleido and a Chrome/Chromium for the default renderer. It is a maintenance tool for the committed
notebooks, not part of the library (notebooks/README.md).
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable
from pathlib import Path

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def add_static_images(path: str | Path, to_png: Callable[[dict], bytes] | None = None) -> int:
    """Give every plotly figure saved in notebook ``path`` the output a run with kaleido would have written.

    Each figure output keeps its plotly JSON, gains an ``image/png`` rendered from it and loses the ``text/html``
    loader (GitHub would show that, blank, instead of the image). ``to_png`` maps a figure dict to PNG bytes
    (default: plotly's ``png`` renderer, which needs kaleido). Returns how many outputs changed; figures that
    already have a PNG are left alone.
    """
    import nbformat

    if to_png is None:
        import plotly.io as pio

        def to_png(fig: dict) -> bytes:
            return base64.b64decode(pio.renderers["png"].to_mimebundle(fig)["image/png"])

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME not in data or "image/png" in data:
                continue
            data["image/png"] = base64.b64encode(to_png(data[PLOTLY_MIME])).decode("ascii")
            data.pop("text/html", None)
            changed += 1
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to rewrite in place")
    for path in parser.parse_args(argv).notebooks:
        print(f"{path}: {add_static_images(path)} figure(s) given a PNG")


if __name__ == "__main__":
    main()
