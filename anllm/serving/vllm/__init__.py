"""anllm's vLLM plugin: the anchor cache's attention inside vLLM (docs/serving.md). Imports vLLM; the core never
imports this package.

Loaded by vLLM through the ``vllm.general_plugins`` entry point ``anllm = anllm.serving.vllm:register`` in every
vLLM process. Serve an exported folder (``anllm export --model default --out DIR``) with::

    python -m vllm.entrypoints.openai.api_server --model DIR --worker-cls anllm.serving.vllm.worker.AnchorCPUWorker \\
        --scheduler-cls anllm.serving.vllm.scheduler.AnchorScheduler --no-enable-prefix-caching --enforce-eager

(``vllm serve DIR`` with the same flags is the same server; the CPU wheel's ``vllm`` launcher fails on its version
lookup), or ``LLM(DIR, **anllm.serving.vllm.ENGINE_ARGS)``.
"""

from __future__ import annotations

from anllm.serving.vllm.checks import SCHEDULER_CLS, WORKER_CLS

BACKEND_CLS = "anllm.serving.vllm.attention.AnchorCPUAttentionBackend"
ENGINE_ARGS = {
    "worker_cls": WORKER_CLS,
    "scheduler_cls": SCHEDULER_CLS,
    "enable_prefix_caching": False,
    "enforce_eager": True,
}


def register() -> None:
    """vLLM's plugin hook: check the pinned version and put the anchor backend in the CPU attention slot.

    Reads nothing global; model-dependent checks run when the engine starts (:mod:`anllm.serving.vllm.checks`).
    """
    from anllm.serving.vllm.checks import check_version
    from anllm.serving.vllm.vllm_internals import installed_version, resolve

    check_version(installed_version())
    register_backend = resolve("vllm.v1.attention.backends.registry", "register_backend")
    slot = resolve("vllm.v1.attention.backends.registry", "AttentionBackendEnum.CPU_ATTN")
    register_backend(slot, BACKEND_CLS)
