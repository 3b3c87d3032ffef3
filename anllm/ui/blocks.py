"""The Gradio layout of the anllm demo and its launcher, shared by ``app/app.py`` and ``anllm app``.

:func:`build_demo` only places components and wires them to :class:`anllm.ui.handlers.AppHandlers`; it loads
nothing and starts no server. :func:`serve` is the one place that picks host, port, device and preloads the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import gradio as gr

from anllm.config import AnLLMError
from anllm.devices import check_device
from anllm.explorer import EXPLORER_MAX_TOKENS
from anllm.ui.chat_tab import DEFAULT_MAX_CHATS, MAX_CHAT_TOKENS, ChatHandlers
from anllm.ui.document import (
    ASK_HEADERS,
    DEFAULT_MAX_DOCUMENTS,
    HISTORY_HEADERS,
    MAX_ANSWER_TOKENS,
    MAX_DOCUMENT_CHARS,
    SIZE_HEADERS,
    DocumentHandlers,
)
from anllm.ui.handlers import (
    MAX_NEW_TOKENS,
    MAX_REQUEST_S,
    NO_PEER,
    STATS_HEADERS,
    TOKENS_CSS,
    AppHandlers,
    maybe_gpu,
    memory_test_prompt,
    peer_policies,
)
from anllm.ui.launch import DEFAULT_QUEUE_SIZE, default_model_name
from anllm.ui.registry import ModelRegistry, allowed_models_from_env, model_choices
from anllm.zerogpu import gpu_duration

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Explain in three short sentences why the sky is blue. Then say what changes at sunset."
DEFAULT_EXPLORER_TEXT = "The cat sat on the mat. It was warm! Was it happy? Yes, very."
INTRO = """# anllm · Anchor-based LLM demo
The same model answers twice: with a **full KV cache** and with an **anchor cache** that drops every token of a
sentence except its anchor (the sentence-end token) once the anchor is processed
([AnLLM, arXiv 2402.07616](https://arxiv.org/abs/2402.07616)). Anchors are <mark>highlighted</mark>; watch the
anchor cache stay flat while the full one grows. Both runs share one slot and run one after the other, so the
timings are honest."""


def build_demo(
    registry: ModelRegistry | None = None,
    *,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    interval_s: float = 0.1,
    plot_interval_s: float = 0.5,
    max_new_tokens_cap: int = MAX_NEW_TOKENS,
    max_request_s: float | None = MAX_REQUEST_S,
    analytics_enabled: bool | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_chats: int = DEFAULT_MAX_CHATS,
    max_document_chars: int = MAX_DOCUMENT_CHARS,
    documents_dir: str | None = None,
) -> gr.Blocks:
    """Build the app (no model is loaded and no server started here).

    Args:
        registry: where models come from (default: a CPU :class:`ModelRegistry` for ``$ANLLM_MODEL``).
        queue_size: the most requests that may wait; more get a "busy" message.
        interval_s: the most often streamed text is re-sent; plot_interval_s: the same for the charts.
        max_new_tokens_cap: the largest generation length the app accepts.
        max_request_s: the most compute seconds of one generation request (None = no limit).
        analytics_enabled: gradio's usage analytics; default off unless the host sets
            ``GRADIO_ANALYTICS_ENABLED=True`` (an offline demo must not try to phone home).
        max_documents, max_chats: browser sessions whose compressed document (on disk) / conversation (in memory)
            the Document / Chat tab keeps, the least recently used dropped first.
        max_document_chars: the longest document the Document tab reads.
        documents_dir: where the Document tab's per-session files go (default: gradio's upload folder).
    """
    registry = registry or ModelRegistry(default_model_name(), allowed=allowed_models_from_env(default_model_name()))
    h = AppHandlers(
        registry,
        interval_s=interval_s,
        plot_interval_s=plot_interval_s,
        max_new_tokens_cap=max_new_tokens_cap,
        max_request_s=max_request_s,
    )
    dh = DocumentHandlers(
        registry,
        max_documents=max_documents,
        max_chars=max_document_chars,
        files_dir=documents_dir,
        interval_s=interval_s,
        plot_interval_s=plot_interval_s,
        max_request_s=max_request_s,
    )
    ch = ChatHandlers(registry, max_chats=max_chats, interval_s=interval_s, max_request_s=max_request_s)
    if analytics_enabled is None:
        analytics_enabled = os.environ.get("GRADIO_ANALYTICS_ENABLED") == "True"
    peers = peer_policies()
    choices = model_choices() if registry.allowed is None else list(registry.allowed)
    if registry.default not in choices:
        choices.insert(0, registry.default)
    limit_note = f" Each request may compute for {max_request_s:g} s at most." if max_request_s else ""
    with gr.Blocks(title="anllm · anchor KV cache demo", analytics_enabled=analytics_enabled) as demo:
        demo.handlers, demo.documents, demo.chats = h, dh, ch  # reachable from tests and notebooks
        gr.Markdown(INTRO + limit_note)
        with gr.Row(equal_height=False):
            model = gr.Dropdown(
                choices,
                value=registry.default,
                allow_custom_value=registry.allowed is None,
                label="Model (pick one or type a hub id)" if registry.allowed is None else "Model",
                elem_id="model",
                scale=1,
            )
            model_md = gr.Markdown("*The model loads on first use.*", elem_id="model-info")
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, elem_id="prompt", scale=5)
                with gr.Column(scale=1, min_width=140):
                    go = gr.Button("Generate", variant="primary", elem_id="go")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    memory = gr.Button("Memory test", elem_id="memory-test")
            gr.Markdown(
                "*Memory test*: a fact, ~400 tokens of other text, then a question about the fact — full cache vs "
                "anchor cache vs StreamingLLM holding as many entries as the anchor cache. Did the anchors keep it?",
                elem_id="memory-help",
            )
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                with gr.Row():
                    chat = gr.Checkbox(True, label="Chat template (off = continue raw text)")
                    max_new = gr.Slider(1, max_new_tokens_cap, 96, step=1, label="Max new tokens", elem_id="max-new")
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
            status = gr.Markdown("", elem_id="status")
            with gr.Row(equal_height=False):
                full_out = gr.HTML(
                    label="Full KV cache", show_label=True, container=True, css_template=TOKENS_CSS, elem_id="out-full"
                )
                anchor_out = gr.HTML(
                    label="Anchor KV cache",
                    show_label=True,
                    container=True,
                    css_template=TOKENS_CSS,
                    elem_id="out-anchor",
                )
                peer_out = gr.HTML(
                    label="Peer policy",
                    show_label=True,
                    container=True,
                    css_template=TOKENS_CSS,
                    visible=False,
                    elem_id="out-peer",
                )
            with gr.Row():
                kv_plot = gr.Plot(label="KV cache size", elem_id="kv-plot")
                speed_plot = gr.Plot(label="Decode speed", elem_id="speed-plot")
            stats = gr.Dataframe(
                headers=STATS_HEADERS, interactive=False, label="Stats (final values per mode)", elem_id="stats"
            )
        with gr.Tab("Document", elem_id="tab-document"):
            gr.Markdown(
                f"Paste or upload a text (up to **{max_document_chars:,} characters**) and press **Compress**: the "
                "model reads it once with the anchor cache, which is saved to a file you can download (`anllm "
                "generate --cache FILE --prompt QUESTION` continues it). Then ask questions: each answer continues "
                "a fresh load of that file, next to a full cache that re-reads document + question. Greedy "
                "decoding; the first-token times include loading the file and re-prefilling.",
                elem_id="doc-help",
            )
            with gr.Row(equal_height=False):
                doc_text = gr.Textbox(
                    label=f"Document (up to {max_document_chars:,} characters)",
                    lines=8,
                    max_lines=16,
                    placeholder="Paste a text here, or upload a .txt / .md file",
                    elem_id="doc-text",
                    scale=4,
                )
                with gr.Column(scale=1, min_width=200):
                    doc_upload = gr.File(
                        label="Upload (UTF-8 .txt / .md)",
                        file_types=[".txt", ".md"],
                        type="filepath",
                        height=120,
                        elem_id="doc-upload",
                    )
                    doc_go = gr.Button("Compress", variant="primary", elem_id="doc-compress")
                    doc_stop = gr.Button("Stop", variant="stop", elem_id="doc-stop")
            doc_status = gr.Markdown("", elem_id="doc-status")
            with gr.Row(equal_height=False):
                doc_sizes = gr.Dataframe(
                    headers=SIZE_HEADERS,
                    interactive=False,
                    label="The document read once: full vs anchor cache",
                    elem_id="doc-sizes",
                    scale=3,
                )
                doc_file = gr.File(
                    label="Saved anchor cache (safetensors)", interactive=False, elem_id="doc-file", scale=1
                )
            with gr.Row():
                doc_question = gr.Textbox(label="Question about the document", lines=1, elem_id="doc-question", scale=4)
                with gr.Column(scale=1, min_width=200):
                    doc_ask = gr.Button("Ask", variant="primary", elem_id="doc-ask")
                    doc_max_new = gr.Slider(
                        1, MAX_ANSWER_TOKENS, 48, step=1, label="Max new tokens", elem_id="doc-max-new"
                    )
            doc_ask_status = gr.Markdown("", elem_id="doc-ask-status")
            with gr.Row(equal_height=False):
                doc_full = gr.HTML(
                    label="Full KV cache: re-reads document + question",
                    show_label=True,
                    container=True,
                    css_template=TOKENS_CSS,
                    elem_id="doc-out-full",
                )
                doc_anchor = gr.HTML(
                    label="Anchor cache: continues the saved file",
                    show_label=True,
                    container=True,
                    css_template=TOKENS_CSS,
                    elem_id="doc-out-anchor",
                )
            doc_stats = gr.Dataframe(
                headers=ASK_HEADERS, interactive=False, label="This question, per cache", elem_id="doc-stats"
            )
            with gr.Row(equal_height=False):
                doc_history = gr.Dataframe(
                    headers=HISTORY_HEADERS,
                    interactive=False,
                    label="Questions asked of this document",
                    elem_id="doc-history",
                    scale=3,
                )
                doc_plot = gr.Plot(label="Time to first token", elem_id="doc-plot", scale=2)
        with gr.Tab("Chat", elem_id="tab-chat"):
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
                        chat_msg = gr.Textbox(
                            placeholder="Type a message and press Enter",
                            show_label=False,
                            lines=1,
                            elem_id="chat-message",
                            scale=5,
                        )
                        chat_send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1, min_width=90)
                    with gr.Row():
                        chat_max_new = gr.Slider(
                            1, MAX_CHAT_TOKENS, 96, step=1, label="Max new tokens", elem_id="chat-max-new"
                        )
                        chat_temp = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0 = greedy)")
                        chat_stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", min_width=80)
                        chat_reset = gr.Button("Reset", elem_id="chat-reset", min_width=80)
                with gr.Column(scale=2):
                    chat_plot = gr.Plot(label="KV cache per turn", elem_id="chat-plot")
                    chat_stats = gr.Markdown("*The anchor cache is empty: send a message.*", elem_id="chat-stats")
            chat_status = gr.Markdown("", elem_id="chat-status")
        with gr.Tab("Mask explorer", elem_id="tab-masks"):
            with gr.Row():
                text = gr.Textbox(DEFAULT_EXPLORER_TEXT, label="Text", lines=3, elem_id="mask-text", scale=4)
                with gr.Column(scale=2):
                    kind = gr.Radio(["EP", "AC"], value="EP", label="Anchors: EP (punctuation) or AC (<AC> token)")
                    with gr.Row():
                        sink = gr.Number(0, precision=0, minimum=0, label="Sink tokens", elem_id="mask-sink")
                        window = gr.Number(
                            0, precision=0, minimum=0, label="Local window (0 = off)", elem_id="mask-window"
                        )
                    see = gr.Checkbox(False, label="Anchors see earlier anchors")
                    show = gr.Button("Show masks", variant="primary", elem_id="show-masks")
            mask_md = gr.Markdown(f"Up to {EXPLORER_MAX_TOKENS} tokens are shown.", elem_id="mask-summary")
            tokens_out = gr.HTML(css_template=TOKENS_CSS, elem_id="mask-tokens")
            mask_plot = gr.Plot(label="Causal vs AnSAN mask", elem_id="mask-plot")
            schedule_plot = gr.Plot(label="KV-drop schedule", elem_id="schedule-plot")

        gen_inputs = [prompt, model, peer, chat, max_new, temperature, top_p, top_k, rep, seed]
        gen_outputs = [full_out, anchor_out, peer_out, kv_plot, speed_plot, stats, status]
        generate = maybe_gpu(h.generate, duration=gpu_duration(h))  # a GPU slot sized to the request (ZeroGPU)
        run = dict(fn=generate, inputs=gen_inputs, outputs=gen_outputs, concurrency_id="model", concurrency_limit=1)
        ev_click = go.click(api_name="generate", **run)
        ev_submit = prompt.submit(api_name=False, **run)
        stop.click(None, cancels=[ev_click, ev_submit])
        memory_peer = "streaming" if "streaming" in peers else NO_PEER
        ev_memory = memory.click(
            lambda: (memory_test_prompt(), memory_peer, True, 24),
            outputs=[prompt, peer, chat, max_new],
            queue=False,
            api_name=False,
        ).then(api_name=False, **run)
        stop.click(None, cancels=[ev_memory])
        peer.change(h.peer_column, peer, peer_out, queue=False, api_name=False)
        # outside the queue: a page load must not take a queue place (or get "busy") just to describe the model
        model.change(h.model_info, model, model_md, api_name="model_info", queue=False)
        demo.load(h.model_info, model, model_md, api_name=False, queue=False)
        # the explorer starts from the model's served anchor setting (kind, sinks, window)
        setting = dict(fn=h.explorer_setting, inputs=model, outputs=[kind, sink, window, see], queue=False)
        demo.load(api_name="explorer_setting", **setting)
        model.change(api_name=False, **setting)
        explore = dict(fn=h.explore, inputs=[model, text, kind, sink, window, see])
        explore["outputs"] = [tokens_out, mask_plot, schedule_plot, mask_md]
        show.click(api_name="explore", **explore)
        text.submit(api_name=False, **explore)

        # the Document tab: every model run shares the one "model" slot with the Generate tab
        slot = dict(concurrency_id="model", concurrency_limit=1)
        doc_upload.upload(dh.read_upload, doc_upload, [doc_text, doc_status], api_name=False, queue=False)
        doc_outputs = [doc_status, doc_sizes, doc_file, doc_history, doc_full, doc_anchor, doc_stats, doc_plot]
        ev_compress = doc_go.click(maybe_gpu(dh.compress), [model, doc_text], doc_outputs, api_name="compress", **slot)
        ask = dict(fn=maybe_gpu(dh.ask), inputs=[model, doc_question, doc_max_new], **slot)
        ask["outputs"] = [doc_full, doc_anchor, doc_stats, doc_history, doc_plot, doc_ask_status]
        ev_ask = doc_ask.click(api_name="ask", **ask)
        ev_ask_submit = doc_question.submit(api_name=False, **ask)
        doc_stop.click(None, cancels=[ev_compress, ev_ask, ev_ask_submit])
        # the Chat tab
        send = dict(fn=maybe_gpu(ch.send), inputs=[model, chat_msg, chat_max_new, chat_temp], **slot)
        send["outputs"] = [chatbot, chat_msg, chat_plot, chat_stats, chat_status]
        ev_send = chat_send.click(api_name="chat", **send)
        ev_send_submit = chat_msg.submit(api_name=False, **send)
        chat_stop.click(None, cancels=[ev_send, ev_send_submit])
        reset = dict(fn=ch.reset, inputs=None, outputs=[chatbot, chat_plot, chat_stats, chat_status], queue=False)
        chat_reset.click(api_name="chat_reset", cancels=[ev_send, ev_send_submit], **reset)
        chatbot.clear(api_name=False, cancels=[ev_send, ev_send_submit], **reset)  # its own bin icon resets too
        demo.unload(_forget(dh, ch))  # a closed tab's document files and conversation go at once
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def _forget(dh: DocumentHandlers, ch: ChatHandlers):
    def forget(request: gr.Request) -> None:
        dh.forget(request)
        ch.forget(request)

    return forget


def serve(args: argparse.Namespace) -> int:
    """Load the model named in ``args`` and serve the app until interrupted."""
    t0 = time.perf_counter()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes
    registry = ModelRegistry(args.model, device=check_device(args.device), allowed=allowed_models_from_env(args.model))
    if not args.no_preload:
        try:
            registry.get()
        except AnLLMError as e:  # still serve: the UI shows the message and other models can be picked
            logger.warning("could not preload %s: %s", args.model, e)
    demo = build_demo(registry, queue_size=args.queue_size, max_request_s=args.max_request_s or None)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        prevent_thread_lock=True,
        state_session_capacity=max(1, args.max_sessions),
    )
    logger.info(
        "serving %s on http://%s:%s, ready %.1f s after start",
        args.model,
        args.host,
        args.port,
        time.perf_counter() - t0,
    )
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0
