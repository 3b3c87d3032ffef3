"""The anllm demo assembled from its tabs, and its launcher; shared by ``app/app.py`` and ``anllm app``.

:func:`build_demo` places the intro and the model picker and lets each tab (:mod:`anllm.ui.generate_tab`,
:mod:`~anllm.ui.document_tab`, :mod:`~anllm.ui.chat_tab`, :mod:`~anllm.ui.explorer_tab`) build its own layout and
handlers; it loads nothing and starts no server. :func:`serve` is the one place that picks host, port, device and
preloads the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import gradio as gr

from anllm.config import AnLLMError
from anllm.devices import check_device
from anllm.ui.chat_tab import DEFAULT_MAX_CHATS, ChatTab
from anllm.ui.document_tab import DEFAULT_MAX_DOCUMENTS, MAX_DOCUMENT_CHARS, DocumentTab
from anllm.ui.explorer_tab import ExplorerTab
from anllm.ui.generate_tab import GenerateTab
from anllm.ui.launch import DEFAULT_QUEUE_SIZE, default_model_name, network_allowlist
from anllm.ui.registry import ModelRegistry, allowed_models_from_env, model_choices
from anllm.ui.render import error_markdown, model_markdown
from anllm.ui.runtime import MAX_NEW_TOKENS, MAX_REQUEST_S

logger = logging.getLogger(__name__)

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
    streaming = dict(interval_s=interval_s, plot_interval_s=plot_interval_s, max_request_s=max_request_s)
    generate = GenerateTab(registry, max_new_tokens_cap=max_new_tokens_cap, **streaming)
    documents = DocumentTab(
        registry, max_documents=max_documents, max_chars=max_document_chars, files_dir=documents_dir, **streaming
    )
    chats = ChatTab(registry, max_chats=max_chats, interval_s=interval_s, max_request_s=max_request_s)
    tabs = [  # (label, elem_id suffix, tab)
        ("Generate", "generate", generate),
        ("Document", "document", documents),
        ("Chat", "chat", chats),
        ("Mask explorer", "masks", ExplorerTab(registry)),
    ]
    if analytics_enabled is None:
        analytics_enabled = os.environ.get("GRADIO_ANALYTICS_ENABLED") == "True"
    limit_note = f" Each request may compute for {max_request_s:g} s at most." if max_request_s else ""
    with gr.Blocks(title="anllm · anchor KV cache demo", analytics_enabled=analytics_enabled) as demo:
        demo.handlers, demo.documents, demo.chats = generate, documents, chats  # reachable from tests and notebooks
        gr.Markdown(INTRO + limit_note)
        model = _model_picker(demo, registry)
        for label, name, tab in tabs:
            with gr.Tab(label, elem_id=f"tab-{name}"):
                tab.build(demo, model)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def _model_picker(demo: gr.Blocks, registry: ModelRegistry) -> gr.Dropdown:
    """The model dropdown every tab reads, and the panel describing the chosen model (``/model_info``)."""
    choices = model_choices() if registry.allowed is None else list(registry.allowed)
    if registry.default not in choices:
        choices.insert(0, registry.default)
    with gr.Row(equal_height=False):
        model = gr.Dropdown(
            choices,
            value=registry.default,
            allow_custom_value=registry.allowed is None,
            label="Model (pick one or type a hub id)" if registry.allowed is None else "Model",
            elem_id="model",
            scale=1,
        )
        panel = gr.Markdown("*The model loads on first use.*", elem_id="model-info")

    def model_info(model_name: str | None) -> str:
        """Load ``model_name`` and describe it (or explain why it cannot be loaded)."""
        try:
            return model_markdown(registry.get(model_name))
        except AnLLMError as e:
            return error_markdown(str(e))

    # outside the queue: a page load must not take a queue place (or get "busy") just to describe the model
    model.change(model_info, model, panel, api_name="model_info", queue=False)
    demo.load(model_info, model, panel, api_name=False, queue=False)
    return model


def serve(args: argparse.Namespace) -> int:
    """Load the model named in ``args`` and serve the app until interrupted."""
    t0 = time.perf_counter()
    network_allowlist(args.host, args.allow_any_model)  # a public --host turns the model allowlist on
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
