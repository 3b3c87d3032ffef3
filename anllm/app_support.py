"""Handler logic of the Gradio app (``app/app.py``), kept in the package so it is reusable and tested.

* :class:`ModelRegistry` loads models lazily by name, one at a time, and turns every failure into a message.
* :func:`compare_stream` runs the same prompt through several cache modes *sequentially* in a producer thread
  (so UI work never pauses the decode loop and timings stay honest) and yields throttled snapshots.
* :class:`AppHandlers` turns those snapshots into values for Gradio components (HTML with anchors highlighted,
  plotly figures, a stats table, a status line); every user error becomes a status message, never a traceback.
* :func:`kv_drop_schedule` and :func:`explore_masks` back the mask explorer.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from anllm.anchors import ep_anchor_ids, insert_ac
from anllm.cache import PolicyCache
from anllm.config import AC_TOKEN, PRESETS, AnLLMError, GenerationConfig
from anllm.generation import GenerationResponse, stream_generate
from anllm.masks import ansan_mask
from anllm.models import BUILTIN_MODELS, LoadedModel, load_model
from anllm.plots import MB, kv_cache_spec, mask_figure, schedule_figure, speed_spec
from anllm.policies import BUDGETED, POLICIES, AnchorPolicy, budget_spec

logger = logging.getLogger(__name__)

BASE_MODES = ("full", "anchor")
NO_PEER = "none"
MAX_NEW_TOKENS = 1024  # app-side cap: a public demo must not be asked for unbounded work
MAX_PROMPT_CHARS = 20_000
MEMORY_FACT = "The code for the blue door is 4821."
MEMORY_QUESTION = "What is the code for the blue door? Answer with the number only."
MEMORY_ANSWER = "4821"
MAX_REQUEST_S = 60.0  # compute time of one generation request, all modes together (ANLLM_MAX_REQUEST_S)
EXPLORER_MAX_TOKENS = 160
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
def model_choices() -> list[str]:
    """Model picker entries: the embedded default first, the base SmolLM2, released presets, the test model."""
    return ["default", "smollm2-135m", *PRESETS, "tiny-random"]


def peer_policies() -> list[str]:
    """Registered cache policies other than ``full`` and ``anchor`` (peers for the optional third column)."""
    return [name for name in POLICIES if name not in BASE_MODES]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection within ``timeout_s`` (DNS included)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout_s)
    return ok.is_set()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def allowed_models_from_env(default: str) -> tuple[str, ...] | None:
    """The models visitors may load: ``$ANLLM_ALLOWED_MODELS`` (comma-separated; ``*`` = any), else only the
    default on a Hugging Face Space (``$SPACE_ID`` set), else any (``None``)."""
    raw = os.environ.get("ANLLM_ALLOWED_MODELS")
    if raw is None:
        return (default,) if os.environ.get("SPACE_ID") else None
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return None if "*" in names else tuple(dict.fromkeys((default, *names)))


class ModelRegistry:
    """Loads models by name on first use; the default stays resident, plus the most recent ``max_loaded - 1`` others.

    Args:
        default: the model used when a request names none; never dropped once loaded, so a visitor who switches
            models does not make the next visitor wait for the default to reload.
        device, dtype: where and how to load (chosen by the caller, at the edge).
        max_loaded: models kept in memory, the default included (at least 1).
        allowed: the only names visitors may load (the default is always allowed); ``None`` = any.
        loader: the load function (``anllm.models.load_model``; tests may pass another).
    """

    def __init__(
        self,
        default: str = "default",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_loaded: int = 2,
        allowed: Sequence[str] | None = None,
        loader: Callable[..., LoadedModel] = load_model,
    ) -> None:
        self.default = default
        self.device, self.dtype, self.max_loaded, self.loader = device, dtype, max(1, max_loaded), loader
        self.allowed = None if allowed is None else tuple(dict.fromkeys((default, *allowed)))
        self.n_loads = 0  # models loaded so far (a resident default is loaded once)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        """Names of the models in memory, oldest first."""
        return list(self._models)

    def get(self, name: str | None = None) -> LoadedModel:
        """The model called ``name`` (the default when empty), loading it if needed.

        Raises:
            AnLLMError: with a message for the user (not allowed here, unknown name, Hub unreachable, load failure).
        """
        name = (name or "").strip() or self.default
        if self.allowed is not None and name not in self.allowed:
            raise AnLLMError(
                f"this app serves only {', '.join(self.allowed)}; model {name!r} is not among them "
                "(the host chooses with ANLLM_ALLOWED_MODELS)"
            )
        with self._lock:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recent last
                return self._models[name]
            self._check_source(name)
            try:
                lm = self.loader(name, dtype=self.dtype, device=self.device)
            except AnLLMError:
                raise
            except Exception as e:  # noqa: BLE001 - any load failure is reported, not raised as a traceback
                logger.exception("loading %s failed", name)
                raise AnLLMError(f"could not load model {name!r}: {type(e).__name__}: {e}".split("\n")[0]) from e
            self.n_loads += 1
            while len(self._models) >= self.max_loaded:
                others = [n for n in self._models if n != self.default] or list(self._models)
                self._models.pop(others[0])  # the oldest, the resident default last of all
            self._models[name] = lm
            return lm

    @staticmethod
    def _check_source(name: str) -> None:
        """Fail fast, with a message, for a hub id that cannot be fetched (instead of waiting on the network)."""
        if name in BUILTIN_MODELS or Path(name).exists() or _offline():
            return  # offline, load_model itself fails at once with a clear message
        preset = PRESETS.get(name.lower())
        repo = preset.hub_id if preset is not None else name
        if "/" in repo and not _in_hub_cache(repo) and not hub_reachable():
            raise AnLLMError(
                f"model {name!r} is not in the local Hugging Face cache and the Hub is unreachable from here; "
                "use default, smollm2-135m or tiny-random offline"
            )


_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent) + os.sep
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
        f"{lm.model.dtype} on {device} · anchors: {lm.anchor.mode.upper()} ({len(lm.anchor_ids)} anchor token ids)"
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
        reduction = 1.0 - r.kv_entries / max(r.kv_full_entries, 1)
        return [
            self.mode,
            round(self.responses[0].elapsed_s, 3),
            round(r.tokens_per_s, 1) if r.step > 1 else None,
            r.step,
            r.kv_entries,
            r.kv_full_entries,
            round(r.kv_bytes / MB, 4),
            f"{reduction:.1%}",
            r.n_evicted,
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
        stream = stream_generate(lm, prompt, mode, gen)
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
            logger.exception("generation failed in mode %s", mode)
            out.put((i, AnLLMError(f"generation failed in mode {mode!r}: {type(e).__name__}: {e}")))
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

    The decode loop runs in its own thread, so the consumer's work (rendering, sending) never pauses it and the
    timings it reports are those of the loop alone. Closing this generator stops the producer after its current
    token and waits for it, so a cancelled request frees the model before the next one starts.
    ``plots_due`` is set at most every ``plot_interval_s`` seconds and whenever a mode finishes. With
    ``time_limit_s`` the modes share that much time (see :func:`_produce`); a mode cut off gets an error message.
    """
    state = CompareState([ModeRun(m) for m in modes])
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
@dataclass
class MaskView:
    """Tokens of a text with their anchors, the AnSAN and causal masks, and the KV-drop schedule."""

    token_ids: list[int]
    labels: list[str]
    anchors: list[bool]
    ansan: np.ndarray  # bool (T, T)
    causal: np.ndarray  # bool (T, T)
    schedule: np.ndarray  # float (T, T): 1 kept, 0 evicted, NaN not seen yet
    truncated: bool = False


