"""How the app shows things: escaping, the token panels and their CSS, status notes, the model panel, table rows.

Every text a visitor typed (or a server path in a message) goes through :func:`public_text` before it reaches a
Markdown or Chatbot component; streamed tokens go through :func:`tokens_html`. Importing this module imports no
gradio: :func:`token_panel` and :func:`plot_value` import it when called.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anllm.explorer import MaskView
from anllm.generation import GenerationResponse
from anllm.models import LoadedModel
from anllm.plots import MB
from anllm.ui.runtime import ModeRun

TOKENS_CSS = """
.anllm-text { white-space: pre-wrap; word-break: break-word; line-height: 1.55; font-size: 0.95rem;
  min-height: 6rem; padding: 0.5rem; }
.anllm-text mark.anllm-anchor { background: #fdba74; color: #431407; border-radius: 3px; padding: 0 1px; }
.anllm-text .anllm-placeholder { color: #94a3b8; }
.anllm-tokens span.anllm-tok { border: 1px solid #cbd5e1; border-radius: 3px; margin: 1px; padding: 0 2px;
  display: inline-block; white-space: pre; font-family: ui-monospace, monospace; font-size: 0.85rem; }
.anllm-tokens span.anllm-tok.anllm-anchor { background: #fdba74; border-color: #ea580c; }
"""
NOT_ANCHOR_TRAINED = " · note: the model is not anchor-trained (see the model panel)"
STATS_HEADERS = [
    "mode",
    "TTFT (s)",
    "decode tokens/s",
    "generated tokens",
    "KV kept (entries)",
    "full cache (entries)",
    "KV (MB)",
    "KV reduction",
    "entries evicted",
    "finish",
]

# The measured recall the app states (Document tab, memory test): the anchor cache on held-out item forms, both
# fillers pooled, from ONE committed file (tests/test_app.py checks these numbers against its cells).
# Per distance: (distance, n, then (EM %, low, high) of the anchor cache, the base model's full cache and
# StreamingLLM at the anchor cache's size).
MEASURED_RECALL_SOURCE = "docs/benchmarks-data/recall-acceptance-v2b-2026-12-07.json"
MEASURED_RECALL_DOC = "docs/memory.md"  # section "On held-out forms and fillers, with intervals"
MEASURED_RECALL_WHEN = "2026-12-07, the adapter and window served since (v2, window 64), 64 items per distance"
MEASURED_RECALL = (
    (256, 64, (19, 9, 30), (45, 34, 58), (0, 0, 0)),
    (1024, 64, (14, 6, 23), (39, 28, 52), (2, 0, 5)),
)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2]) + os.sep  # the checkout (or site-packages)
_MARKDOWN_SPECIAL = re.compile(r"[\\\[]")  # an escaped "[" starts no link or image


# -- escaping and notes -----------------------------------------------------------------------------------------
def public_text(text: str) -> str:
    """``text`` safe to show on a public page: HTML escaped, the server's checkout and home paths made relative."""
    text = text.replace(_PACKAGE_ROOT, "").replace(str(Path.home()) + os.sep, "~" + os.sep)
    text = _MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)  # no links, images or emphasis from what a visitor typed
    return html.escape(text, quote=False)


def error_markdown(message: str) -> str:
    """The status line for an error the user can fix (escaped: it may quote what the visitor typed)."""
    return f"⚠️ {public_text(message)}"


def trained_note(lm: LoadedModel) -> str:
    """What a status line adds for a model that is not anchor-trained (nothing for one that is)."""
    return "" if lm.anchor_trained else NOT_ANCHOR_TRAINED


def measured_recall_markdown() -> str:
    """What the app states about recall: :data:`MEASURED_RECALL`, with its 95 % intervals and its source."""

    def pct(cell: tuple[int, int, int]) -> str:
        return f"{cell[0]} % [{cell[1]}, {cell[2]}]"

    anchor = " and ".join(f"{pct(a)} at {d:,} tokens (n={n})" for d, n, a, _, _ in MEASURED_RECALL)
    base = " and ".join(pct(b) for _, _, _, b, _ in MEASURED_RECALL)
    streaming = sorted({s[0] for *_, s in MEASURED_RECALL})
    return (
        f"**Measured recall** (held-out question forms and fillers, {MEASURED_RECALL_WHEN}, 95 % intervals): the "
        f"default model's anchor cache answers {anchor}; the base model's full cache {base}; StreamingLLM at the "
        f"anchor cache's size {streaming[0]}–{streaming[-1]} %. Expect the anchor answer to miss most facts. "
        f'Source: `{MEASURED_RECALL_DOC}` ("On held-out forms and fillers"), data `{MEASURED_RECALL_SOURCE}`.'
    )


def model_markdown(lm: LoadedModel) -> str:
    """A short description of a loaded model for the UI, with a note when it is not anchor-trained."""
    cfg = lm.model.config
    n_params = sum(p.numel() for p in lm.model.parameters())
    device = next(lm.model.parameters()).device
    lines = [
        f"**{public_text(lm.name)}** · {getattr(cfg, 'model_type', '?')} · {n_params / 1e6:.2f} M parameters · "
        f"{lm.model.dtype} on {device} · anchors: {lm.anchor.kind.upper()} ({len(lm.anchor_ids)} anchor token ids)"
        + (f" + {lm.anchor.n_sink} sink(s)" if lm.anchor.n_sink else "")
        + (f" + a {lm.anchor.window}-token window" if lm.anchor.window else "")
    ]
    lines += [f"- {public_text(note)}" for note in lm.notes]
    if not lm.anchor_trained:
        lines.append(
            "- ⚠️ This model is **not anchor-trained**: the anchor column shows training-free anchor decoding, "
            "so its text is worse than the full cache's. The KV-cache savings are real either way."
        )
    return "\n".join(lines)


# -- token panels -----------------------------------------------------------------------------------------------
def tokens_html(responses: Sequence[GenerationResponse], placeholder: str = "") -> str:
    """The streamed text as HTML, anchor tokens wrapped in ``<mark class="anllm-anchor">`` with a tooltip.

    The tooltip gives the cache size before and after the anchor is processed (eviction happens when the anchor
    is fed back into the model, so the drop shows in the next token's numbers).
    """
    parts = []
    for j, r in enumerate(responses):
        if not r.text:
            continue
        text = html.escape(r.text)
        if r.is_anchor:
            tip = f"anchor (token {r.step}): KV {r.kv_entries} entries"
            if j + 1 < len(responses):
                tip += f" → {responses[j + 1].kv_entries} once it is processed"
            parts.append(f'<mark class="anllm-anchor" title="{html.escape(tip)}">{text}</mark>')
        else:
            parts.append(text)
    if not parts and placeholder:
        parts.append(f'<span class="anllm-placeholder">{html.escape(placeholder)}</span>')
    return '<div class="anllm-text">' + "".join(parts) + "</div>"


def mask_tokens_html(view: MaskView) -> str:
    """The mask explorer's tokens as chips, anchors highlighted."""
    chips = []
    for i, (label, anchor) in enumerate(zip(view.labels, view.anchors)):
        cls = "anllm-tok anllm-anchor" if anchor else "anllm-tok"
        shown = html.escape(label.replace("\n", "⏎"))
        chips.append(f'<span class="{cls}" title="token {i} (id {view.token_ids[i]})">{shown}</span>')
    return '<div class="anllm-tokens">' + "".join(chips) + "</div>"


def token_panel(label: str | None, elem_id: str, **kwargs: Any) -> Any:
    """A ``gr.HTML`` for :func:`tokens_html` / :func:`mask_tokens_html` output, styled by :data:`TOKENS_CSS`;
    with a ``label`` it is a labelled box (the streamed columns)."""
    import gradio as gr

    boxed = {"label": label, "show_label": True, "container": True} if label else {}
    return gr.HTML(css_template=TOKENS_CSS, elem_id=elem_id, **boxed, **kwargs)


# -- tables and figures -----------------------------------------------------------------------------------------
def stats_row(run: ModeRun) -> list:
    """One row of :data:`STATS_HEADERS` for a mode's run so far (empty cells while nothing was generated)."""
    r = run.last
    if r is None:
        return [run.mode, None, None, 0, None, None, None, None, None, run.error and "error"]
    s = r.stats
    return [
        run.mode,
        round(run.responses[0].elapsed_s, 3),
        round(s.tokens_per_s, 1) if s.new_tokens > 1 else None,
        s.new_tokens,
        s.kv_entries,
        s.kv_full_entries,
        round(s.kv_bytes / MB, 4),
        f"{s.kv_reduction:.1%}",
        s.n_evicted,
        r.finish_reason or ("stopped" if run.error else "running"),
    ]


def plot_value(spec: dict) -> Any:
    """A ``gr.Plot`` value from a plotly spec dict, serialised directly (no plotly validation on the hot path)."""
    from gradio.components.plot import PlotData

    return PlotData(type="plotly", plot=json.dumps(spec))
