"""A transformers ``DynamicCache`` that evicts entries per batch row according to an :class:`EvictionPolicy`.

Works with stock models (no forked modeling code): before each forward pass :meth:`PolicyCache.prepare` returns
the 4D ``attention_mask`` and explicit ``position_ids`` for the incoming chunk; the model appends K/V through the
usual ``update``; after the pass :meth:`PolicyCache.evict` drops what the policy no longer needs. Rows are
compacted independently, so a batch with different anchor layouts works; empty slots of shorter rows are
marked invalid and masked. A forward pass whose chunk was not registered by ``prepare`` (plain
``model.generate(past_key_values=cache)``) raises instead of silently keeping every token.

Everything the cache knows besides the K/V tensors lives in one :class:`CacheState` (per-entry metadata and the
per-row counters), owned by the cache: callers read it through read-only properties and move it only through
:meth:`PolicyCache.snapshot` / :meth:`~PolicyCache.restore`, :meth:`~PolicyCache.copy` and
:meth:`~PolicyCache.to_tensors` / :meth:`~PolicyCache.from_tensors` (the saved-cache format, :mod:`anllm.cache_io`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor
from transformers import DynamicCache

from anllm.anchors import mark_anchors
from anllm.config import AnLLMError
from anllm.masks import combine, segment_ids, to_additive, token_positions
from anllm.policies.base import EvictionPolicy, TokenMeta
from anllm.policies.full import FullCachePolicy

_HOW_TO_USE = (
    "Decode through anllm instead: model.generate(..., custom_generate=<the anllm repository or its custom_generate "
    "Hub id>, trust_remote_code=True), anllm.generate(lm, prompt), or call cache.prepare(input_ids) before and "
    "cache.evict() after each forward (anllm.generation.forward_chunk does both)."
)
_UNPREPARED = (
    "PolicyCache was used by a model forward without prepare() for that chunk (plain model.generate(..., "
    "past_key_values=PolicyCache(...)) does this): it would keep every token and skip the anchor mask. " + _HOW_TO_USE
)


@dataclass(frozen=True, eq=False)
class CacheState:
    """What a :class:`PolicyCache` holds besides the K/V tensors: the stored entries' metadata and per-row counters.

    One object, so a snapshot, a copy and the file format carry every field (a new counter is a new field here).
    The tensors are never written in place (every update builds new ones), so sharing them is safe.
    """

    meta: TokenMeta  # stored entries, (B, K) each
    n_seen: Tensor  # long (B,): real tokens seen (= true position of the next token)
    n_seg: Tensor  # long (B,): anchors seen (= segment id of the next token)
    n_evicted: Tensor  # long (B,): entries dropped so far
    n_run: Tensor  # long (B,): tokens since the last anchor (for forced anchors)

    @classmethod
    def empty(cls, batch_size: int, device: torch.device) -> CacheState:
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        return cls(TokenMeta.empty(batch_size, device), zeros, zeros, zeros, zeros)

    @property
    def batch_size(self) -> int:
        return self.meta.token.shape[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> CacheState:
        """``fn`` applied to every tensor (metadata fields and counters)."""
        meta = TokenMeta(**{f.name: fn(getattr(self.meta, f.name)) for f in fields(TokenMeta)})
        return CacheState(meta, *(fn(getattr(self, name)) for name in COUNTERS))

    def to_tensors(self) -> dict[str, Tensor]:
        """``{"meta.<field>": (B, K), "<counter>": (B,)}``: the names the saved-cache format uses."""
        out = {f"meta.{f.name}": getattr(self.meta, f.name) for f in fields(TokenMeta)}
        out.update({name: getattr(self, name) for name in COUNTERS})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> CacheState:
        """The inverse of :meth:`to_tensors`; raises ``ValueError`` naming a missing tensor or a shape mismatch."""
        missing = [k for k in STATE_TENSORS if k not in tensors]
        if missing:
            raise ValueError(f"tensor {missing[0]} is missing")
        meta = TokenMeta(**{f.name: tensors[f"meta.{f.name}"] for f in fields(TokenMeta)})
        B, K = meta.token.shape if meta.token.dim() == 2 else (-1, -1)
        if any(getattr(meta, f.name).shape != (B, K) for f in fields(TokenMeta)):
            raise ValueError("metadata shapes disagree")
        if any(tensors[name].shape != (B,) for name in COUNTERS):
            raise ValueError("metadata shapes disagree")
        return cls(meta, *(tensors[name] for name in COUNTERS))


COUNTERS = tuple(f.name for f in fields(CacheState) if f.name != "meta")  # n_seen, n_seg, n_evicted, n_run
STATE_TENSORS = tuple(f"meta.{f.name}" for f in fields(TokenMeta)) + COUNTERS  # what to_tensors names


@dataclass(frozen=True, eq=False)
class CacheSnapshot:
    """A point to return to (:meth:`PolicyCache.restore`): the state and each layer's K/V, shared, not copied."""

    state: CacheState | None
    layers: tuple[tuple[Tensor | None, Tensor | None], ...]


