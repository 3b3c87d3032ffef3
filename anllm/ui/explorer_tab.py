"""The app's Mask explorer tab: a text's tokens and anchors, the causal vs AnSAN masks and the KV-drop schedule.

The computation is :func:`anllm.explorer.explore_masks` (no model forward pass); the tab starts from the selected
model's served anchor setting (kind, sinks, window).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from anllm.config import AnLLMError
from anllm.explorer import EXPLORER_MAX_TOKENS, explore_masks, mask_summary
from anllm.plots import mask_figure, schedule_figure
from anllm.ui.registry import ModelRegistry
from anllm.ui.render import error_markdown, mask_tokens_html, token_panel
from anllm.ui.runtime import ui_number

DEFAULT_EXPLORER_TEXT = "The cat sat on the mat. It was warm! Was it happy? Yes, very."


class ExplorerTab:
    """The Mask explorer tab: its handlers, bound to a :class:`ModelRegistry`, and :meth:`build`, its layout."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    # -- handlers ---------------------------------------------------------------------------------------------------
    def explorer_setting(self, model_name: str | None) -> tuple:
        """The mask explorer's anchor kind, sinks, window and anchor-sees-anchor set to the model's served setting.

        Returns:
            ``(kind, n_sink, window, anchors_see_anchors)``, or skips when the model cannot be loaded.
        """
        try:
            a = self.registry.get(model_name).anchor
        except AnLLMError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return a.kind.upper(), a.n_sink, a.window, a.anchors_see_anchors

    def explore(
        self, model_name: str | None, text: str, kind: str, n_sink: Any, window: Any, anchors_see_anchors: bool
    ) -> tuple:
        """Tokens with anchors, AnSAN vs causal masks, and the KV-drop schedule.

        Returns:
            ``(tokens_html, mask_figure, schedule_figure, summary_markdown)``.
        """
        try:
            lm = self.registry.get(model_name)
            n_sink, window = ui_number(n_sink, "sink tokens", int), ui_number(window, "window", int)
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

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self, demo: gr.Blocks, model: gr.Dropdown) -> None:
        """Place the tab's components (inside ``gr.Tab``) and wire them (``/explore``, ``/explorer_setting``)."""
        with gr.Row():
            text = gr.Textbox(DEFAULT_EXPLORER_TEXT, label="Text", lines=3, elem_id="mask-text", scale=4)
            with gr.Column(scale=2):
                kind = gr.Radio(["EP", "AC"], value="EP", label="Anchors: EP (punctuation) or AC (<AC> token)")
                with gr.Row():
                    sink = gr.Number(0, precision=0, minimum=0, label="Sink tokens", elem_id="mask-sink")
                    window = gr.Number(0, precision=0, minimum=0, label="Local window (0 = off)", elem_id="mask-window")
                see = gr.Checkbox(False, label="Anchors see earlier anchors")
                show = gr.Button("Show masks", variant="primary", elem_id="show-masks")
        summary = gr.Markdown(f"Up to {EXPLORER_MAX_TOKENS} tokens are shown.", elem_id="mask-summary")
        tokens = token_panel(None, "mask-tokens")
        mask_plot = gr.Plot(label="Causal vs AnSAN mask", elem_id="mask-plot")
        schedule_plot = gr.Plot(label="KV-drop schedule", elem_id="schedule-plot")

        # the explorer starts from the model's served anchor setting (kind, sinks, window)
        setting = dict(fn=self.explorer_setting, inputs=model, outputs=[kind, sink, window, see], queue=False)
        demo.load(api_name="explorer_setting", **setting)
        model.change(api_name=False, **setting)
        explore = dict(fn=self.explore, inputs=[model, text, kind, sink, window, see])
        explore["outputs"] = [tokens, mask_plot, schedule_plot, summary]
        show.click(api_name="explore", **explore)
        text.submit(api_name=False, **explore)
