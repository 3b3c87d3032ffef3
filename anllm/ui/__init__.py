"""The Gradio app, one module per tab (optional: needs ``anllm[app]``, i.e. gradio and plotly).

* :mod:`anllm.ui.blocks`: :func:`~anllm.ui.blocks.build_demo` assembles the tabs; :func:`~anllm.ui.blocks.serve`
  launches it (``app/app.py``, ``anllm app``); :mod:`anllm.ui.launch`: the launcher's flags (no gradio);
* :mod:`anllm.ui.generate_tab`, :mod:`anllm.ui.document_tab`, :mod:`anllm.ui.chat_tab`,
  :mod:`anllm.ui.explorer_tab`: each tab's layout and its handlers (``GenerateTab``, ``DocumentTab``, ``ChatTab``,
  ``ExplorerTab``);
* :mod:`anllm.ui.runtime`: how every tab runs the model (:class:`~anllm.ui.runtime.Worker`: a thread under a
  deadline, stopped with the request; :func:`~anllm.ui.runtime.compare_stream`: modes side by side) and the request
  settings; :mod:`anllm.ui.render`: escaping, token panels and their CSS, status notes, the model panel;
* :mod:`anllm.ui.registry`: :class:`~anllm.ui.registry.ModelRegistry`, models loaded by name on first use;
  :mod:`anllm.ui.sessions`: the bounded per-browser-session store of the Document and Chat tabs.

Importing this package imports nothing heavy; :mod:`~anllm.ui.runtime` and :mod:`~anllm.ui.render` import no gradio
either (``tests/test_floors.py``), the tab modules and :mod:`~anllm.ui.blocks` do. Nothing in the core or the
library layers imports this package.
"""
