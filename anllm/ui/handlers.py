"""Handler logic of the Gradio app (``app/app.py``), kept in the package so it is reusable and tested.

* :class:`anllm.ui.registry.ModelRegistry` (models by name) gives the handlers their model.
* :func:`compare_stream` runs the same prompt through several cache modes *sequentially* in a producer thread
  (so UI work never pauses the decode loop and timings stay honest) and yields throttled snapshots.
* :class:`AppHandlers` turns those snapshots into values for Gradio components (HTML with anchors highlighted,
  plotly figures, a stats table, a status line); every user error becomes a status message, never a traceback.
* the mask explorer's tab shows :func:`anllm.explorer.explore_masks` (tokens, masks, KV-drop schedule).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anllm.config import AnLLMError, GenerationConfig
from anllm.explorer import MaskView, explore_masks, mask_summary
from anllm.generation import GenerationResponse, stream_generate
from anllm.models import LoadedModel
from anllm.plots import MB, kv_cache_spec, mask_figure, schedule_figure, speed_spec
from anllm.policies import BUDGETED, POLICIES, budget_spec
from anllm.ui.registry import ModelRegistry

logger = logging.getLogger(__name__)

BASE_MODES = ("full", "anchor")
NO_PEER = "none"
MAX_NEW_TOKENS = 1024  # app-side cap: a public demo must not be asked for unbounded work
MAX_PROMPT_CHARS = 20_000
MEMORY_FACT = "The code for the blue door is 4821."
MEMORY_QUESTION = "What is the code for the blue door? Answer with the number only."
MEMORY_ANSWER = "4821"
MAX_REQUEST_S = 60.0  # compute time of one generation request, all modes together (ANLLM_MAX_REQUEST_S)
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
TOKENS_CSS = """
.anllm-text { white-space: pre-wrap; word-break: break-word; line-height: 1.55; font-size: 0.95rem;
  min-height: 6rem; padding: 0.5rem; }
