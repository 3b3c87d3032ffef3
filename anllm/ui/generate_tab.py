"""The app's Generate tab: one prompt answered with a full and an anchor cache (and a peer policy), side by side.

:meth:`GenerateTab.generate` streams :func:`~anllm.ui.runtime.compare_stream` snapshots as values for the tab's
components (HTML with anchors highlighted, plotly figures, a stats table, a status line); every user error becomes
a status message, never a traceback. **Memory test** (:meth:`GenerateTab.memory_test`) asks five held-out recall
items (fixed seed) of every column the tab shows and tallies the exact matches per column.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr
import torch

from anllm.config import AnLLMError
from anllm.evaluation.recall import exact_match
from anllm.generation import stream_generate
from anllm.memory import MemoryItem
from anllm.models import LoadedModel
from anllm.plots import kv_cache_spec, speed_spec
from anllm.policies import BUDGETED, POLICIES, budget_spec
from anllm.ui.registry import ModelRegistry
from anllm.ui.render import (
    STATS_HEADERS,
    error_markdown,
    measured_recall_markdown,
    plot_value,
    public_text,
    stats_row,
    token_panel,
    tokens_html,
    trained_note,
)
from anllm.ui.runtime import (
    MAX_NEW_TOKENS,
    MAX_REQUEST_S,
    MODEL_SLOT,
    CompareState,
    check_text,
    compare_stream,
    make_generation_config,
    maybe_gpu,
)
from anllm.zerogpu import NO_PEER, gpu_duration  # NO_PEER: the picker's "no third column"

BASE_MODES = ("full", "anchor")
DEFAULT_PROMPT = "Explain in three short sentences why the sky is blue. Then say what changes at sunset."
MEMORY_SEED = 20  # the memory test's items, always the same (a seed whose five items have five different kinds)
MEMORY_ITEMS = 5
MEMORY_DISTANCE = 256  # filler tokens between the fact and the question (a distance the app's stated recall covers)
MEMORY_MAX_NEW_TOKENS = 24


def peer_policies() -> list[str]:
    """Registered cache policies other than ``full`` and ``anchor`` (peers for the optional third column)."""
    return [name for name in POLICIES if name not in BASE_MODES]


def memory_items(lm: LoadedModel) -> list[MemoryItem]:
    """The memory test's items: :data:`MEMORY_ITEMS` single-fact items from the held-out generator (the acceptance
    harness's :data:`~anllm.memory.FORM_TEMPLATES`, never trained on) with KJV Genesis filler, from
    :data:`MEMORY_SEED`. Distances are counted in ``lm``'s tokens."""
    from anllm.memory import FORM_TEMPLATES, make_items
    from anllm.resources import KJV_GENESIS, read_resource

    def count(s: str) -> int:
        return len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])

    return make_items(
        seed=MEMORY_SEED,
        distances=(MEMORY_DISTANCE,),
        n_per_distance=MEMORY_ITEMS,
        filler=read_resource(KJV_GENESIS),
        count_tokens=count,
        families=("single",),
        templates=FORM_TEMPLATES,
    )


def memory_prompt(item: MemoryItem) -> str:
    """The user turn of a memory item (asked with the chat template, as ``anllm eval recall`` asks it)."""
    return item.messages()[-1]["content"]


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
    return "✅ done · " + " · ".join(parts) + trained_note(lm)