def tokenize_for_masks(
    lm: LoadedModel, text: str, kind: str = "ep", max_tokens: int = EXPLORER_MAX_TOKENS
) -> tuple[list[int], list[str], tuple[int, ...], bool]:
    """Token ids, token texts and anchor ids of ``text`` (no chat template) under EP or AC anchors.

    In AC mode ``<AC>`` is inserted after each sentence; when the tokenizer has no ``<AC>`` token yet a
    placeholder id outside the vocabulary stands for it (the explorer never runs the model, and the loaded
    model is left unchanged). Returns ``(ids, labels, anchor_ids, truncated)``.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnLLMError("the text is empty: type a few sentences to see their tokens and masks")
    tok = lm.tokenizer
    kind = (kind or "ep").lower()
    if kind not in ("ep", "ac"):
        raise AnLLMError(f"anchor kind must be EP or AC, got {kind!r}")
    if kind == "ep":
        anchor_ids = lm.anchor_ids if lm.anchor.mode == "ep" else ep_anchor_ids(tok, lm.anchor.anchor_chars)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        ac_id = tok.get_vocab().get(AC_TOKEN, max(len(tok), lm.model.config.vocab_size))
        anchor_ids = (ac_id,)
        ids = []
        pieces = insert_ac(text).split(AC_TOKEN)
        for j, piece in enumerate(pieces):
            if piece:
                ids += tok(piece, add_special_tokens=False)["input_ids"]
            if j < len(pieces) - 1:
                ids.append(ac_id)
    truncated = len(ids) > max_tokens
    ids = ids[:max_tokens]
    labels = [AC_TOKEN if (kind == "ac" and i == anchor_ids[0]) else tok.decode([i]) for i in ids]
    return ids, labels, tuple(anchor_ids), truncated


def kv_drop_schedule(
    config: Any, token_ids: Sequence[int], anchor_ids: Sequence[int], policy: AnchorPolicy
) -> np.ndarray:
    """Which tokens a policy cache holds after each token is fed, one token per step (no model is run).

    Uses :class:`anllm.cache.PolicyCache` itself (``prepare`` + ``evict``), so the schedule is the cache's own.

    Args:
        config: the model config (gives the cache its layers; no K/V is stored).
        token_ids: the sequence, fed one token at a time.
        anchor_ids: ids that are anchors.
        policy: e.g. ``AnchorPolicy(n_sink=4)``.
    Returns:
        float ``(T, T)``: row ``t`` after feeding token ``t``; 1 kept, 0 evicted, NaN not seen yet.
    """
    T = len(token_ids)
    out = np.full((T, T), np.nan)
    cache = PolicyCache(config, policy, tuple(anchor_ids))
    for t, token in enumerate(token_ids):
        cache.prepare(torch.tensor([[int(token)]]))
        cache.evict()
        out[t, : t + 1] = 0.0
        kept = cache.meta.pos[0][cache.meta.valid[0]].tolist()
        out[t, kept] = 1.0
    return out


def explore_masks(
    lm: LoadedModel,
    text: str,
    kind: str = "ep",
    *,
    n_sink: int = 0,
    window: int = 0,
    anchors_see_anchors: bool = False,
    max_tokens: int = EXPLORER_MAX_TOKENS,
) -> MaskView:
    """Tokenise ``text`` and compute its AnSAN mask, the causal mask and the anchor cache's KV-drop schedule."""
    n_sink, window = _number(n_sink, "sink tokens", int), _number(window, "window", int)
    policy = AnchorPolicy(anchors_see_anchors=bool(anchors_see_anchors), n_sink=n_sink, window=window)
    ids, labels, anchor_ids, truncated = tokenize_for_masks(lm, text, kind, max_tokens)
    t = torch.tensor([ids])
    is_anc = torch.isin(t, torch.tensor(anchor_ids))
    ansan = ansan_mask(is_anc, anchors_see_anchors=policy.anchors_see_anchors, n_sink=n_sink, window=window)
    T = len(ids)
    return MaskView(
        token_ids=ids,
        labels=labels,
        anchors=is_anc[0].tolist(),
        ansan=ansan[0, 0].numpy(),
        causal=np.tril(np.ones((T, T), dtype=bool)),
        schedule=kv_drop_schedule(lm.model.config, ids, anchor_ids, policy),
        truncated=truncated,
    )