class PolicyCache(DynamicCache):
    """KV cache with per-row eviction, tracking tokens *seen* (positions) apart from entries *stored*.

    Args:
        config: the model's config (passed to ``DynamicCache``).
        policy: what to keep and what each token may see.
        anchor_ids: token ids that are anchors (they define segments for every policy).
        position_policy: ``"true"`` (a token's position counts every token seen) or ``"compact"`` (the official
            code: a new token's position is the number of entries stored).
        max_segment: a forced anchor after this many tokens without one (0 = only ``anchor_ids`` are anchors).
    """

    def __init__(
        self,
        config,
        policy: EvictionPolicy | None = None,
        anchor_ids: tuple[int, ...] = (),
        position_policy: Literal["true", "compact"] = "true",
        max_segment: int = 0,
    ) -> None:
        super().__init__(config=config)
        self.policy = policy if policy is not None else FullCachePolicy()
        self.anchor_ids = tuple(anchor_ids)
        self.position_policy = position_policy
        self.max_segment = int(max_segment)
        self._state: CacheState | None = None  # None until the first chunk
        self._pending: TokenMeta | None = None  # the chunk between prepare() and evict()
        self._run_after: Tensor | None = None  # n_run once the pending chunk is committed

    # -- read-only views of the state -------------------------------------------------------------------------
    @property
    def state(self) -> CacheState | None:
        """Metadata and counters (None before the first chunk); change them only through the cache's methods."""
        return self._state

    @property
    def meta(self) -> TokenMeta | None:
        """The stored entries' metadata, ``(B, K)`` per field (None before the first chunk)."""
        return None if self._state is None else self._state.meta

    @property
    def n_seen(self) -> Tensor | None:
        """Long ``(B,)``: real tokens seen (None before the first chunk)."""
        return None if self._state is None else self._state.n_seen

    @property
    def n_seg(self) -> Tensor | None:
        """Long ``(B,)``: anchors seen (None before the first chunk)."""
        return None if self._state is None else self._state.n_seg

    @property
    def n_evicted(self) -> Tensor | None:
        """Long ``(B,)``: entries dropped so far (None before the first chunk)."""
        return None if self._state is None else self._state.n_evicted

    @property
    def n_run(self) -> Tensor | None:
        """Long ``(B,)``: tokens since the last anchor (None before the first chunk)."""
        return None if self._state is None else self._state.n_run

    @property
    def in_forward(self) -> bool:
        """True between :meth:`prepare` and :meth:`evict` (a model forward is using the cache)."""
        return self._pending is not None

    @property
    def batch_size(self) -> int | None:
        """Rows held (None before the first chunk)."""
        return None if self._state is None else self._state.batch_size

    # -- before / after a forward pass ------------------------------------------------------------------------
    def prepare(self, input_ids: Tensor, attention_mask: Tensor | None = None, dtype: torch.dtype = torch.float32):
        """Register an incoming chunk; return ``(attention_mask, position_ids)`` for the model call.

        Args:
            input_ids: long ``(B, Q)``.
            attention_mask: ``(B, Q)``, 1 for real tokens, 0 for padding; None = all real.
            dtype: the model's dtype, for the additive 4D mask.
        Returns:
            a 4D additive mask ``(B, 1, Q, K + Q)`` (or a 2D padding mask ``(B, K + Q)`` for policies that use
            the model's causal mask) and long ``position_ids`` ``(B, Q)``.
        """
        B, Q = input_ids.shape
        if self._state is None:
            self._state = CacheState.empty(B, input_ids.device)
        state = self._state
        if B != state.batch_size:
            raise ValueError(f"batch size changed from {state.batch_size} to {B} within one cache")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        anchor, self._run_after = mark_anchors(
            input_ids, self.anchor_ids, valid, max_segment=self.max_segment, run=state.n_run
        )
        pos = token_positions(valid, state.n_seen)  # (B, Q)
        chunk = TokenMeta(input_ids, pos, segment_ids(anchor, valid, state.n_seg), anchor, valid)
        self._pending = chunk
        if self.position_policy == "compact":
            position_ids = token_positions(valid, state.meta.valid.sum(-1))
        else:
            position_ids = pos
        keys = state.meta.cat(chunk)
        if self.policy.uses_model_causal_mask:
            return keys.valid.long(), position_ids  # (B, K + Q)
        visible = self.policy.visible(chunk, keys)  # (B, Q, K + Q)
        mask = combine(visible, chunk.pos, chunk.valid, keys.pos, keys.valid, q_offset=state.meta.n)
        return to_additive(mask, dtype), position_ids

    def evict(self) -> None:
        """Commit the chunk registered by :meth:`prepare` (now in the K/V tensors) and drop what the policy says."""
        chunk, self._pending = self._pending, None
        if chunk is None:
            raise RuntimeError("evict() called without prepare()")
        s = self._state
        s = replace(
            s,
            meta=s.meta.cat(chunk),
            n_seen=s.n_seen + chunk.valid.sum(-1),
            n_seg=s.n_seg + chunk.anchor.sum(-1),
            n_run=self._run_after,
        )
        self._state = s
        keep = self.policy.keep(s.meta, s.n_seen, s.n_seg)
        if keep is None or bool(keep.all()):
            return
        keep = keep & s.meta.valid
        counts = keep.sum(-1)  # (B,)
        M = int(counts.max())
        index = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :M]  # kept first, in order
        ok = torch.arange(M, device=keep.device)[None, :] < counts[:, None]  # (B, M)
        self._state = replace(s, meta=s.meta.gather(index, ok), n_evicted=s.n_evicted + (s.meta.valid & ~keep).sum(-1))
        for layer in self.layers:
            if getattr(layer, "keys", None) is None or layer.keys.dim() < 4:
                continue
            if index.shape[0] == 1:  # one row: a plain index_select copies rows (3x faster than gather on CPU)
                layer.keys = layer.keys.index_select(2, index[0])
                layer.values = layer.values.index_select(2, index[0])
                continue
            B, H, _, D = layer.keys.shape
            idx = index[:, None, :, None].expand(B, H, M, D)  # (B, H_kv, M, D)
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx.expand(B, layer.values.shape[1], M, layer.values.shape[3]))

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        """Append a layer's K/V ``(B, H_kv, Q, D)`` for the chunk registered by :meth:`prepare`.

        Raises:
            AnLLMError: when no chunk is registered, or the chunk has another length: a model forward that did not
                go through :meth:`prepare` would get a full (never evicted) cache without the anchor mask.
        """
        if self._pending is None:
            raise AnLLMError(_UNPREPARED)
        if key_states.shape[-2] != self._pending.token.shape[1]:
            raise AnLLMError(
                f"PolicyCache.update got {key_states.shape[-2]} tokens but prepare() registered "
                f"{self._pending.token.shape[1]}; feed the model exactly the chunk given to prepare(). {_HOW_TO_USE}"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    # -- statistics -------------------------------------------------------------------------------------------
    def n_kept(self) -> Tensor:
        """Long ``(B,)``: valid entries stored per row (the same in every layer)."""
        return self.meta.valid.sum(-1) if self._state is not None else torch.zeros(1, dtype=torch.long)

    def bytes_per_entry(self) -> int:
        """Bytes one token's K and V take across all layers."""
        total = 0
        for layer in self.layers:
            k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
            if k is None or k.dim() < 4:
                continue
            total += k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size()
        return total

    def kv_bytes(self) -> Tensor:
        """Long ``(B,)``: bytes of the valid entries held per row."""
        return self.n_kept() * self.bytes_per_entry()

    def allocated_bytes(self) -> int:
        """Bytes of the K/V tensors actually allocated (including empty slots of shorter rows)."""
        total = 0
        for layer in self.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    # -- moving the state: snapshots, copies, tensors ------------------------------------------------------------
    def _check_idle(self, doing: str) -> None:
        if self._pending is not None:
            raise AnLLMError(f"cannot {doing} a cache in the middle of a forward pass (prepare() without evict())")

    def save(self, *args, **kwargs):
        """Moved: the file format lives in :mod:`anllm.cache_io` alone (``save_cache(cache, lm, path)``)."""
        raise AnLLMError("PolicyCache.save(path, lm) moved: use anllm.cache_io.save_cache(cache, lm, path, extra)")

    def snapshot(self) -> CacheSnapshot:
        """A point :meth:`restore` returns to, in O(layers): K/V and state are replaced, never written in place."""
        self._check_idle("snapshot")
        layers = tuple((getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in self.layers)
        return CacheSnapshot(self._state, layers)

    def restore(self, snapshot: CacheSnapshot) -> None:
        """Back to a :meth:`snapshot` of this cache (which stays usable for another restore)."""
        if len(snapshot.layers) != len(self.layers):
            raise AnLLMError(f"the snapshot has {len(snapshot.layers)} layers, this cache {len(self.layers)}")
        self._pending = self._run_after = None
        self._state = snapshot.state
        for layer, (k, v) in zip(self.layers, snapshot.layers):
            layer.keys, layer.values = k, v

    def copy(self, batch_size: int | None = None) -> PolicyCache:
        """An independent copy; with ``batch_size``, a one-row cache repeated into that many rows.

        Each question continues from its own copy, so one loaded document serves many questions (or one batch).
        """
        self._check_idle("copy")
        B = self.batch_size or 1
        n = batch_size or B
        if n != B and B != 1:
            raise AnLLMError(f"only a one-row cache can be repeated into {n} rows; this one has {B}")
        rep = (lambda t: t.expand(n, *t.shape[1:]).clone()) if n != B else (lambda t: t.clone())
        out = copy.copy(self)  # same policy, anchors and settings; every tensor below is replaced by a copy
        out.layers = [copy.copy(layer) for layer in self.layers]
        if self._state is None:
            return out
        out._state = self._state.map(rep)
        for layer in out.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
                layer.keys, layer.values = rep(layer.keys), rep(layer.values)  # (n, H_kv, K, D)
        return out

    def to_tensors(self) -> dict[str, Tensor]:
        """Every tensor the cache holds, by the saved-cache names: ``meta.<field>`` ``(B, K)``, the counters
        ``(B,)``, ``layer.<i>.keys`` / ``layer.<i>.values`` ``(B, H_kv, K, D)``."""
        if self._state is None:
            raise AnLLMError("the cache is empty: feed some text before saving it")
        self._check_idle("save")
        out = self._state.to_tensors()
        for i, layer in enumerate(self.layers):
            out[f"layer.{i}.keys"] = layer.keys  # (B, H_kv, K, D)
            out[f"layer.{i}.values"] = layer.values  # (B, H_kv, K, D)
        return {k: v.detach().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(
        cls,
        config,
        tensors: dict[str, Tensor],
        policy: EvictionPolicy | None = None,
        anchor_ids: tuple[int, ...] = (),
        position_policy: Literal["true", "compact"] = "true",
        max_segment: int = 0,
    ) -> PolicyCache:
        """The inverse of :meth:`to_tensors`: a cache holding ``tensors``, ready to continue.

        Raises:
            ValueError: naming what is missing or inconsistent (a tensor, a shape, the number of layers or heads).
        """
        cache = cls(config, policy, anchor_ids, position_policy, max_segment)
        state = CacheState.from_tensors(tensors)
        B, K = state.meta.token.shape
        kv = []
        for i in range(len(cache.layers)):
            k, v = tensors.get(f"layer.{i}.keys"), tensors.get(f"layer.{i}.values")
            if k is None or v is None:
                raise ValueError(f"tensor layer.{i}.{'keys' if k is None else 'values'} is missing")
            if k.dim() != 4 or k.shape[0] != B or k.shape[2] != K or v.shape[:3] != k.shape[:3]:
                raise ValueError(f"K/V shapes {tuple(k.shape)} / {tuple(v.shape)} do not match {K} entries")
            if k.shape[1] != getattr(config, "num_key_value_heads", k.shape[1]):
                raise ValueError(f"{k.shape[1]} KV heads, the model has {config.num_key_value_heads}")
            kv.append((k, v))
        if len(tensors) != len(STATE_TENSORS) + 2 * len(cache.layers):
            raise ValueError(f"it has {len(tensors)} tensors, the model has {len(cache.layers)} layers")
        cache._state = state
        for layer, (k, v) in zip(cache.layers, kv):
            layer.update(k, v)  # lazy-initialises the layer (device, dtype) and stores (B, H_kv, K, D)
        return cache


AnchorCache = PolicyCache  # the name the paper's readers look for