def memory_tally(items: list[MemoryItem], columns: list[str], state: CompareState, lm: LoadedModel) -> tuple:
    """The memory test's ``(tally_markdown, table)`` for a :class:`CompareState` whose modes are ``column#item``."""
    runs = {r.mode: r for r in state.runs}
    first_line = {}
    for name, run in runs.items():
        lines = [ln for ln in run.text.strip().splitlines() if ln.strip()]
        first_line[name] = lines[0].strip() if lines else ""
    hits = dict.fromkeys(columns, 0)
    done = dict.fromkeys(columns, 0)
    data = []
    for k, it in enumerate(items):
        row = [k + 1, it.question, it.answer]
        for col in columns:
            run = runs[f"{col}#{k}"]
            if not run.done:
                row.append("…" if run.responses else "")
                continue
            ok = not run.error and exact_match(it.answer, run.text)
            hits[col] += ok
            done[col] += 1
            row.append(("✓ " if ok else "✗ ") + (first_line[run.mode] or "(no answer)"))
        data.append(row)
    tally = ", ".join(f"**{col} {hits[col]}/{len(items)}**" for col in columns)
    errors = [f"{r.mode}: {public_text(r.error)}" for r in state.runs if r.error]
    if errors:
        head = "⚠️ " + " · ".join(errors[:2]) + " · so far "
    elif state.finished:
        head = "✅ exact matches: "
    else:
        head = f"⏳ item {min(min(done.values()) + 1, len(items))}/{len(items)} · so far "
    note = (
        f" ({len(items)} held-out items, seed {MEMORY_SEED}, fact {MEMORY_DISTANCE} tokens before the question, "
        "greedy; a peer holds as many entries as the anchor cache)"
    )
    text = head + tally + note + trained_note(lm) + "\n\n" + measured_recall_markdown()
    return text, {"headers": ["#", "question", "expected", *columns], "data": data}


