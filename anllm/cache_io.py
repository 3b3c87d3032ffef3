"""Saved caches: a :class:`~anllm.cache.PolicyCache` as one safetensors file, loaded back to continue exactly.

The file holds the tensors of :meth:`PolicyCache.to_tensors <anllm.cache.PolicyCache.to_tensors>` (the K/V of every
layer, the per-entry metadata and the counters of its :class:`~anllm.cache.CacheState`) and, in the safetensors
header, a JSON record: the policy and its parameters, the anchor ids and kind, the position policy, ``max_segment``,
the dtype, a fingerprint of the model weights (adapter merged in) and of the tokenizer, any extra
state of the caller (a chat session's text) and a checksum over all of it. Loading refuses a different model,
adapter, tokenizer, dtype, anchor setting or policy with a message naming the mismatch; a truncated, corrupt or
edited file is refused with a clear error. Writes are atomic (temporary file + ``os.replace``).

Format versions: 2 records the anchor kind as ``anchor_kind``; files of version 1 (``anchor_mode``) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from anllm.cache import PolicyCache
from anllm.config import AnLLMError
from anllm.policies import POLICIES, EvictionPolicy
from anllm.renames import renamed_kwargs

FORMAT = "anllm-cache"
VERSION = 2  # written; 2: the model record's anchor kind is "anchor_kind" (1 called it "anchor_mode")
READS = (1, 2)  # format versions this anllm loads
N_SAMPLES = 256  # values sampled per parameter for the weights fingerprint
_CONFIG_KEYS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "rope_theta", "rope_parameters", "rope_scaling", "max_position_embeddings", "rms_norm_eps",
)  # fmt: skip


_TOKENIZER_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# -- fingerprints ------------------------------------------------------------------------------------------------
def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's architecture settings, parameter names/shapes and ``N_SAMPLES`` values per parameter.

    Values are sampled at evenly spaced flat indices and hashed as float64, so the hash does not depend on the dtype
    (checked separately) and costs milliseconds; any merged adapter changes whole matrices and so the samples.
    """
    h = hashlib.blake2b(digest_size=16)
    cfg = model.config
    h.update(json.dumps({k: str(getattr(cfg, k, None)) for k in _CONFIG_KEYS}, sort_keys=True).encode())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)  # (N,)
            n = min(N_SAMPLES, flat.numel())
            idx = torch.arange(n, device=flat.device) * (flat.numel() - 1) // max(n - 1, 1)  # (n,) exact integers
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(flat[idx].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary (added tokens included), special tokens and chat template.

    Remembered per tokenizer object while its size, special tokens and template stay the same (hashing a 49k
    vocabulary takes ~0.1 s, which would otherwise be paid by every question asked of a saved file).
    """
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    key = (len(tokenizer), special, str(getattr(tokenizer, "chat_template", None)))
    try:
        hit = _TOKENIZER_FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == key:
        return hit[1]
    vocab = tokenizer.get_vocab()
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(f"{i} {t}" for t, i in sorted(vocab.items(), key=lambda kv: kv[1])).encode())
    h.update("\x00".join(key[1:]).encode())
    digest = h.hexdigest()
    try:
        _TOKENIZER_FINGERPRINTS[tokenizer] = (key, digest)
    except TypeError:
        pass
    return digest


def model_record(lm) -> dict:
    """What a saved cache records about the model it was computed with (see :func:`check_model`)."""
    return {
        "name": lm.name,
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "weights": weights_fingerprint(lm.model),
        "tokenizer": tokenizer_fingerprint(lm.tokenizer),
        "anchor_kind": lm.anchor.kind,  # EP or AC
        "anchor_ids": list(lm.anchor_ids),
        "position_policy": lm.anchor.position_policy,
        "max_segment": lm.anchor.max_segment,
    }


# -- policies as JSON --------------------------------------------------------------------------------------------
def policy_record(policy: EvictionPolicy) -> dict:
    """``{"name": ..., "params": {...}}`` for a registered policy; raises for one that cannot be rebuilt."""
    name = type(policy).name
    if POLICIES.get(name) is not type(policy):
        raise AnLLMError(
            f"cannot save a cache with policy {type(policy).__name__}: it is not in anllm.policies.POLICIES"
        )
    params = dataclasses.asdict(policy)
    try:
        json.dumps(params)
    except TypeError as e:
        raise AnLLMError(f"cannot save policy {name!r}: its parameters are not JSON ({e})") from None
    return {"name": name, "params": params}


def policy_from_record(record: dict) -> EvictionPolicy:
    cls = POLICIES.get(record["name"])
    if cls is None:
        raise AnLLMError(f"the cache uses policy {record['name']!r}, which this anllm does not have")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in record["params"].items()}
    return cls(**params)


def describe_policy(policy: EvictionPolicy) -> str:
    params = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(policy).items() if k != "separator_ids")
    return type(policy).name + (f"({params})" if params else "")


# -- save --------------------------------------------------------------------------------------------------------
def _checksum(header: str, tensors: dict[str, Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_cache(cache: PolicyCache, lm, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``cache`` (computed with ``lm``) to ``path`` atomically; ``extra`` is any JSON the caller wants back.

    Returns:
        the path written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise AnLLMError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise AnLLMError(f"cannot write {path}: it is a directory; give a file name such as doc.kv")
    tensors = cache.to_tensors()
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_record(lm),
        "policy": policy_record(cache.policy),
        "cache_anchor_ids": list(cache.anchor_ids),
        "cache_position_policy": cache.position_policy,
        "cache_max_segment": cache.max_segment,
        "extra": extra or {},
    }
    header = json.dumps(record, ensure_ascii=False, sort_keys=True)
    metadata = {"anllm": header, "checksum": _checksum(header, tensors)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# -- load --------------------------------------------------------------------------------------------------------
@dataclass
class SavedCache:
    """A loaded cache file: the cache (ready to continue), its JSON record and the caller's ``extra`` state."""

    cache: PolicyCache
    record: dict = field(repr=False)
    path: Path | None = None

    @property
    def extra(self) -> dict:
        return self.record.get("extra", {})

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0


def _read(path: Path, device: torch.device) -> tuple[dict, dict[str, Tensor]]:
    """The JSON record and tensors of a cache file; any unreadable or inconsistent file raises AnLLMError."""
    if path.is_dir():
        raise AnLLMError(f"cache file {path} is a directory; give the path of a file written by anllm compress")
    if not path.is_file():
        raise AnLLMError(f"cache file {path} does not exist")
    bad = f"{path} is not a readable anllm cache file"
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for truncated/garbled files
        raise AnLLMError(f"{bad} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); write it again") from None
    if "anllm" not in metadata or "checksum" not in metadata:
        raise AnLLMError(f"{bad} (no anllm record in its header: not written by anllm compress / save_cache)")
    try:
        record = json.loads(metadata["anllm"])
    except ValueError as e:
        raise AnLLMError(f"{bad} (its header record is not JSON: {e}); write it again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise AnLLMError(f"{bad} (unknown format {record.get('format') if isinstance(record, dict) else record!r})")
    if record.get("version") not in READS:
        raise AnLLMError(
            f"{path} is an anllm cache of format version {record.get('version')}; this anllm reads versions "
            f"{', '.join(map(str, READS))}"
        )
    if _checksum(metadata["anllm"], tensors) != metadata["checksum"]:
        raise AnLLMError(f"{path} is corrupt or was edited (checksum mismatch); write it again with anllm compress")
    return _upgrade(record), tensors


def _upgrade(record: dict) -> dict:
    """A record of an older format version in the current layout (version 1 named the anchor kind ``anchor_mode``)."""
    model = record.get("model")
    if isinstance(model, dict) and "anchor_kind" not in model and "anchor_mode" in model:
        model = {**{k: v for k, v in model.items() if k != "anchor_mode"}, "anchor_kind": model["anchor_mode"]}
        record = {**record, "model": model}
    return record


def verify_cache_file(path: str | os.PathLike) -> dict:
    """The JSON record of the cache file at ``path`` once its header and checksum are verified (no model needed).

    Raises:
        AnLLMError: missing, a directory, truncated, corrupt, edited, or not an anllm cache of this version.
    """
    return _read(Path(path), torch.device("cpu"))[0]


@renamed_kwargs(mode="policy")
def check_model(record: dict, lm, policy: str | EvictionPolicy | None = None) -> EvictionPolicy:
    """Raise :class:`AnLLMError` naming the first difference between the saved model/settings and ``lm``.

    Returns:
        the saved policy (equal to ``lm.policy(policy)`` when ``policy`` is given).
    """
    saved, here = record["model"], model_record(lm)
    name = f"model {saved['name']!r}" if saved.get("name") else "another model"
    if saved["dtype"] != here["dtype"]:
        raise AnLLMError(
            f"the cache holds {saved['dtype']} K/V but the model is loaded in {here['dtype']}; "
            f"load it with --dtype {saved['dtype']}"
        )
    if saved["weights"] != here["weights"]:
        raise AnLLMError(
            f"the cache was computed by {name} with different weights or adapter than the loaded {lm.name!r} "
            f"(weights fingerprint {saved['weights'][:12]} vs {here['weights'][:12]}); use the same --model"
        )
    if saved["tokenizer"] != here["tokenizer"]:
        raise AnLLMError(
            f"the cache was computed with a different tokenizer than {lm.name!r}'s "
            f"(fingerprint {saved['tokenizer'][:12]} vs {here['tokenizer'][:12]})"
        )
    settings = (("anchor_kind", "anchor kind", "--anchors"), ("anchor_ids", "anchor_ids", "--anchors"),
                ("position_policy", "position_policy", "--positions"))  # fmt: skip
    for key, what, flag in settings:
        if saved[key] != here[key]:
            raise AnLLMError(
                f"the cache was computed with {what} {saved[key]} but the model uses {here[key]}; pass {flag}"
            )
    if saved["max_segment"] != here["max_segment"]:
        raise AnLLMError(
            f"the cache was computed with max_segment {saved['max_segment']}, the model uses {here['max_segment']}"
        )
    saved_policy = policy_from_record(record["policy"])
    if policy is not None:
        wanted = lm.policy(policy)
        if wanted != saved_policy:
            raise AnLLMError(
                f"the cache was computed with policy {describe_policy(saved_policy)} but {describe_policy(wanted)} "
                "was asked for; omit --policy or compress the text again with that policy"
            )
    return saved_policy


def _shape_error(path: Path, what: str) -> AnLLMError:
    return AnLLMError(f"{path} is not a consistent anllm cache file ({what}); write it again")


def _build(record: dict, tensors: dict[str, Tensor], lm, policy: EvictionPolicy, path: Path) -> PolicyCache:
    try:
        return PolicyCache.from_tensors(
            lm.model.config, tensors, policy, tuple(record["cache_anchor_ids"]), record["cache_position_policy"],
            record["cache_max_segment"],
        )  # fmt: skip
    except ValueError as e:
        raise _shape_error(path, str(e)) from None


@renamed_kwargs(mode="policy")
def read_cache(lm, path: str | os.PathLike, policy: str | EvictionPolicy | None = None) -> SavedCache:
    """Load a cache file for ``lm``, refusing a mismatching model, tokenizer, dtype, anchor setting or ``policy``.

    Args:
        lm: the :class:`~anllm.models.LoadedModel` to continue with.
        policy: the policy the caller wants (name, spec or object); None = whatever the file holds.
    Returns:
        a :class:`SavedCache`; ``.cache`` is ready for :func:`anllm.generation.forward_chunk` and friends.
    """
    path = Path(path)
    device = next(lm.model.parameters()).device
    record, tensors = _read(path, device)
    try:
        saved_policy = check_model(record, lm, policy)
        return SavedCache(_build(record, tensors, lm, saved_policy, path), record, path)
    except AnLLMError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a record this version did not write
        raise AnLLMError(f"{path} is not a consistent anllm cache file (bad record: {e!r}); write it again") from None


@renamed_kwargs(mode="policy")
def load_cache(lm, path: str | os.PathLike, policy: str | EvictionPolicy | None = None) -> PolicyCache:
    """The cache saved at ``path``, ready to continue with ``lm`` (see :func:`read_cache`)."""
    return read_cache(lm, path, policy).cache
