"""A transformers ``DynamicCache`` that evicts entries per batch row according to an :class:`EvictionPolicy`.

Works with stock models (no forked modeling code): before each forward pass :meth:`PolicyCache.prepare` returns
the 4D ``attention_mask`` and explicit ``position_ids`` for the incoming chunk; the model appends K/V through the
usual ``update``; after the pass :meth:`PolicyCache.evict` drops what the policy no longer needs. Rows are
compacted independently, so a batch with different anchor layouts works; empty slots of shorter rows are
marked invalid and masked. A forward pass whose chunk was not registered by ``prepare`` (plain
``model.generate(past_key_values=cache)``) raises instead of silently keeping every token.
"""

from __future__ import annotations

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
        self.meta: TokenMeta | None = None  # stored entries, (B, K) each
        self.n_seen: Tensor | None = None  # long (B,): real tokens seen
        self.n_seg: Tensor | None = None  # long (B,): anchors seen
        self.n_evicted: Tensor | None = None  # long (B,): entries dropped so far
        self.n_run: Tensor | None = None  # long (B,): tokens since the last anchor (for forced anchors)
        self._pending: TokenMeta | None = None
        self._run_after: Tensor | None = None

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
        device = input_ids.device
        if self.meta is None:
            self.meta = TokenMeta.empty(B, device)
            self.n_seen = torch.zeros(B, dtype=torch.long, device=device)
            self.n_seg = torch.zeros(B, dtype=torch.long, device=device)
            self.n_evicted = torch.zeros(B, dtype=torch.long, device=device)
            self.n_run = torch.zeros(B, dtype=torch.long, device=device)
        if B != self.meta.token.shape[0]:
            raise ValueError(f"batch size changed from {self.meta.token.shape[0]} to {B} within one cache")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        anchor, self._run_after = mark_anchors(
            input_ids, self.anchor_ids, valid, max_segment=self.max_segment, run=self.n_run
        )
        pos = token_positions(valid, self.n_seen)  # (B, Q)
        chunk = TokenMeta(input_ids, pos, segment_ids(anchor, valid, self.n_seg), anchor, valid)
        self._pending = chunk
        if self.position_policy == "compact":
            position_ids = token_positions(valid, self.meta.valid.sum(-1))
        else:
            position_ids = pos
        keys = self.meta.cat(chunk)
        if self.policy.uses_model_causal_mask:
            return keys.valid.long(), position_ids  # (B, K + Q)
        visible = self.policy.visible(chunk, keys)  # (B, Q, K + Q)
        mask = combine(visible, chunk.pos, chunk.valid, keys.pos, keys.valid, q_offset=self.meta.n)
        return to_additive(mask, dtype), position_ids

    def evict(self) -> None:
        """Commit the chunk registered by :meth:`prepare` (now in the K/V tensors) and drop what the policy says."""
        chunk, self._pending = self._pending, None
        if chunk is None:
            raise RuntimeError("evict() called without prepare()")
        self.meta = self.meta.cat(chunk)
        self.n_seen = self.n_seen + chunk.valid.sum(-1)
        self.n_seg = self.n_seg + chunk.anchor.sum(-1)
        self.n_run = self._run_after
        keep = self.policy.keep(self.meta, self.n_seen, self.n_seg)
        if keep is None or bool(keep.all()):
            return
        keep = keep & self.meta.valid
        self.n_evicted = self.n_evicted + (self.meta.valid & ~keep).sum(-1)
        counts = keep.sum(-1)  # (B,)
        M = int(counts.max())
        index = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :M]  # kept first, in order
        ok = torch.arange(M, device=keep.device)[None, :] < counts[:, None]  # (B, M)
        self.meta = self.meta.gather(index, ok)
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
        return self.meta.valid.sum(-1) if self.meta is not None else torch.zeros(1, dtype=torch.long)

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

    # -- saved caches (anllm/cache_io.py) ---------------------------------------------------------------------
    def save(self, path, lm, extra: dict | None = None):
        """Write this cache to ``path`` (one safetensors file, atomic); ``lm`` is the model that computed it.

        ``lm`` is needed because the file records a fingerprint of the weights and tokenizer, which the cache does
        not hold. Load it back with :func:`anllm.cache_io.load_cache`.
        """
        from anllm.cache_io import save_cache

        return save_cache(self, lm, path, extra)

    def copy(self, batch_size: int | None = None) -> PolicyCache:
        """An independent copy (a one-row cache may be repeated into ``batch_size`` rows)."""
        from anllm.cache_io import copy_cache

        return copy_cache(self, batch_size)


AnchorCache = PolicyCache  # the name the paper's readers look for
