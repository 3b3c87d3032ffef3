"""The app's Document tab: read a text once into a saved anchor cache, then ask it questions, full vs anchor.

**Compress** reads the document with the anchor cache (:func:`anllm.chat.compress`, as ``anllm compress`` does) in
a worker thread that reports every chunk, so the tab shows a progress line (and gradio's progress bar), and saves
it with :meth:`anllm.chat.ChatSession.save` into a per-session folder; that file is offered for download. For the
comparison the document is prefilled once more with a full cache, in one pass as a question's full re-prefill is;
that cache is saved only to measure its file size, then deleted. **Ask** answers a question twice, one run after
the other in the app's one model slot: from a fresh load of the saved anchor file (its time to first token includes
loading the file; the answer is exactly what ``anllm generate --cache FILE --prompt QUESTION`` prints) and by
re-prefilling document + question (the same tokens) with a full cache.

Per browser session the tab keeps only a :class:`DocumentEntry` (the file's folder and the measured numbers, a few
hundred bytes): the anchor cache itself stays on disk, in a :class:`~anllm.ui.sessions.SessionStore` of at most
``max_documents`` sessions whose folders are deleted when a session is evicted, its tab closes or the server exits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from anllm.chat import ChatSession, compress
from anllm.config import AnLLMError
from anllm.generation import stream_generate
from anllm.plots import MB, first_token_figure
from anllm.ui.registry import ModelRegistry
from anllm.ui.render import (
    error_markdown,
    measured_recall_markdown,
    public_text,
    token_panel,
    tokens_html,
    trained_note,
)
from anllm.ui.runtime import (
    MODEL_SLOT,
    CompareState,
    Job,
    TimeUp,
    Worker,
    check_text,
    compare_stream,
    make_generation_config,
    maybe_gpu,
)
from anllm.ui.sessions import SessionStore, session_key

logger = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 20_000  # about 5k tokens of English for SmolLM2; `anllm compress` has no limit
DEFAULT_MAX_DOCUMENTS = 16  # browser sessions whose compressed document is kept (their files on disk)
MAX_ANSWER_TOKENS = 256
ANCHOR_FILE = "document-anchor.kv"
SIZE_HEADERS = ["cache", "tokens read", "KV entries kept", "KV (MB)", "saved file (MB)", "read in (s)"]
ASK_HEADERS = [
    "cache",
    "first token (s)",
    "of which loading the file (s)",
    "tokens prefilled",
    "KV entries",
    "KV (MB)",
    "saved file (MB)",
    "generated tokens",
    "decode tokens/s",
    "finish",
]
HISTORY_HEADERS = ["#", "question", "first token, anchor file (s)", "first token, full re-prefill (s)", "speed-up"]
HISTORY_HEADERS += ["same answer"]
EXAMPLE_SEED = 16  # the example document and its questions: always the same
EXAMPLE_FACTS = 3
EXAMPLE_GAP = 200  # roughly the tokens of filler after each fact (counted as 4/3 tokens a word: no model needed)


def document_example() -> tuple[str, list[tuple[str, str]]]:
    """The tab's example: :data:`EXAMPLE_FACTS` held-out recall items (:data:`~anllm.memory.FORM_TEMPLATES`, never
    trained on; the Nettle manual's prose as filler, held out from every training corpus), their contexts joined
    into one document, and ``(question, answer)`` for each fact, from :data:`EXAMPLE_SEED`."""
    from anllm.memory import FORM_TEMPLATES, make_items
    from anllm.resources import NETTLE_PROSE, read_resource

    items = make_items(
        seed=EXAMPLE_SEED,
        distances=(EXAMPLE_GAP,),
        n_per_distance=EXAMPLE_FACTS,
        filler=read_resource(NETTLE_PROSE),
        count_tokens=lambda s: len(s.split()) * 4 // 3,
        families=("single",),
        templates=FORM_TEMPLATES,
    )
    return "\n\n".join(it.context for it in items), [(it.question, it.answer) for it in items]


@dataclass
class CacheNumbers:
    """One cache mode's reading of the document."""

    tokens: int  # tokens read
    entries: int  # KV entries kept per layer
    kv_bytes: int  # K/V bytes held, all layers
    file_bytes: int  # size of the saved cache file
    seconds: float  # reading the document (the file's writing not included)

    def row(self, mode: str) -> list:
        return [
            mode,
            self.tokens,
            self.entries,
            round(self.kv_bytes / MB, 3),
            round(self.file_bytes / MB, 3),
            round(self.seconds, 2),
        ]


