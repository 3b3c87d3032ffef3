"""The app's Chat tab: one anchor cache per browser session, kept across turns and never re-encoded.

Each browser session has an :class:`anllm.chat.ChatSession` in anchor mode (the model's served anchor setting) in a
:class:`~anllm.ui.sessions.SessionStore` of at most ``max_chats`` sessions, the least recently used dropped first
and a session dropped when its tab closes. A turn appends only the new user message (chat template) to the cache and
streams the answer; the chart shows the cache's entries after every turn next to the tokens seen (what a full cache
would hold), so its line stays flat while the conversation grows. A turn cut short by an error or the time limit is
rolled back (:meth:`~anllm.chat.ChatSession.checkpoint`); Stop keeps the answer so far, as ``anllm chat`` does.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from anllm.chat import ChatSession
from anllm.config import AnLLMError
from anllm.plots import MB, chat_memory_figure
from anllm.ui.registry import ModelRegistry
from anllm.ui.render import error_markdown, public_text, trained_note
from anllm.ui.runtime import MODEL_SLOT, check_text, compare_stream, make_generation_config, maybe_gpu
from anllm.ui.sessions import SessionStore, session_key

DEFAULT_MAX_CHATS = 16  # browser sessions whose conversation (and its cache) is kept in memory
MAX_CHAT_TOKENS = 512


@dataclass
class ChatEntry:
    """A browser session's conversation: the model it runs on, the session, and the messages as typed."""

    model: str
    session: ChatSession
    shown: list[dict] = field(default_factory=list)  # {"role", "content"} as the visitor typed / the model wrote
    lock: threading.Lock = field(default_factory=threading.Lock)  # a turn and a reset never overlap


def chat_messages(shown: list[dict]) -> list[dict]:
    """The Chatbot value: every message escaped (no HTML, links or images from what anyone typed)."""
    return [{"role": m["role"], "content": public_text(m["content"])} for m in shown]


def memory_markdown(session: ChatSession) -> str:
    """The cache after the last turn: entries and bytes kept vs what a full cache would hold."""
    s = session.stats()
    if not session.turns:
        return "*The anchor cache is empty: send a message.*"
    per_entry = s["kv_bytes"] / max(s["kv_entries"], 1)  # every entry costs the same bytes
    t = session.turns[-1]
    return (
        f"**turn {t.turn}** · anchor cache: **{s['kv_entries']:,} KV entries** ({s['kv_bytes'] / MB:.2f} MB) for "
        f"{s['tokens_seen']:,} tokens seen ({s['kv_entries'] / max(s['tokens_seen'], 1):.1%}); a full cache would "
        f"hold {s['tokens_seen']:,} ({s['tokens_seen'] * per_entry / MB:.2f} MB) · this turn: {t.prompt_tokens} new "
        f"prompt tokens, first token after {t.first_token_s:.2f} s, "
        f"{t.answer_tokens} answer tokens in {t.seconds:.2f} s"
    )