def mask_tokens_html(view: MaskView) -> str:
    """The tokens as chips, anchors highlighted."""
    chips = []
    for i, (label, anchor) in enumerate(zip(view.labels, view.anchors)):
        cls = "anllm-tok anllm-anchor" if anchor else "anllm-tok"
        shown = html.escape(label.replace("\n", "⏎"))
        chips.append(f'<span class="{cls}" title="token {i} (id {view.token_ids[i]})">{shown}</span>')
    return '<div class="anllm-tokens">' + "".join(chips) + "</div>"


def mask_summary(view: MaskView) -> str:
    """One line: tokens, anchors, visible pairs and what the cache keeps at the end."""
    T = len(view.token_ids)
    kept = int(np.nansum(view.schedule[-1])) if T else 0
    peak = int(np.nanmax(np.nansum(view.schedule, axis=1))) if T else 0
    line = (
        f"{T} tokens, {sum(view.anchors)} anchors · AnSAN allows {int(view.ansan.sum())} of "
        f"{int(view.causal.sum())} causal pairs · the anchor cache holds {kept} of {T} entries at the end "
        f"(peak {peak})"
    )
    if view.truncated:
        line += f" · showing the first {T} tokens only"
    return line


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
        return a.mode.upper(), a.n_sink, a.window, a.anchors_see_anchors

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