.anllm-text mark.anllm-anchor { background: #fdba74; color: #431407; border-radius: 3px; padding: 0 1px; }
.anllm-text .anllm-placeholder { color: #94a3b8; }
.anllm-tokens span.anllm-tok { border: 1px solid #cbd5e1; border-radius: 3px; margin: 1px; padding: 0 2px;
  display: inline-block; white-space: pre; font-family: ui-monospace, monospace; font-size: 0.85rem; }
.anllm-tokens span.anllm-tok.anllm-anchor { background: #fdba74; border-color: #ea580c; }
"""


# -- Spaces -----------------------------------------------------------------------------------------------------
def maybe_gpu(fn: Callable, duration: int | Callable[..., int] = 120) -> Callable:
    """``spaces.GPU(duration=...)(fn)`` when the ``spaces`` package is installed (ZeroGPU), else ``fn`` unchanged.

    ``duration``: seconds, or a callable taking ``fn``'s arguments (see :func:`anllm.zerogpu.gpu_duration`).
    """
    try:
        import spaces  # noqa: PLC0415 - optional, only on Hugging Face Spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


# -- models -----------------------------------------------------------------------------------------------------
def peer_policies() -> list[str]:
    """Registered cache policies other than ``full`` and ``anchor`` (peers for the optional third column)."""
    return [name for name in POLICIES if name not in BASE_MODES]


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2]) + os.sep  # the checkout (or site-packages)
_MARKDOWN_SPECIAL = re.compile(r"[\\\[]")  # an escaped "[" starts no link or image


def public_text(text: str) -> str:
    """``text`` safe to show on a public page: HTML escaped, the server's checkout and home paths made relative."""
    text = text.replace(_PACKAGE_ROOT, "").replace(str(Path.home()) + os.sep, "~" + os.sep)
    text = _MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)  # no links, images or emphasis from what a visitor typed
    return html.escape(text, quote=False)


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


# -- settings ---------------------------------------------------------------------------------------------------
def _number(value: Any, name: str, kind: type) -> Any:
    try:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError
        x = float(value)
        if kind is int:
            if x != int(x):
                raise ValueError
            return int(x)
        return x
    except (TypeError, ValueError, OverflowError):
        raise AnLLMError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def make_generation_config(
    *,
    max_new_tokens: Any = 96,
    temperature: Any = 0.0,
    top_p: Any = 1.0,
    top_k: Any = 0,
    repetition_penalty: Any = 1.0,
    seed: Any = 0,
    chat: bool = True,
    max_new_tokens_cap: int = MAX_NEW_TOKENS,
) -> GenerationConfig:
    """Build a :class:`GenerationConfig` from UI values (numbers may arrive as floats or strings).

    Raises:
        AnLLMError: naming the setting and the allowed range.
    """
    n = _number(max_new_tokens, "max new tokens", int)
    if not 1 <= n <= max_new_tokens_cap:
        raise AnLLMError(f"max new tokens must be between 1 and {max_new_tokens_cap}, got {n}")
    s = None if seed is None or seed == "" else _number(seed, "seed", int)
    return GenerationConfig(
        max_new_tokens=n,
        temperature=_number(temperature, "temperature", float),
        top_p=_number(top_p, "top-p", float),
        top_k=_number(top_k, "top-k", int),
        repetition_penalty=_number(repetition_penalty, "repetition penalty", float),
        seed=None if s is None or s < 0 else s,
        chat=bool(chat),
    )


# -- side-by-side streaming -------------------------------------------------------------------------------------
@dataclass
class ModeRun:
    """What one mode produced so far: the per-token responses of the decode loop, verbatim."""

    mode: str
    responses: list[GenerationResponse] = field(default_factory=list)
    error: str | None = None
    done: bool = False

    @property
    def last(self) -> GenerationResponse | None:
        return self.responses[-1] if self.responses else None

    @property
    def text(self) -> str:
        return "".join(r.text for r in self.responses)

    def stats_row(self) -> list:
        """One row of :data:`STATS_HEADERS` (empty cells while nothing was generated)."""
        r = self.last
        if r is None:
            return [self.mode, None, None, 0, None, None, None, None, None, self.error and "error"]
        s = r.stats
        return [
            self.mode,
            round(self.responses[0].elapsed_s, 3),
            round(s.tokens_per_s, 1) if s.new_tokens > 1 else None,
            s.new_tokens,
            s.kv_entries,
            s.kv_full_entries,
            round(s.kv_bytes / MB, 4),
            f"{s.kv_reduction:.1%}",
            s.n_evicted,
            r.finish_reason or ("stopped" if self.error else "running"),
        ]


@dataclass
class CompareState:
    """A snapshot of a side-by-side run; ``runs`` are in the order the modes were asked for."""

    runs: list[ModeRun]
    active: int = 0  # index of the mode being generated
    finished: bool = False
    plots_due: bool = True  # the figures changed enough to be re-sent

    def run(self, mode: str) -> ModeRun:
        return next(r for r in self.runs if r.mode == mode)


_DONE = object()


class _TimeUp(Exception):
    """Raised inside the model's forward pass by :func:`_deadline_hooks` when a mode has used its time."""


@contextlib.contextmanager
def _deadline_hooks(model: torch.nn.Module, deadline: list[float]):
    """Make every decoder layer of ``model`` raise :class:`_TimeUp` in this thread once ``deadline[0]`` has passed.

    Checked per layer, so even one long prefill forward stops within about one layer's time. Only the calling
    thread is affected (the app runs one generation at a time; other threads may use the model meanwhile).
    """
    me = threading.get_ident()

    def check(module, args):
        if threading.get_ident() == me and time.perf_counter() > deadline[0]:
            raise _TimeUp

    layers = getattr(getattr(model, "model", None), "layers", None) or [model]
    handles = [layer.register_forward_pre_hook(check) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def memory_test_prompt(filler_chars: int = 1600) -> str:
    """The app's memory test: a fact, about 400 tokens of KJV Genesis 12 (public domain), then the question.

    Full cache vs anchor cache vs StreamingLLM at the anchor cache's size shows in seconds whether the anchors kept
    the fact (docs/evaluation.md, "Recall", measures the same at scale).
    """
    from anllm.evaluation.recall import DEFAULT_FILLER

    chapter = DEFAULT_FILLER.read_text(encoding="utf-8").split("\n\n")[11]
    cut = chapter.rfind(". ", 0, filler_chars) + 1  # end on a sentence
    return f"{MEMORY_FACT} {chapter[:cut]}\n\n{MEMORY_QUESTION}"


def budget_matched_peer(lm: LoadedModel, prompt: str, peer: str, chat: bool) -> str:
    """A bare ``streaming`` / ``sepllm`` peer sized to the anchor cache's entries after ``prompt`` (as
    ``anllm eval recall --budget anchor`` does); other peers are returned unchanged.

    The anchor cache's size after a prompt depends only on the token ids, so it is computed without the model.
    """
    from anllm.generation import encode_prompt, make_cache

    if peer not in BUDGETED:
        return peer
    ids = torch.tensor([encode_prompt(lm, prompt, chat)])
    cache = make_cache(lm, "anchor")
    cache.prepare(ids)
    cache.evict()  # metadata only: no K/V is stored, the policy's keep rule runs on the token ids
    n = max(2, int(cache.n_kept()[0]))
    return budget_spec(peer, n)


def _produce(
    lm, prompt, modes, gen, out: queue.Queue, stop: threading.Event, time_limit_s: float | None = None
) -> None:
    """Producer thread: run each mode to completion, one after the other, pushing every response.

    With ``time_limit_s``, mode ``i`` of ``n`` must finish by ``(i + 1) / n`` of it (time a mode leaves unused
    goes to the next); a mode cut off reports a message and keeps the tokens it made.
    """
    t0 = time.perf_counter()
    deadline = [float("inf")]
    hooks = _deadline_hooks(lm.model, deadline) if time_limit_s is not None else contextlib.nullcontext()
    try:
        with hooks:
            _produce_modes(lm, prompt, modes, gen, out, stop, t0, time_limit_s, deadline)
    finally:
        out.put((None, _DONE))


def _produce_modes(lm, prompt, modes, gen, out, stop, t0, time_limit_s, deadline) -> None:
    for i, mode in enumerate(modes):
        if stop.is_set():
            break
        if time_limit_s is not None:
            deadline[0] = t0 + time_limit_s * (i + 1) / len(modes)
        name, stream = (
            (mode[0], mode[1]()) if isinstance(mode, tuple) else (mode, stream_generate(lm, prompt, mode, gen))
        )
        try:
            for r in stream:
                out.put((i, r))
                if stop.is_set():
                    break
        except _TimeUp:
            msg = f"stopped at this server's time limit ({time_limit_s:g} s a request, shared by the cache modes)"
            out.put((i, AnLLMError(msg + "; ask for fewer tokens or a shorter prompt")))
        except AnLLMError as e:
            out.put((i, e))
            out.put((i, _DONE))
            break  # a bad prompt or setting fails the same way in every mode: report it once
        except Exception as e:  # noqa: BLE001 - reported to the UI; the traceback goes to the log only
            logger.exception("generation failed in mode %s", name)
            out.put((i, AnLLMError(f"generation failed in mode {name!r}: {type(e).__name__}: {e}")))
        finally:
            stream.close()
        out.put((i, _DONE))


def compare_stream(
    lm: LoadedModel,
    prompt: str,
    modes: Sequence[str],
    gen: GenerationConfig,
    *,
    interval_s: float = 0.1,
    plot_interval_s: float = 0.5,
    time_limit_s: float | None = None,
) -> Iterator[CompareState]:
    """Generate ``prompt`` under each mode in turn and yield snapshots at most every ``interval_s`` seconds.

    A mode is a cache mode (``stream_generate(lm, prompt, mode, gen)``) or a ``(name, start)`` pair whose
    ``start()`` returns the response iterator to run instead (a saved document, a chat turn); make ``start`` a
    generator function so that its errors are reported like the decode loop's.

    The decode loop runs in its own thread, so the consumer's work (rendering, sending) never pauses it and the
    timings it reports are those of the loop alone. Closing this generator stops the producer after its current
    token and waits for it, so a cancelled request frees the model before the next one starts.
    ``plots_due`` is set at most every ``plot_interval_s`` seconds and whenever a mode finishes. With
    ``time_limit_s`` the modes share that much time (see :func:`_produce`); a mode cut off gets an error message.
    """
    state = CompareState([ModeRun(m if isinstance(m, str) else m[0]) for m in modes])
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(lm, prompt, list(modes), gen, out, stop, time_limit_s), daemon=True
    )
    producer.start()
    last_yield = last_plot = time.perf_counter()
    try:
        while True:
            try:
                items = [out.get(timeout=interval_s)]
            except queue.Empty:
                items = []
            while True:  # drain what is there without waiting
                try:
                    items.append(out.get_nowait())
                except queue.Empty:
                    break
            mode_finished = False
            for i, item in items:
                if i is None:
                    state.finished = True
                elif item is _DONE:
                    state.runs[i].done, mode_finished = True, True
                    state.active = min(i + 1, len(modes) - 1)
                elif isinstance(item, AnLLMError):
                    state.runs[i].error = str(item)
                else:
                    state.runs[i].responses.append(item)
                    state.active = i
            now = time.perf_counter()
            if state.finished:
                state.plots_due = True
                yield state
                return
            if items and now - last_yield >= interval_s:
                state.plots_due = mode_finished or now - last_plot >= plot_interval_s
                if state.plots_due:
                    last_plot = now
                last_yield = now
                yield state
    finally:
        stop.set()
        producer.join(timeout=60)


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


def runs_by_mode(state: CompareState) -> dict[str, list[GenerationResponse]]:
    """``{mode: responses}`` for the figure builders in :mod:`anllm.plots`."""
    return {run.mode: run.responses for run in state.runs}


def _status(state: CompareState, lm: LoadedModel) -> str:
    errors = [
        f"**{r.mode}**: {public_text(r.error)}" if r.responses else public_text(r.error) for r in state.runs if r.error
    ]
    if errors:
        return "⚠️ " + " · ".join(errors)
    if not state.finished:
        run = state.runs[state.active]
        return f"⏳ generating with the **{run.mode}** cache… {len(run.responses)} tokens"
    parts = []
    for run in state.runs:
        r = run.last
        if r is not None:
            parts.append(f"**{run.mode}**: {r.step} tokens, {r.kv_entries}/{r.kv_full_entries} KV entries kept")
    note = "" if lm.anchor_trained else " · note: the model is not anchor-trained (see the model panel)"
    return "✅ done · " + " · ".join(parts) + note


def plot_value(spec: dict) -> Any:
    """A ``gr.Plot`` value from a plotly spec dict, serialised directly (no plotly validation on the hot path)."""
    from gradio.components.plot import PlotData

    return PlotData(type="plotly", plot=json.dumps(spec))


def error_markdown(message: str) -> str:
    """The status line for an error the user can fix (escaped: it may quote what the visitor typed)."""
    return f"⚠️ {public_text(message)}"


# -- mask explorer ----------------------------------------------------------------------------------------------
def mask_tokens_html(view: MaskView) -> str:
    """The tokens as chips, anchors highlighted."""
    chips = []
    for i, (label, anchor) in enumerate(zip(view.labels, view.anchors)):
        cls = "anllm-tok anllm-anchor" if anchor else "anllm-tok"
        shown = html.escape(label.replace("\n", "⏎"))
        chips.append(f'<span class="{cls}" title="token {i} (id {view.token_ids[i]})">{shown}</span>')
    return '<div class="anllm-tokens">' + "".join(chips) + "</div>"


# -- Gradio-facing handlers -------------------------------------------------------------------------------------
class AppHandlers:
    """The app's event handlers, bound to a :class:`ModelRegistry` (``app/app.py`` only wires them to components).

    Args:
        registry: where models come from.
        interval_s: the most often text and stats are re-sent while streaming.
        plot_interval_s: the most often the plotly figures are re-sent (re-serialising them per token is slow).
        max_new_tokens_cap: the largest ``max new tokens`` the app accepts.
        max_request_s: the most seconds one generation request may compute, all modes together (None = no limit).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        interval_s: float = 0.1,
        plot_interval_s: float = 0.5,
        max_new_tokens_cap: int = MAX_NEW_TOKENS,
        max_request_s: float | None = MAX_REQUEST_S,
    ) -> None:
        self.registry = registry
        self.interval_s, self.plot_interval_s, self.max_new_tokens_cap = interval_s, plot_interval_s, max_new_tokens_cap
        self.max_request_s = max_request_s
        self.active_streams = 0  # generation requests running right now (for tests and monitoring)
        self.completed_streams = 0
        self._count_lock = threading.Lock()

    def _bump(self, active: int, completed: int = 0) -> None:
        with self._count_lock:
            self.active_streams += active
            self.completed_streams += completed

    # model panel
    def model_info(self, model_name: str | None) -> str:
        """Load ``model_name`` and describe it (or explain why it cannot be loaded)."""
        try:
            return model_markdown(self.registry.get(model_name))
        except AnLLMError as e:
            return error_markdown(str(e))

    def peer_column(self, peer: str | None) -> dict:
        """Show the third column (labelled with the policy) only when a peer policy is chosen."""
        import gradio as gr

        on = bool(peer) and peer != NO_PEER
        return gr.update(visible=on, label=f"{peer} KV cache" if on else "Peer policy")

    def explorer_setting(self, model_name: str | None) -> tuple:
        """The mask explorer's anchor kind, sinks, window and anchor-sees-anchor set to the model's served setting.

        Returns:
            ``(kind, n_sink, window, anchors_see_anchors)``, or skips when the model cannot be loaded.
        """
        import gradio as gr

        try:
            a = self.registry.get(model_name).anchor
        except AnLLMError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return a.kind.upper(), a.n_sink, a.window, a.anchors_see_anchors

    # generate tab
    def generate(
        self,
        prompt: str,
        model_name: str | None,
        peer: str | None,
        chat: bool,
        max_new_tokens: Any,
        temperature: Any,
        top_p: Any,
        top_k: Any,
        repetition_penalty: Any,
        seed: Any,
    ) -> Iterator[tuple]:
        """Stream full vs anchor (vs a peer policy) side by side.

        Yields:
            ``(full_html, anchor_html, peer_html, kv_figure, speed_figure, stats_rows, status_markdown)``; a value
            that did not change is ``gr.skip()``: charts, stats and status are re-sent only every
            ``plot_interval_s`` (and when a mode finishes), so a slow browser is not flooded. The last yield
            carries every value.
        """
        import gradio as gr

        self._bump(+1)
        try:
            try:
                if not isinstance(prompt, str) or not prompt.strip():
                    raise AnLLMError("the prompt is empty: type a question or some text to continue")
                if len(prompt) > MAX_PROMPT_CHARS:
                    raise AnLLMError(f"the prompt has {len(prompt)} characters; this app accepts {MAX_PROMPT_CHARS}")
                gen = make_generation_config(
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    repetition_penalty=repetition_penalty,
                    seed=seed,
                    chat=chat,
                    max_new_tokens_cap=self.max_new_tokens_cap,
                )
                modes = list(BASE_MODES)
                if peer and peer != NO_PEER and peer not in peer_policies():
                    raise AnLLMError(f"unknown peer policy {peer!r}; choose one of {peer_policies() or 'none'}")
                lm = self.registry.get(model_name)
                if peer and peer != NO_PEER:  # at the anchor cache's size: a fair comparison of what is kept
                    modes.append(budget_matched_peer(lm, prompt, peer, bool(chat)))
            except AnLLMError as e:
                empty = tokens_html([])
                yield empty, empty, empty, gr.skip(), gr.skip(), [], error_markdown(str(e))
                return
            placeholders = {m: f"waiting for the {m} run…" for m in modes}
            sent: list[str | None] = [None, None, None]
            first = True
            for state in compare_stream(
                lm,
                prompt,
                modes,
                gen,
                interval_s=self.interval_s,
                plot_interval_s=self.plot_interval_s,
                time_limit_s=self.max_request_s,
            ):
                texts = [tokens_html(r.responses, placeholders[r.mode]) for r in state.runs]
                texts += [tokens_html([])] * (3 - len(texts))
                # only what changed goes to the browser: between chart ticks that is the active column alone
                out = texts if state.finished else [gr.skip() if t == old else t for t, old in zip(texts, sent)]
                sent = texts
                if state.plots_due or first:
                    by_mode = runs_by_mode(state)
                    charts = [plot_value(kv_cache_spec(by_mode)), plot_value(speed_spec(by_mode))]
                    tail = [[r.stats_row() for r in state.runs], _status(state, lm)]
                else:
                    charts = [gr.skip(), gr.skip()]
                    tail = [gr.skip(), gr.skip()]
                first = False
                yield (*out, *charts, *tail)
            self._bump(0, +1)
        finally:
            self._bump(-1)

    # mask explorer tab
    def explore(
        self, model_name: str | None, text: str, kind: str, n_sink: Any, window: Any, anchors_see_anchors: bool
    ) -> tuple:
        """Tokens with anchors, AnSAN vs causal masks, and the KV-drop schedule.

        Returns:
            ``(tokens_html, mask_figure, schedule_figure, summary_markdown)``.
        """
        import gradio as gr

        try:
            lm = self.registry.get(model_name)
            n_sink, window = _number(n_sink, "sink tokens", int), _number(window, "window", int)
            view = explore_masks(lm, text, kind, n_sink=n_sink, window=window, anchors_see_anchors=anchors_see_anchors)
        except AnLLMError as e:
            return "", gr.skip(), gr.skip(), error_markdown(str(e))
        masks = {"causal (full attention)": view.causal, "AnSAN (anchor attention)": view.ansan}
        return (
            mask_tokens_html(view),
            mask_figure(masks, view.labels, view.anchors),
            schedule_figure(view.schedule, view.labels, view.anchors),
            mask_summary(view),
        )