@dataclass
class DocumentEntry:
    """What a browser session keeps of its document: the saved anchor file's folder and the measured numbers."""

    model: str
    folder: Path
    anchor: CacheNumbers
    full: CacheNumbers | None = None
    full_note: str = ""  # why ``full`` is missing
    history: list[list] = field(default_factory=list)  # one HISTORY_HEADERS row per question asked
    first_token_s: list[tuple[float | None, float | None]] = field(default_factory=list)  # (anchor, full)

    @property
    def path(self) -> Path:
        return self.folder / ANCHOR_FILE

    def size_rows(self) -> list[list]:
        full = self.full.row("full") if self.full else ["full", self.anchor.tokens, None, None, None, None]
        return [full, self.anchor.row("anchor")]


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / max(total, 1))
    return "▰" * filled + "▱" * (width - filled) + f" {done / max(total, 1):.0%}"


class DocumentTab:
    """The Document tab: its handlers, bound to a :class:`ModelRegistry`, and :meth:`build`, its layout.

    Args:
        registry: where models come from.
        max_documents: browser sessions whose document is kept; the least recently used is dropped first.
        max_chars: the longest document accepted (characters).
        files_dir: where the per-session folders go (default: gradio's upload folder, from which gradio serves
            the download without copying it).
        interval_s, plot_interval_s: the most often streamed text and the stats are re-sent.
        max_request_s: compute seconds of one request (compress or ask, all its cache modes); None = no limit.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_documents: int = DEFAULT_MAX_DOCUMENTS,
        max_chars: int = MAX_DOCUMENT_CHARS,
        files_dir: str | os.PathLike | None = None,
        interval_s: float = 0.1,
        plot_interval_s: float = 0.5,
        max_request_s: float | None = None,
    ) -> None:
        self.registry, self.max_chars, self.files_dir = registry, max_chars, files_dir
        self.interval_s, self.plot_interval_s, self.max_request_s = interval_s, plot_interval_s, max_request_s
        self.store: SessionStore[DocumentEntry] = SessionStore(max_documents, on_drop=_remove_folder)
        self._root: Path | None = None
        self._root_lock = threading.Lock()

    # -- files --------------------------------------------------------------------------------------------------
    def root(self) -> Path:
        """This server's folder of per-session folders (made on first use, removed when the server exits)."""
        with self._root_lock:
            if self._root is None:
                base = Path(self.files_dir) if self.files_dir is not None else Path(gr.utils.get_upload_folder())
                base.mkdir(parents=True, exist_ok=True)
                self._root = Path(tempfile.mkdtemp(prefix="anllm-documents-", dir=base))
                weakref.finalize(self, shutil.rmtree, self._root, True)
            return self._root

    def _new_folder(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root()))  # a random name: the download URL cannot be guessed

    def forget(self, request: gr.Request | None = None) -> None:
        """Drop the session's document and delete its files (the tab closed)."""
        self.store.pop(session_key(request))

    # -- upload -------------------------------------------------------------------------------------------------
    def read_upload(self, path: str | None) -> tuple:
        """Put an uploaded UTF-8 text file into the document box (refused with a message over the size limit).

        Returns:
            ``(document_text, status_markdown)``; the text is ``gr.skip()`` when the file is refused.
        """
        if not path:
            return gr.skip(), ""
        name = Path(path).name
        try:
            if os.path.getsize(path) > 4 * self.max_chars:  # no UTF-8 text of max_chars characters is larger
                raise AnLLMError(
                    f"{name} has {os.path.getsize(path):,} bytes; this app reads documents of up to "
                    f"{self.max_chars:,} characters"
                )
            try:
                text = Path(path).read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                raise AnLLMError(f"{name} is not UTF-8 text; upload a .txt or .md file") from None
            self._check_text(text)
        except AnLLMError as e:
            return gr.skip(), error_markdown(str(e))
        return text, f"📄 {public_text(name)}: {len(text):,} characters; press **Compress**"

    def _check_text(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise AnLLMError("the document is empty: paste a text or upload a .txt file first")
        if len(text) > self.max_chars:
            raise AnLLMError(
                f"the document has {len(text):,} characters; this app reads up to {self.max_chars:,} "
                "(shorten it, or run `anllm compress` on your own machine, which has no limit)"
            )
        return text

    # -- compress -----------------------------------------------------------------------------------------------
    def compress(
        self,
        model_name: str | None,
        text: str,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio finds its tracker by this default
    ) -> Iterator[tuple]:
        """Read ``text`` with the anchor cache, save it for the session, and read it with a full cache to compare.

        Yields:
            ``(status, size_rows, file, history_rows, full_html, anchor_html, ask_rows, first_token_plot)``:
            progress lines first (the rest ``gr.skip()``), then every value, the earlier answers cleared. After
            an error the session keeps its previous document.
        """
        keep = (gr.skip(),) * 7
        try:
            text = self._check_text(text)
            name = (model_name or "").strip() or self.registry.default
            lm = self.registry.get(name)
        except AnLLMError as e:
            yield (error_markdown(str(e)), *keep)
            return
        folder = self._new_folder()
        work = self._compress_work(lm, name, text, folder)
        labels = {"anchor": "reading it with the anchor cache", "full": "prefilling it again with a full cache"}
        yield ("⏳ tokenizing the document…", *keep)
        what = "compressing the document"
        worker = Worker(lm.model, work, time_limit_s=self.max_request_s, interrupt=True, what=what)
        outcome = None  # only once read here: a request closed meanwhile keeps nothing
        try:
            for events in worker.batches():
                if worker.outcome is not None:
                    outcome = worker.outcome
                    break
                mode, done, total = events[-1]  # only the latest progress is worth showing
                if mode == "anchor":
                    progress((done, total), desc=labels[mode], unit="tokens")
                    yield (f"⏳ {labels[mode]}: {done:,} / {total:,} tokens {_bar(done, total)}", *keep)
                elif done < total:  # one forward pass: nothing to count until it ends
                    progress(None)
                    yield (f"⏳ {labels[mode]}, in one pass ({total:,} tokens), to compare…", *keep)
        finally:
            worker.close()  # waits for the worker, so nothing writes into the folder after this
            if outcome is None or outcome.kind != "done":
                shutil.rmtree(folder, ignore_errors=True)
        kind, value = outcome.kind, outcome.value
        if kind == "time_up":
            msg = f"reading the document ran past this server's time limit ({self.max_request_s:g} s a request)"
            kind, value = "error", msg + "; use a shorter text, or `anllm compress` on your own machine"
        if kind == "error":
            yield (error_markdown(str(value)), *keep)
            return
        if kind != "done":
            return
        entry: DocumentEntry = value
        self.store.put(session_key(request), entry)
        empty = tokens_html([])
        yield (self._summary(entry, lm), entry.size_rows(), str(entry.path), [], empty, empty, [], None)

    def _compress_work(self, lm, name: str, text: str, folder: Path) -> Callable[[Job], DocumentEntry]:
        def work(job: Job) -> DocumentEntry:
            numbers = {}
            for mode in ("anchor", "full"):
                if mode == "full":
                    job.report(("full", 0, numbers["anchor"].tokens))  # the same tokens, in one pass
                t0 = time.perf_counter()
                try:
                    session = compress(
                        lm,
                        text,
                        mode,
                        on_chunk=lambda d, n, m=mode: job.report((m, d, n)),
                        chunk_size=0 if mode == "full" else None,  # a full cache is prefilled in one pass
                    )
                except TimeUp:
                    if mode == "anchor" or job.stopping:
                        raise
                    return DocumentEntry(name, folder, numbers["anchor"], None, "ran past the time limit")
                seconds = time.perf_counter() - t0
                path = session.save(folder / (ANCHOR_FILE if mode == "anchor" else "full.kv"))
                s = session.stats()
                numbers[mode] = CacheNumbers(
                    s["tokens_seen"], s["kv_entries"], s["kv_bytes"], path.stat().st_size, seconds
                )
                if mode == "full":
                    path.unlink()  # saved only to measure what a full cache file weighs
                del session
            return DocumentEntry(name, folder, numbers["anchor"], numbers["full"])

        return work

    def _summary(self, entry: DocumentEntry, lm) -> str:
        a, f = entry.anchor, entry.full
        parts = [
            f"✅ read **{a.tokens:,} tokens** once · the anchor cache keeps **{a.entries:,} entries** "
            f"({a.entries / max(a.tokens, 1):.1%}) · its file is **{a.file_bytes / MB:.2f} MB**"
        ]
        if f is not None:
            parts.append(
                f"{a.file_bytes / max(f.file_bytes, 1):.1%} of a saved full cache ({f.file_bytes / MB:.1f} MB)"
            )
        else:
            parts.append(f"full cache not measured ({entry.full_note})")
        return " · ".join(parts) + " · now ask questions below" + trained_note(lm)

    # -- ask ----------------------------------------------------------------------------------------------------
    def ask(
        self, model_name: str | None, question: str, max_new_tokens: Any, request: gr.Request | None = None
    ) -> Iterator[tuple]:
        """Answer ``question`` from the saved anchor file and by re-prefilling document + question with a full
        cache, one after the other (greedy).

        Yields:
            ``(full_html, anchor_html, ask_rows, history_rows, first_token_plot, status)``; unchanged values are
            ``gr.skip()``, the last yield carries every value.
        """
        skip = gr.skip()
        try:
            check_text(question, "question", "the question is empty: type a question about the document")
            entry = self.store.get(session_key(request))
            if entry is None or not entry.path.is_file():
                raise AnLLMError(
                    "there is no compressed document in this session (none yet, or it was dropped to make room for "
                    "other visitors): paste or upload a text and press Compress"
                )
            name = (model_name or "").strip() or self.registry.default
            if name != entry.model:
                raise AnLLMError(f"the document was compressed with {entry.model}; press Compress again to ask {name}")
            gen = make_generation_config(max_new_tokens=max_new_tokens, max_new_tokens_cap=MAX_ANSWER_TOKENS)
            lm = self.registry.get(name)
        except AnLLMError as e:
            yield skip, skip, skip, skip, skip, error_markdown(str(e))
            return
        shared: dict[str, Any] = {}

        def from_file():
            t0 = time.perf_counter()
            session = ChatSession.load(lm, entry.path, gen=gen)  # what `anllm generate --cache` does
            shared["prompt"] = session.ids + session.prompt_ids(question)  # document + question, for the full run
            shared["load_s"] = load_s = time.perf_counter() - t0
            for r in session.ask(question):
                yield dataclasses.replace(r, elapsed_s=r.elapsed_s + load_s, prefill_s=r.prefill_s + load_s)

        def full_prefill():
            if "prompt" not in shared:
                raise AnLLMError("the saved document could not be read, so there is nothing to re-prefill")
            yield from stream_generate(lm, shared["prompt"], "full", gen)

        placeholders = {"full": "waiting for the full-cache run…", "anchor": "loading the saved anchor cache…"}
        sent: dict[str, str] = {}
        first = True
        for state in compare_stream(
            lm,
            question,
            [("anchor", from_file), ("full", full_prefill)],
            gen,
            interval_s=self.interval_s,
            plot_interval_s=self.plot_interval_s,
            time_limit_s=self.max_request_s,
        ):
            texts = {run.mode: tokens_html(run.responses, placeholders[run.mode]) for run in state.runs}
            out = [texts[m] if state.finished or texts[m] != sent.get(m) else skip for m in ("full", "anchor")]
            sent = texts
            if state.finished:
                rows = self._ask_rows(state, entry, shared)
                self._remember(entry, state, question)
                figure = first_token_figure(*zip(*entry.first_token_s))
                yield (*out, rows, entry.history, figure, self._ask_status(state, entry, lm))
                return
            if state.plots_due or first:
                yield (*out, self._ask_rows(state, entry, shared), skip, skip, _running(state))
            else:
                yield (*out, skip, skip, skip, skip)
            first = False

    @staticmethod
    def _ask_rows(state: CompareState, entry: DocumentEntry, shared: dict) -> list[list]:
        rows = []
        for mode, numbers in (("full", entry.full), ("anchor", entry.anchor)):
            run = state.run(mode)
            r = run.last
            file_mb = round(numbers.file_bytes / MB, 3) if numbers is not None else None
            load = round(shared["load_s"], 3) if mode == "anchor" and "load_s" in shared else None
            if r is None:
                rows.append([mode, None, load, None, None, None, file_mb, 0, None, run.error and "error"])
                continue
            rows.append(
                [
                    mode,
                    round(run.responses[0].elapsed_s, 3),
                    load,
                    r.prompt_tokens,
                    r.kv_entries,
                    round(r.kv_bytes / MB, 3),
                    file_mb,
                    r.step,
                    round(r.tokens_per_s, 1) if r.step > 1 else None,
                    r.finish_reason or ("stopped" if run.error else "running"),
                ]
            )
        return rows

    @staticmethod
    def _remember(entry: DocumentEntry, state: CompareState, question: str) -> None:
        firsts = {}
        for mode in ("anchor", "full"):
            run = state.run(mode)
            firsts[mode] = round(run.responses[0].elapsed_s, 3) if run.responses and not run.error else None
        a, f = firsts["anchor"], firsts["full"]
        same = None if a is None or f is None else state.run("anchor").text == state.run("full").text
        speedup = f"{f / a:.1f}×" if a and f else None
        entry.history.append([len(entry.history) + 1, question, a, f, speedup, same])
        entry.first_token_s.append((a, f))

    @staticmethod
    def _ask_status(state: CompareState, entry: DocumentEntry, lm) -> str:
        errors = [f"**{r.mode}**: {public_text(r.error)}" for r in state.runs if r.error]
        if errors:
            return "⚠️ " + " · ".join(errors)
        row = entry.history[-1]
        a, f, speedup, same = row[2], row[3], row[4], row[5]
        n_full = state.run("full").last.prompt_tokens
        agree = "the answers agree" if same else "the answers differ"
        note = trained_note(lm)
        return (
            f"✅ question {row[0]} ({public_text(row[1])}): first token after **{a:.2f} s** from the saved anchor file "
            f"vs **{f:.2f} s** re-prefilling {n_full:,} tokens with a full cache ({speedup}) · {agree}{note}"
        )

    # -- layout -------------------------------------------------------------------------------------------------
    def build(self, demo: gr.Blocks, model: gr.Dropdown) -> None:
        """Place the tab's components (inside ``gr.Tab``) and wire them (``/compress``, ``/ask``); a closed
        browser tab drops its session's document."""
        gr.Markdown(
            f"Paste or upload a text (up to **{self.max_chars:,} characters**) and press **Compress**: the "
            "model reads it once with the anchor cache, which is saved to a file you can download (`anllm "
            "generate --cache FILE --prompt QUESTION` continues it). Then ask questions: each answer continues "
            "a fresh load of that file, next to a full cache that re-reads document + question. Greedy "
            "decoding; the first-token times include loading the file and re-prefilling.",
            elem_id="doc-help",
        )
        example_text, example_qa = document_example()
        gr.Markdown(
            "**Example** (press *Load the example*): a text made by the held-out recall generator (fixed seed; facts "
            "in question forms never trained on, the Nettle manual's prose around them). Its questions, with the "
            "expected answers: "
            + " · ".join(f"{public_text(q)} → **{public_text(a)}**" for q, a in example_qa)
            + "\n\n"
            + measured_recall_markdown(),
            elem_id="doc-example-note",
        )
        with gr.Row(equal_height=False):
            text = gr.Textbox(
                label=f"Document (up to {self.max_chars:,} characters)",
                lines=8,
                max_lines=16,
                placeholder="Paste a text here, or upload a .txt / .md file",
                elem_id="doc-text",
                scale=4,
            )
            with gr.Column(scale=1, min_width=200):
                upload = gr.File(
                    label="Upload (UTF-8 .txt / .md)",
                    file_types=[".txt", ".md"],
                    type="filepath",
                    height=120,
                    elem_id="doc-upload",
                )
                example = gr.Button("Load the example", elem_id="doc-example")
                go = gr.Button("Compress", variant="primary", elem_id="doc-compress")
                stop = gr.Button("Stop", variant="stop", elem_id="doc-stop")
        status = gr.Markdown("", elem_id="doc-status")
        with gr.Row(equal_height=False):
            sizes = gr.Dataframe(
                headers=SIZE_HEADERS,
                interactive=False,
                label="The document read once: full vs anchor cache",
                elem_id="doc-sizes",
                scale=3,
            )
            file = gr.File(label="Saved anchor cache (safetensors)", interactive=False, elem_id="doc-file", scale=1)
        with gr.Row():
            question = gr.Textbox(label="Question about the document", lines=1, elem_id="doc-question", scale=4)
            with gr.Column(scale=1, min_width=200):
                ask = gr.Button("Ask", variant="primary", elem_id="doc-ask")
                max_new = gr.Slider(1, MAX_ANSWER_TOKENS, 48, step=1, label="Max new tokens", elem_id="doc-max-new")
        ask_status = gr.Markdown("", elem_id="doc-ask-status")
        with gr.Row(equal_height=False):
            full_out = token_panel("Full KV cache: re-reads document + question", "doc-out-full")
            anchor_out = token_panel("Anchor cache: continues the saved file", "doc-out-anchor")
        ask_stats = gr.Dataframe(
            headers=ASK_HEADERS, interactive=False, label="This question, per cache", elem_id="doc-stats"
        )
        with gr.Row(equal_height=False):
            history = gr.Dataframe(
                headers=HISTORY_HEADERS,
                interactive=False,
                label="Questions asked of this document",
                elem_id="doc-history",
                scale=3,
            )
            plot = gr.Plot(label="Time to first token", elem_id="doc-plot", scale=2)

        example.click(lambda: (example_text, example_qa[0][0]), None, [text, question], queue=False, api_name=False)
        upload.upload(self.read_upload, upload, [text, status], api_name=False, queue=False)
        outputs = [status, sizes, file, history, full_out, anchor_out, ask_stats, plot]
        ev_compress = go.click(maybe_gpu(self.compress), [model, text], outputs, api_name="compress", **MODEL_SLOT)
        run = dict(fn=maybe_gpu(self.ask), inputs=[model, question, max_new], **MODEL_SLOT)
        run["outputs"] = [full_out, anchor_out, ask_stats, history, plot, ask_status]
        ev_ask = ask.click(api_name="ask", **run)
        ev_ask_submit = question.submit(api_name=False, **run)
        stop.click(None, cancels=[ev_compress, ev_ask, ev_ask_submit])
        demo.unload(self.forget)  # a closed tab's document files go at once


def _running(state: CompareState) -> str:
    run = state.runs[state.active]
    what = "answering from the saved anchor file" if run.mode == "anchor" else "re-prefilling with a full cache"
    return f"⏳ {what}… {len(run.responses)} tokens"


def _remove_folder(entry: DocumentEntry) -> None:
    shutil.rmtree(entry.folder, ignore_errors=True)
