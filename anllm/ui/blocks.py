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
    """
    registry = registry or ModelRegistry(default_model_name(), allowed=allowed_models_from_env(default_model_name()))
    h = AppHandlers(
        registry,
        interval_s=interval_s,
        plot_interval_s=plot_interval_s,
        max_new_tokens_cap=max_new_tokens_cap,
        max_request_s=max_request_s,
    )
    if analytics_enabled is None:
        analytics_enabled = os.environ.get("GRADIO_ANALYTICS_ENABLED") == "True"
    peers = peer_policies()
    choices = model_choices() if registry.allowed is None else list(registry.allowed)
    if registry.default not in choices:
        choices.insert(0, registry.default)
    limit_note = f" Each request may compute for {max_request_s:g} s at most." if max_request_s else ""
    with gr.Blocks(title="anllm · anchor KV cache demo", analytics_enabled=analytics_enabled) as demo:
        demo.handlers = h  # reachable from tests and notebooks
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
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


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
