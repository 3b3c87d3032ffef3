"""Plotly figure builders shared by the app, notebooks and benchmarks.

Every figure has a title and axis labels with units. The streaming builders take, per mode, a sequence of
records with the fields of :class:`anllm.generation.GenerationResponse` (``step``, ``kv_entries``, ``kv_bytes``,
``tokens_per_s``), so ``list(stream_generate(...))`` can be plotted as is.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from anllm.config import AnLLMError

MB = 1e6
_CHROMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
MODE_COLORS = {"full": "#64748b", "anchor": "#ea580c"}
_ABLATION_PALETTE = ("#ea580c", "#2563eb", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#64748b")
_PALETTE = ("#2563eb", "#16a34a", "#9333ea", "#db2777", "#0891b2")
_SWEEP_COLORS = {"anchor": "#ea580c", "streaming": "#16a34a", "sepllm": "#9333ea"}


def mode_color(mode: str, index: int = 0) -> str:
    """The colour a mode is drawn in, the same in every figure (grey = full, orange = anchor)."""
    return MODE_COLORS.get(mode, _PALETTE[index % len(_PALETTE)])


def _layout_spec(title: str, height: int, uirevision: str) -> dict:
    return {
        "title": {"text": title, "x": 0.01, "xanchor": "left"},
        "height": height,
        "margin": {"l": 60, "r": 60, "t": 50, "b": 45},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        "uirevision": uirevision,  # keep the user's zoom across streamed updates
        "template": "plotly_white",
    }


def _layout(fig: go.Figure, title: str, height: int, uirevision: str) -> go.Figure:
    fig.update_layout(**_layout_spec(title, height, uirevision))
    return fig


def kv_cache_spec(
    runs: Mapping[str, Sequence[Any]], *, title: str = "KV cache size over generated tokens", height: int = 320
) -> dict:
    """The plotly spec (``{"data": ..., "layout": ...}``, plain JSON types) of :func:`kv_cache_figure`.

    Building the dict skips plotly's validation, which costs more than the model step on a small model; the app
    sends these while streaming.
    """
    data, max_mb, max_entries = [], 0.0, 0
    for i, (mode, records) in enumerate(runs.items()):
        steps = [int(r.step) for r in records]
        entries = [int(r.kv_entries) for r in records]
        mb = [r.kv_bytes / MB for r in records]
        max_mb = max([max_mb, *mb])
        max_entries = max([max_entries, *entries])
        data.append(
            {
                "type": "scatter",
                "x": steps,
                "y": mb,
                "name": mode,
                "mode": "lines",
                "line": {"color": mode_color(mode, i), "width": 2.5},
                "customdata": entries,
                "hovertemplate": "token %{x}<br>%{y:.3f} MB<br>%{customdata} entries<extra>" + mode + "</extra>",
            }
        )
        # The same curve in entries, invisible: it only gives the right axis its scale.
        data.append(
            {
                "type": "scatter",
                "x": steps,
                "y": entries,
                "name": f"{mode} (entries)",
                "yaxis": "y2",
                "showlegend": False,
                "hoverinfo": "skip",
                "opacity": 0,
            }
        )
    top = 1.08
    layout = _layout_spec(title, height, "kv")
    layout["xaxis"] = {"title": {"text": "generated tokens"}, "rangemode": "tozero"}
    layout["yaxis"] = {"title": {"text": "KV cache (MB, all layers)"}, "range": [0, max(max_mb, 1e-6) * top]}
    layout["yaxis2"] = {
        "title": {"text": "KV entries per layer"},
        "range": [0, max(max_entries, 1) * top],
        "overlaying": "y",
        "side": "right",
        "showgrid": False,
    }
    return {"data": data, "layout": layout}


def kv_cache_figure(runs: Mapping[str, Sequence[Any]], **kw: Any) -> go.Figure:
    """KV-cache size per mode over generated tokens: MB on the left axis, entries per layer on the right.

    Args:
        runs: mode name -> records with ``step``, ``kv_entries`` and ``kv_bytes`` (e.g. ``GenerationResponse``).
        **kw: ``title`` and ``height``.
    """
    return go.Figure(kv_cache_spec(runs, **kw))


def speed_spec(
    runs: Mapping[str, Sequence[Any]], *, title: str = "Decode speed over generated tokens", height: int = 320
) -> dict:
    """The plotly spec (plain JSON types) of :func:`speed_figure`."""
    data = []
    for i, (mode, records) in enumerate(runs.items()):
        # the first token's rate divides by ~0 decode time: start the curve at the second token
        pts = [r for r in records if r.step > 1]
        data.append(
            {
                "type": "scatter",
                "x": [int(r.step) for r in pts],
                "y": [float(r.tokens_per_s) for r in pts],
                "name": mode,
                "mode": "lines",
                "line": {"color": mode_color(mode, i), "width": 2.5},
                "hovertemplate": "token %{x}<br>%{y:.1f} tokens/s<extra>" + mode + "</extra>",
            }
        )
    layout = _layout_spec(title, height, "speed")
    layout["xaxis"] = {"title": {"text": "generated tokens"}, "rangemode": "tozero"}
    layout["yaxis"] = {"title": {"text": "decode speed (tokens/s)"}, "rangemode": "tozero"}
    return {"data": data, "layout": layout}


def speed_figure(runs: Mapping[str, Sequence[Any]], **kw: Any) -> go.Figure:
    """Decode tokens/s (running average since the first token) per mode over generated tokens.

    Args:
        runs: mode name -> records with ``step`` and ``tokens_per_s``.
        **kw: ``title`` and ``height``.
    """
    return go.Figure(speed_spec(runs, **kw))


def _tick_labels(labels: Sequence[str], anchors: Sequence[bool]) -> list[str]:
    out = []
    for i, (text, anchor) in enumerate(zip(labels, anchors)):
        shown = text.replace("\n", "⏎").replace(" ", "␣") or "∅"
        out.append(f"{i}:{shown}" + (" ⚓" if anchor else ""))
    return out


def mask_figure(
    masks: Mapping[str, Any],
    labels: Sequence[str],
    anchors: Sequence[bool],
    *,
    title: str = "Attention masks (row = query token, column = key token)",
    height: int = 480,
) -> go.Figure:
    """Side-by-side heatmaps of boolean ``(T, T)`` attention masks (True = may attend).

    Args:
        masks: panel title -> bool matrix (tensor or array), e.g. ``{"causal": ..., "AnSAN": ...}``.
        labels: the text of each token (axis ticks); anchors are marked with ⚓.
        anchors: whether each token is an anchor.
    """
    names = list(masks)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    ticks = _tick_labels(labels, anchors)
    idx = list(range(len(ticks)))
    for c, name in enumerate(names, start=1):
        m = np.asarray(masks[name], dtype=float)
        visible = int(m.sum())
        fig.add_trace(
            go.Heatmap(
                z=m,
                x=idx,
                y=idx,
                zmin=0,
                zmax=1,
                colorscale=[[0, "#f8fafc"], [1, "#1d4ed8"]],
                showscale=False,
                customdata=[[f"{ticks[q]} → {ticks[k]}" for k in idx] for q in idx],
                hovertemplate="%{customdata}: %{z}<extra>" + f"{name} ({visible} allowed pairs)" + "</extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_xaxes(title_text="key token (index)", row=1, col=c)
        fig.update_yaxes(title_text="query token (index)", autorange="reversed", row=1, col=c)
    _layout(fig, title, height, "masks")
    _token_ticks(fig, ticks)
    return fig


def _token_ticks(fig: go.Figure, ticks: list[str]) -> None:
    if len(ticks) <= 32:  # readable: show token text; otherwise plain indices
        fig.update_xaxes(tickmode="array", tickvals=list(range(len(ticks))), ticktext=ticks, tickangle=-60)
        fig.update_yaxes(tickmode="array", tickvals=list(range(len(ticks))), ticktext=ticks)


def schedule_figure(
    kept: Any,
    labels: Sequence[str],
    anchors: Sequence[bool],
    *,
    title: str = "KV-drop schedule (row = step, column = cached token)",
    height: int = 480,
) -> go.Figure:
    """Which tokens the cache holds after each step.

    Args:
        kept: ``(T, T)`` array: 1 kept, 0 evicted, NaN not seen yet (row ``t`` = after feeding token ``t``).
        labels: the text of each token; anchors: whether each token is an anchor.
    """
    z = np.asarray(kept, dtype=float)
    ticks = _tick_labels(labels, anchors)
    idx = list(range(len(ticks)))
    n_kept = np.nansum(z, axis=1).astype(int).tolist()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=idx,
            y=idx,
            zmin=0,
            zmax=1,
            colorscale=[[0, "#fecaca"], [1, "#15803d"]],
            showscale=False,
            customdata=[[f"after {ticks[t]}: {ticks[k]} ({n_kept[t]} kept)" for k in idx] for t in idx],
            hovertemplate="%{customdata}<br>1 = kept, 0 = evicted<extra></extra>",
        )
    )
    _layout(fig, title, height, "schedule")
    fig.update_xaxes(title_text="cached token (index)")
    fig.update_yaxes(title_text="decoding step (token just fed)", autorange="reversed")
    _token_ticks(fig, ticks)
    return fig


def recall_figure(
    rows: Sequence[Mapping[str, Any]], *, title: str = "Recall vs distance", height: int = 380
) -> go.Figure:
    """Exact match vs distance, one line per mode (all families pooled, weighted by item count).

    ``rows`` are :class:`anllm.evaluation.recall.RecallRow` dicts (``mode``, ``distance``, ``n``, ``em``).
    """
    pooled: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        acc = pooled.setdefault(r["mode"], {}).setdefault(int(r["distance"]), [0.0, 0.0])
        acc[0] += r["em"] * r["n"]
        acc[1] += r["n"]
    fig = go.Figure()
    for i, (mode, by_d) in enumerate(pooled.items()):
        ds = sorted(by_d)
        fig.add_trace(
            go.Scatter(
                x=ds,
                y=[100 * by_d[d][0] / by_d[d][1] for d in ds],
                mode="lines+markers",
                name=mode,
                line={"color": mode_color(mode.split(":")[0], i)},
            )
        )
    fig.update_xaxes(title="distance between the fact and the question (tokens)", type="log")
    fig.update_yaxes(title="exact match (%)", range=[0, 100])
    return _layout(fig, title, height, "recall")


def acceptance_figure(
    cells: Sequence[Mapping[str, Any]],
    *,
    title: str = "Recall acceptance: exact match with 95% intervals",
    height: int = 420,
) -> go.Figure:
    """Exact match vs distance per row (the base reference, full, anchor, peers), one panel per filler, with the
    bootstrap interval of each cell as error bars.

    ``cells`` are :func:`anllm.evaluation.acceptance.summarise` cells (``filler``, ``distance``, ``row``, ``em``,
    ``lo``, ``hi``, ``n``).
    """
    if not cells:
        raise AnLLMError("acceptance_figure needs at least one cell")
    fillers = list(dict.fromkeys(c["filler"] for c in cells))
    rows = list(dict.fromkeys(c["row"] for c in cells))
    fig = make_subplots(
        rows=1,
        cols=len(fillers),
        subplot_titles=["both fillers" if f == "all" else f"{f} filler" for f in fillers],
        shared_yaxes=True,
    )
    for k, f in enumerate(fillers):
        for i, row in enumerate(rows):
            sel = sorted((c for c in cells if c["filler"] == f and c["row"] == row), key=lambda c: c["distance"])
            color = "#111827" if row == "base:full" else mode_color(row.split(":")[0], i)
            fig.add_trace(
                go.Scatter(
                    x=[c["distance"] * (1 + 0.025 * (i - (len(rows) - 1) / 2)) for c in sel],  # error bars apart
                    y=[100 * c["em"] for c in sel],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [100 * (c["hi"] - c["em"]) for c in sel],
                        "arrayminus": [100 * (c["em"] - c["lo"]) for c in sel],
                    },
                    customdata=[c["n"] for c in sel],
                    hovertemplate="%{x} tokens: %{y:.1f}% (n=%{customdata})<extra>" + row + "</extra>",
                    mode="lines+markers",
                    name=row,
                    legendgroup=row,
                    showlegend=k == 0,
                    line={"color": color, "dash": "dash" if row == "base:full" else "solid"},
                ),
                row=1,
                col=k + 1,
            )
        fig.update_xaxes(title_text="distance fact -> question (tokens)", type="log", row=1, col=k + 1)
    fig.update_yaxes(title_text="exact match (%)", range=[-2, 100], row=1, col=1)
    _layout(fig, title, height, "acceptance")
    fig.update_layout(legend={"orientation": "h", "y": -0.22, "yanchor": "top", "x": 0, "xanchor": "left"})
    fig.update_layout(margin={"b": 90})
    return fig


def sweep_figure(summary: Mapping[str, Any], *, title: str = "KV budget sweep", height: int = 440) -> go.Figure:
    """The Pareto figure: recall exact match (with 95% intervals) and held-out perplexity against the KV entries
    kept (% of the context, counted through the real caches), one line per method and weights.

    ``summary`` is :func:`anllm.evaluation.sweep.summarise_sweep`'s dict (``recall`` and ``ppl`` points).
    """
    recall, ppl = list(summary.get("recall", ())), [p for p in summary.get("ppl", ()) if p["method"] != "full"]
    if not recall and not ppl:
        raise AnLLMError("sweep_figure needs recall or perplexity points")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["recall (higher is better)", "perplexity (lower is better)"])
    keys = list(dict.fromkeys((p["method"], p["weights"]) for p in recall + ppl))
    for i, (method, weights) in enumerate(keys):
        name = f"{method} ({weights})"
        line = {
            "color": _SWEEP_COLORS.get(method, mode_color(method, i)),
            "dash": "dot" if weights == "base" else "solid",
        }
        sel = sorted(
            (p for p in recall if (p["method"], p["weights"]) == (method, weights)), key=lambda p: p["kv_frac"]
        )
        if sel:
            fig.add_trace(
                go.Scatter(
                    x=[100 * p["kv_frac"] for p in sel],
                    y=[100 * p["em"] for p in sel],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [100 * (p["hi"] - p["em"]) for p in sel],
                        "arrayminus": [100 * (p["em"] - p["lo"]) for p in sel],
                    },
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    line=line,
                ),
                row=1,
                col=1,
            )
        for j, filler in enumerate(dict.fromkeys(p["filler"] for p in ppl)):
            sel = sorted(
                (p for p in ppl if (p["method"], p["weights"], p["filler"]) == (method, weights, filler)),
                key=lambda p: p["kv_frac"],
            )
            if sel:
                fig.add_trace(
                    go.Scatter(
                        x=[100 * p["kv_frac"] for p in sel],
                        y=[p["ppl"] for p in sel],
                        mode="lines+markers",
                        marker={"symbol": ("circle", "square", "diamond")[j % 3]},
                        name=f"{name}, {filler}",
                        legendgroup=name,
                        showlegend=not recall,
                        line=line,
                        hovertemplate=f"{filler}: " + "KV %{x:.1f}%, ppl %{y:.2f}<extra>" + name + "</extra>",
                    ),
                    row=1,
                    col=2,
                )
    for c in (1, 2):
        fig.update_xaxes(title_text="KV entries kept (% of the context)", row=1, col=c)
    fig.update_yaxes(title_text="exact match (%)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="perplexity (log)", type="log", row=1, col=2)
    _layout(fig, title, height, "sweep")
    fig.update_layout(legend={"orientation": "h", "y": -0.22, "yanchor": "top", "x": 0, "xanchor": "left"})
    fig.update_layout(margin={"b": 110})
    return fig


# -- attention maps, ablations, benchmarks ------------------------------------------------------------------------
def attention_figure(
    maps: Mapping[str, Any],
    labels: Sequence[str],
    anchors: Sequence[bool],
    *,
    title: str = "Attention probabilities (row = query token, column = key token)",
    height: int = 460,
    zmax: float | None = None,
) -> go.Figure:
    """Side-by-side heatmaps of ``(T, T)`` attention probability matrices sharing one colour scale.

    Args:
        maps: panel title -> ``(T, T)`` matrix (tensor or array) of probabilities in [0, 1].
        labels: the text of each token (axis ticks when there are at most 48 tokens); anchors are marked ⚓.
        anchors: whether each token is an anchor.
        zmax: top of the colour scale (default: the 99th percentile of all values, so small weights stay visible).
    """
    names = list(maps)
    if not names:
        raise AnLLMError("attention_figure needs at least one map")
    arrays = [np.round(np.asarray(maps[n], dtype=float), 4) for n in names]
    top = zmax if zmax is not None else float(np.quantile(np.concatenate([a.ravel() for a in arrays]), 0.99)) or 1.0
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.1)
    ticks = _tick_labels(labels, anchors)
    for c, z in enumerate(arrays, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                zmin=0,
                zmax=top,
                colorscale="Viridis",
                showscale=c == len(names),
                colorbar={"title": {"text": "probability"}},
                hovertemplate="query %{y} → key %{x}: %{z:.4f}<extra></extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_xaxes(title_text="key token (index)", row=1, col=c)
        fig.update_yaxes(title_text="query token (index)", autorange="reversed", row=1, col=c)
    if len(ticks) <= 48:
        idx = list(range(len(ticks)))
        fig.update_xaxes(tickmode="array", tickvals=idx, ticktext=ticks, tickangle=-60, tickfont={"size": 8})
        fig.update_yaxes(tickmode="array", tickvals=idx, ticktext=ticks, tickfont={"size": 8})
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white")
    return fig


def ablation_figure(
    rows: Sequence[Any], *, title: str = "Perplexity per variant (real cache decoding)", height: int = 380
) -> go.Figure:
    """Bars of perplexity per variant (log scale) with the mean KV kept printed on each bar."""
    if not rows:
        raise AnLLMError("ablation_figure needs at least one row")
    groups = list(dict.fromkeys(r.group for r in rows))
    fig = go.Figure()
    for i, g in enumerate(groups):
        sel = [r for r in rows if r.group == g]
        fig.add_trace(
            go.Bar(
                x=[r.name for r in sel],
                y=[round(r.ppl, 3) for r in sel],
                name=g or "variant",
                marker_color=_ABLATION_PALETTE[i % len(_PALETTE)],
                text=[f"{r.ppl:.1f}<br>KV {100 * r.kv_kept_mean_frac:.0f}%" for r in sel],
                textposition="outside",
                hovertemplate="%{x}: perplexity %{y:.2f}<extra></extra>",
            )
        )
    top = max(r.ppl for r in rows)
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    fig.update_xaxes(title_text="variant")
    low = min(r.ppl for r in rows)
    fig.update_yaxes(
        title_text="perplexity (log scale, lower is better)",
        type="log",
        range=[math.log10(max(low, 1.0)) - 0.1, math.log10(top) + 0.35],
    )
    return fig


def budget_figure(
    rows: Sequence[Any],
    *,
    title: str = "KV budget vs perplexity",
    height: int = 420,
    reference: Any | None = None,
) -> go.Figure:
    """Perplexity against the mean fraction of KV entries kept, one curve per group.

    Args:
        rows: variants with a ``group`` each (e.g. ``"anchor"``, ``"streaming"``, ``"sepllm"``).
        reference: drawn as a horizontal dashed line (typically the full cache).
    """
    if not rows:
        raise AnLLMError("budget_figure needs at least one row")
    fig = go.Figure()
    for i, g in enumerate(dict.fromkeys(r.group for r in rows)):
        sel = sorted((r for r in rows if r.group == g), key=lambda r: r.kv_kept_mean_frac)
        fig.add_trace(
            go.Scatter(
                x=[round(100 * r.kv_kept_mean_frac, 2) for r in sel],
                y=[round(r.ppl, 3) for r in sel],
                mode="lines+markers",
                name=g or "variant",
                line={"color": _ABLATION_PALETTE[i % len(_PALETTE)], "width": 2.5},
                customdata=[r.name for r in sel],
                hovertemplate="%{customdata}<br>KV kept %{x:.1f}%<br>perplexity %{y:.2f}<extra></extra>",
            )
        )
    if reference is not None:
        fig.add_hline(
            y=reference.ppl,
            line_dash="dash",
            line_color="#64748b",
            annotation_text=f"{reference.name}: {reference.ppl:.1f}",
            annotation_position="top left",
        )
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    fig.update_xaxes(title_text="KV entries kept (% of tokens seen, mean over chunks)", rangemode="tozero")
    fig.update_yaxes(title_text="perplexity (log scale, lower is better)", type="log")
    return fig


def chat_memory_figure(
    turns: Sequence[Any], *, title: str = "KV cache after each chat turn", height: int = 320
) -> go.Figure:
    """KV entries per layer after each turn of a chat: the anchor cache next to what a full cache would hold.

    Args:
        turns: records with ``turn``, ``kv_entries`` and ``tokens_seen`` (e.g. :class:`anllm.chat.TurnStats`); a
            full cache holds one entry per token seen, so its line needs no second run.
    """
    x = [int(t.turn) for t in turns]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[int(t.tokens_seen) for t in turns],
            name="full cache (every token seen)",
            mode="lines+markers",
            line={"color": mode_color("full"), "width": 2.5, "dash": "dash"},
            hovertemplate="turn %{x}<br>%{y} entries<extra>full</extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[int(t.kv_entries) for t in turns],
            name="anchor cache (kept)",
            mode="lines+markers",
            line={"color": mode_color("anchor"), "width": 2.5},
            hovertemplate="turn %{x}<br>%{y} entries<extra>anchor</extra>",
        )
    )
    _layout(fig, title, height, "chat")
    fig.update_xaxes(title_text="turn", rangemode="tozero", dtick=1 if len(x) <= 20 else None)
    fig.update_yaxes(title_text="KV entries per layer", rangemode="tozero")
    return fig


def first_token_figure(
    anchor_s: Sequence[float | None],
    full_s: Sequence[float | None],
    *,
    title: str = "Time to first token per question",
    height: int = 320,
) -> go.Figure:
    """Seconds to the first answer token for each question asked of one document: loading the saved anchor cache
    and continuing it vs re-prefilling document + question with a full cache (a missing value is left out)."""
    fig = go.Figure()
    for mode, ys, name in (
        ("full", full_s, "full cache: re-prefill document + question"),
        ("anchor", anchor_s, "anchor cache: load the file + question"),
    ):
        fig.add_trace(
            go.Bar(
                x=list(range(1, len(ys) + 1)),
                y=list(ys),
                name=name,
                marker_color=mode_color(mode),
                hovertemplate="question %{x}<br>%{y:.3f} s<extra>" + mode + "</extra>",
            )
        )
    _layout(fig, title, height, "first-token")
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="question", dtick=1)
    fig.update_yaxes(title_text="time to first token (s)", rangemode="tozero")
    return fig


def bench_figure(results: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """``anllm bench --plot``: six panels against context length.

    Prefill time, decode tokens/s, KV bytes, peak memory, and prefill against the references of the same run: the
    fraction of the backbone limit on each row's own chunks, and the speed-up over the one-pass full prefill.

    Args:
        results: context (as a string) -> mode -> :class:`anllm.bench.ModeResult`, as :func:`anllm.bench.run_bench`
            returns them.
    """
    panels = [
        ("prefill_s", "prefill time (s)"),
        ("decode_tok_s", "decode tokens/s"),
        ("kv_bytes", "KV bytes at the end"),
        ("peak_mem_bytes", "peak memory (bytes)"),
        ("prefill_of_limit", "prefill: fraction of the backbone limit (same chunks)"),
        ("prefill_vs_onepass", "prefill: speed-up over one-pass full prefill"),
    ]
    fig = make_subplots(rows=3, cols=2, subplot_titles=[t for _, t in panels])
    contexts = [int(c) for c in results]
    modes = list(dict.fromkeys(m for row in results.values() for m in row))
    for mode in modes:
        for j, (key, _) in enumerate(panels):
            ys = [getattr(results[str(c)][mode], key) if mode in results[str(c)] else None for c in contexts]
            if all(y is None for y in ys):
                continue  # e.g. no decode for the prefill-only rows
            fig.add_trace(
                go.Scatter(x=contexts, y=ys, mode="lines+markers", name=mode, legendgroup=mode, showlegend=j == 0),
                row=j // 2 + 1,
                col=j % 2 + 1,
            )
    fig.update_xaxes(title_text="context (tokens)", type="log")
    fig.update_layout(title="anllm bench", height=1150)
    return fig


# -- static images in notebooks ------------------------------------------------------------------------------------
def static_export_available() -> bool:
    """True when plotly can write PNGs here: kaleido is installed and finds a Chrome or Chromium to drive."""
    if importlib.util.find_spec("kaleido") is None:
        return False
    return bool(os.environ.get("BROWSER_PATH")) or any(shutil.which(name) for name in _CHROMES)


def notebook_renderer() -> str:
    """The plotly renderer of the tutorial notebooks.

    With kaleido and a Chrome/Chromium: the figure as JSON (interactive in JupyterLab and VS Code) plus a static
    PNG, which viewers that run no JavaScript show instead (GitHub, Hub previews, Colab's view of saved outputs).
    Without: the JSON plus a small HTML loader taking plotly.js from the CDN.
    """
    return "plotly_mimetype+png" if static_export_available() else "plotly_mimetype+notebook_connected"