class ChatTab:
    """The Chat tab: its handlers, bound to a :class:`ModelRegistry`, and :meth:`build`, its layout.

    Args:
        registry: where models come from.
        max_chats: browser sessions whose conversation is kept; the least recently used is dropped first.
        interval_s: the most often the streamed answer is re-sent.
        max_request_s: compute seconds of one turn; None = no limit.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_chats: int = DEFAULT_MAX_CHATS,
        interval_s: float = 0.1,
        max_request_s: float | None = None,
    ) -> None:
        self.registry, self.interval_s, self.max_request_s = registry, interval_s, max_request_s
        self.store: SessionStore[ChatEntry] = SessionStore(max_chats)

    def forget(self, request: gr.Request | None = None) -> None:
        """Drop the session's conversation (the tab closed)."""
        self.store.pop(session_key(request))

    def entry(self, request: gr.Request | None = None) -> ChatEntry | None:
        """The session's conversation, if any (for tests and notebooks)."""
        return self.store.get(session_key(request))

    def send(
        self,
        model_name: str | None,
        message: str,
        max_new_tokens: Any,
        temperature: Any = 0.0,
        request: gr.Request | None = None,
    ) -> Iterator[tuple]:
        """Append ``message`` to the session's conversation and stream the answer.

        Yields:
            ``(chat_messages, message_box, memory_plot, memory_markdown, status)``; the message box is emptied once
            the turn is kept (and keeps the text when it is not), the chart and numbers come with the last yield.
        """
        skip = gr.skip()
        key = session_key(request)
        note = ""
        try:
            check_text(message, "message", "the message is empty")
            gen = make_generation_config(
                max_new_tokens=max_new_tokens, temperature=temperature, seed=-1, max_new_tokens_cap=MAX_CHAT_TOKENS
            )
            name = (model_name or "").strip() or self.registry.default
            lm = self.registry.get(name)
            entry = self.store.get(key)
            if entry is not None and entry.model != name:
                note = (
                    f" · a new conversation with {public_text(name)} (the last one was with {public_text(entry.model)})"
                )
                entry = None
            if entry is None:
                entry = ChatEntry(name, ChatSession(lm, "anchor", gen=gen))
                self.store.put(key, entry)
        except AnLLMError as e:
            yield skip, skip, skip, skip, error_markdown(str(e))
            return
        with entry.lock:
            yield from self._turn(entry, lm, message, gen, note)

    def _turn(self, entry: ChatEntry, lm, message: str, gen, note: str) -> Iterator[tuple]:
        session, skip = entry.session, gr.skip()
        session.gen = dataclasses.replace(gen, stop_strings=())
        before, n_turns = session.checkpoint(), len(session.turns)
        history = [*entry.shown, {"role": "user", "content": message}]
        stream = compare_stream(
            lm,
            message,
            [("anchor", lambda: session.ask(message))],
            gen,
            interval_s=self.interval_s,
            plot_interval_s=self.interval_s,
            time_limit_s=self.max_request_s,
        )
        error = None
        try:
            for state in stream:
                run = state.runs[0]
                error = run.error
                if not state.finished:
                    shown = [*history, {"role": "assistant", "content": run.text}]
                    yield chat_messages(shown), skip, skip, skip, f"⏳ writing… {len(run.responses)} tokens"
        finally:
            stream.close()  # waits for the decode thread: a stopped turn is committed with the answer so far
            kept = len(session.turns) > n_turns and error is None and not session.cache.in_forward
            if kept:
                entry.shown = [*history, {"role": "assistant", "content": session.messages[-1]["content"]}]
            else:
                session.restore(before)  # a failed turn leaves the conversation as it was
        if not kept:
            reason = (error or "no answer was produced").replace("(/reset)", "(press Reset)")
            yield chat_messages(entry.shown), message, skip, skip, error_markdown(f"{reason} (the turn was not kept)")
            return
        t = session.turns[-1]
        status = f"✅ turn {t.turn}: {t.answer_tokens} answer tokens" + note + trained_note(lm)
        yield chat_messages(entry.shown), "", chat_memory_figure(session.turns), memory_markdown(session), status

    def reset(self, request: gr.Request | None = None) -> tuple:
        """Start the session's conversation again: an empty cache.

        Returns:
            ``(chat_messages, memory_plot, memory_markdown, status)``.
        """
        entry = self.store.get(session_key(request))
        if entry is not None:
            if not entry.lock.acquire(timeout=30):  # a turn is still stopping
                return gr.skip(), gr.skip(), gr.skip(), error_markdown("a reply is still being written; try again")
            try:
                entry.session.reset()
                entry.shown = []
            finally:
                entry.lock.release()
        return [], None, memory_markdown(entry.session) if entry else "", "🔄 a new conversation: the cache is empty"

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self, demo: gr.Blocks, model: gr.Dropdown) -> None:
        """Place the tab's components (inside ``gr.Tab``) and wire them (``/chat``, ``/chat_reset``); a closed
        browser tab drops its session's conversation."""
        gr.Markdown(
            "A conversation over **one anchor cache**: each turn appends only the new message (chat template) "
            "and earlier turns are never read again, so the cache keeps anchors + the open sentence while the "
            "tokens seen grow. The chart shows both after every turn. **Reset** starts with an empty cache.",
            elem_id="chat-help",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat (anchor cache)",
                    height=420,
                    latex_delimiters=[],
                    allow_tags=False,
                    feedback_options=None,
                    buttons=["copy", "copy_all"],
                    elem_id="chatbot",
                )
                with gr.Row():
                    message = gr.Textbox(
                        placeholder="Type a message and press Enter",
                        show_label=False,
                        lines=1,
                        elem_id="chat-message",
                        scale=5,
                    )
                    send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1, min_width=90)
                with gr.Row():
                    max_new = gr.Slider(1, MAX_CHAT_TOKENS, 96, step=1, label="Max new tokens", elem_id="chat-max-new")
                    temperature = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0 = greedy)")
                    stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", min_width=80)
                    reset = gr.Button("Reset", elem_id="chat-reset", min_width=80)
            with gr.Column(scale=2):
                plot = gr.Plot(label="KV cache per turn", elem_id="chat-plot")
                stats = gr.Markdown("*The anchor cache is empty: send a message.*", elem_id="chat-stats")
        status = gr.Markdown("", elem_id="chat-status")

        run = dict(fn=maybe_gpu(self.send), inputs=[model, message, max_new, temperature], **MODEL_SLOT)
        run["outputs"] = [chatbot, message, plot, stats, status]
        ev_send = send.click(api_name="chat", **run)
        ev_send_submit = message.submit(api_name=False, **run)
        stop.click(None, cancels=[ev_send, ev_send_submit])
        again = dict(fn=self.reset, inputs=None, outputs=[chatbot, plot, stats, status], queue=False)
        reset.click(api_name="chat_reset", cancels=[ev_send, ev_send_submit], **again)
        chatbot.clear(api_name=False, cancels=[ev_send, ev_send_submit], **again)  # its own bin icon resets too
        demo.unload(self.forget)  # a closed tab's conversation goes at once
