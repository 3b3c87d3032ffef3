"""The Gradio app's handlers and layout (optional: needs ``anllm[app]``, i.e. gradio and plotly).

* :mod:`anllm.ui.registry`: :class:`~anllm.ui.registry.ModelRegistry`, models loaded by name on first use;
* :mod:`anllm.ui.handlers`: :class:`~anllm.ui.handlers.AppHandlers` and the side-by-side streaming they use;
* :mod:`anllm.ui.blocks`: :func:`~anllm.ui.blocks.build_demo` (the layout) and :func:`~anllm.ui.blocks.serve`.

Importing this package imports nothing heavy; gradio is imported by :mod:`anllm.ui.blocks` and by the handlers that
return gradio updates. Nothing in the core or the library layers imports it (``tests/test_floors.py``).
"""