class GenerateTab:
    """The Generate tab: its handlers, bound to a :class:`ModelRegistry`, and :meth:`build`, its layout.

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

    # -- handlers ---------------------------------------------------------------------------------------------------
    def peer_column(self, peer: str | None) -> dict:
        """Show the third column (labelled with the policy) only when a peer policy is chosen."""
        on = bool(peer) and peer != NO_PEER
        return gr.update(visible=on, label=f"{peer} KV cache" if on else "Peer policy")

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
        self._bump(+1)
        try:
            try:
                check_text(prompt, "prompt", "the prompt is empty: type a question or some text to continue")
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
            yield from self._stream(lm, prompt, modes, gen)
            self._bump(0, +1)
        finally:
            self._bump(-1)

    def memory_test(self, model_name: str | None, peer: str | None) -> Iterator[tuple]:
        """Ask the :func:`memory_items` of the full and anchor caches (and the peer, sized per item to the anchor
        cache), greedy, in one worker under the request's time limit, and tally the exact matches per column.

        Yields:
            ``(tally_markdown, table)`` after every answer; ``table`` is ``{"headers", "data"}``: per item its
            number, question, expected answer and each column's first output line (what is scored).
        """
        try:
            if peer and peer != NO_PEER and peer not in peer_policies():
                raise AnLLMError(f"unknown peer policy {peer!r}; choose one of {peer_policies() or 'none'}")
            lm = self.registry.get(model_name)
            gen = make_generation_config(max_new_tokens=MEMORY_MAX_NEW_TOKENS, chat=True)
        except AnLLMError as e:
            yield error_markdown(str(e)), {"headers": ["#"], "data": []}
            return
        items = memory_items(lm)
        columns = list(BASE_MODES) + ([peer] if peer and peer != NO_PEER else [])
        modes = []
        for k, it in enumerate(items):
            prompt = memory_prompt(it)
            for col in columns:
                spec = budget_matched_peer(lm, prompt, col, True) if col not in BASE_MODES else col
                modes.append((f"{col}#{k}", lambda p=prompt, m=spec: stream_generate(lm, p, m, gen)))
        self._bump(+1)
        try:
            state = None
            for state in compare_stream(lm, "", modes, gen, interval_s=0.5, time_limit_s=self.max_request_s):
                yield memory_tally(items, columns, state, lm)
            if state is not None:
                self._bump(0, +1)
        finally:
            self._bump(-1)

    def _stream(self, lm: LoadedModel, prompt: str, modes: list[str], gen) -> Iterator[tuple]:
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
                by_mode = state.by_mode()
                charts = [plot_value(kv_cache_spec(by_mode)), plot_value(speed_spec(by_mode))]
                tail = [[stats_row(r) for r in state.runs], _status(state, lm)]
            else:
                charts = [gr.skip(), gr.skip()]
                tail = [gr.skip(), gr.skip()]
            first = False
            yield (*out, *charts, *tail)

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self, demo: gr.Blocks, model: gr.Dropdown) -> None:
        """Place the tab's components (inside ``gr.Tab``) and wire them to :meth:`generate` (``/generate``)."""
        peers = peer_policies()
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, elem_id="prompt", scale=5)
            with gr.Column(scale=1, min_width=140):
                go = gr.Button("Generate", variant="primary", elem_id="go")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                memory = gr.Button("Memory test", elem_id="memory-test")
        gr.Markdown(
            f"*Memory test*: {MEMORY_ITEMS} held-out recall items (a fact, ~{MEMORY_DISTANCE} tokens of other text, "
            "then a question; the same items every time), each asked of the full cache, the anchor cache and the "
            "peer column if one is picked (StreamingLLM when none is), at the anchor cache's size. The tally counts "
            "exact matches per column.",
            elem_id="memory-help",
        )
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                chat = gr.Checkbox(True, label="Chat template (off = continue raw text)")
                max_new = gr.Slider(1, self.max_new_tokens_cap, 96, step=1, label="Max new tokens", elem_id="max-new")
                temperature = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
            with gr.Row():
                top_k = gr.Slider(0, 200, 0, step=1, label="Top-k (0 = off)")
                rep = gr.Slider(0.5, 2.0, 1.0, step=0.05, label="Repetition penalty")
                seed = gr.Number(0, precision=0, label="Seed (-1 = random; the same for every column)")
                peer = gr.Dropdown(
                    [NO_PEER, *peers],
                    value=NO_PEER,
                    label="Third column: peer policy",
                    info=None if peers else "no peer policies are registered yet",
                    interactive=bool(peers),
                )
        memory_tally_md = gr.Markdown("", elem_id="memory-tally")
        memory_table = gr.Dataframe(
            headers=["#", "question", "expected", *BASE_MODES],
            interactive=False,
            label="Memory test: each column's first line of answer (✓ = exact match)",
            elem_id="memory-table",
            wrap=True,
        )
        status = gr.Markdown("", elem_id="status")
        with gr.Row(equal_height=False):
            full_out = token_panel("Full KV cache", "out-full")
            anchor_out = token_panel("Anchor KV cache", "out-anchor")
            peer_out = token_panel("Peer policy", "out-peer", visible=False)
        with gr.Row():
            kv_plot = gr.Plot(label="KV cache size", elem_id="kv-plot")
            speed_plot = gr.Plot(label="Decode speed", elem_id="speed-plot")
        stats = gr.Dataframe(
            headers=STATS_HEADERS, interactive=False, label="Stats (final values per mode)", elem_id="stats"
        )

        inputs = [prompt, model, peer, chat, max_new, temperature, top_p, top_k, rep, seed]
        outputs = [full_out, anchor_out, peer_out, kv_plot, speed_plot, stats, status]
        generate = maybe_gpu(self.generate, duration=gpu_duration(self))  # a GPU slot sized to the request (ZeroGPU)
        run = dict(fn=generate, inputs=inputs, outputs=outputs, **MODEL_SLOT)
        ev_click = go.click(api_name="generate", **run)
        ev_submit = prompt.submit(api_name=False, **run)
        stop.click(None, cancels=[ev_click, ev_submit])
        memory_peer = "streaming" if "streaming" in peers else NO_PEER
        ev_memory = memory.click(
            lambda p: memory_peer if p in (None, NO_PEER) else p, peer, peer, queue=False, api_name=False
        ).then(
            maybe_gpu(self.memory_test),
            [model, peer],
            [memory_tally_md, memory_table],
            api_name=False,
            **MODEL_SLOT,
        )
        stop.click(None, cancels=[ev_memory])
        peer.change(self.peer_column, peer, peer_out, queue=False, api_name=False)
