"""Milestone 2: where a request's K/V rows live in its blocks, and how they are compacted (pure torch, no vLLM).

vLLM gives each request a list of blocks of ``block_size`` rows. With the plugin, a request's rows hold only what the
anchor cache keeps (:func:`anllm.serving.vllm.visibility.kept_mask`), in position order: row ``r`` lives in block
``blocks[r // block_size]`` at offset ``r % block_size``. A step appends its new tokens after the kept rows, attends
over all of them with the AnSAN visibility, then moves the rows the cache still keeps to the front, so the request
needs only ``ceil(kept / block_size)`` blocks and the rest go back to vLLM's pool (docs/serving.md).

Keys are stored after RoPE at their true positions, so a moved row needs no re-rotation; positions keep counting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anllm.masks import ansan_visible, segment_ids
from anllm.serving.export import ServedAnchor
from anllm.serving.vllm.flags import AnchorFlags
from anllm.serving.vllm.visibility import anchor_flags, kept_counts, kept_mask


@dataclass
class RequestRows:
    """One request in one engine step, in rows of its blocks."""

    n_before: int  # rows held before the step (what the cache kept after the tokens already computed)
    key_pos: Tensor  # long (n_before + Q,): the token position each row holds this step
    mask: Tensor  # bool (Q, n_before + Q): may query i see row j
    keep: Tensor  # long (kept,): rows still held after the step, ascending (they move to rows 0..kept-1)


def request_rows(tokens: Tensor, n_computed: int, served: ServedAnchor, anchor: Tensor | None = None) -> RequestRows:
    """The rows of a request for a step whose queries are tokens ``n_computed ..`` of ``tokens`` (long ``(L,)``);
    ``anchor``: their flags (bool ``(L,)``) if already known."""
    L = tokens.shape[0]
    anchor = anchor_flags(tokens, served) if anchor is None else anchor  # (L,)
    seg = segment_ids(anchor[None])[0]  # (L,)
    before = kept_mask(anchor, n_computed, served).nonzero()[:, 0]  # (P,)
    q_pos = torch.arange(n_computed, L, device=tokens.device)  # (Q,)
    key_pos = torch.cat([before, q_pos])  # (P + Q,)
    mask = ansan_visible(
        q_pos[:, None], seg[q_pos, None], anchor[q_pos, None], key_pos[None], seg[key_pos][None], anchor[key_pos][None],
        anchors_see_anchors=served.anchors_see_anchors, n_sink=served.n_sink, window=served.window,
    ) & (key_pos[None] <= q_pos[:, None])  # fmt: skip
    keep = kept_mask(anchor, L, served)[key_pos].nonzero()[:, 0]  # (kept,): a subset of the rows (eviction is final)
    return RequestRows(int(before.shape[0]), key_pos, mask, keep)


def row_slots(blocks: Tensor, rows: Tensor, block_size: int) -> Tensor:
    """Long ``(n,)``: the cache slot (``block * block_size + offset``) of each row of a request with ``blocks``."""
    return blocks.long()[rows // block_size] * block_size + rows % block_size


def blocks_for(rows: int, block_size: int) -> int:
    """Blocks that hold ``rows`` rows."""
    return -(-rows // block_size)


def compaction(keep: Tensor) -> tuple[Tensor, Tensor]:
    """``(src, dst)`` rows to move so the kept rows ``keep`` (ascending) become rows ``0..kept-1``; rows in place
    are left out. ``dst < src`` everywhere, so a gather-then-scatter never reads a row it already overwrote."""
    dst = torch.arange(keep.shape[0], device=keep.device)
    moved = keep != dst
    return keep[moved], dst[moved]


def move_rows(kv_cache: Tensor, src: Tensor, dst: Tensor) -> None:
    """Copy slots ``src`` to ``dst`` (long ``(n,)``) in one layer's cache ``(num_blocks, H_kv, block_size, 2D)``."""
    block_size = kv_cache.shape[2]
    rows = kv_cache[src // block_size, :, src % block_size]  # (n, H_kv, 2D): a copy, read before any write
    kv_cache[dst // block_size, :, dst % block_size] = rows


class KeptRows:
    """Per request: how many rows the anchor cache holds after each prefix of its tokens (cached by length; the
    anchor flags behind them are extended as tokens arrive, :class:`anllm.serving.vllm.flags.AnchorFlags`)."""

    def __init__(self, served: ServedAnchor) -> None:
        self.served = served
        self._counts: dict[str, torch.Tensor] = {}
        self._flags = AnchorFlags(served)

    def counts(self, request) -> torch.Tensor:
        """Long ``(num_tokens + 1,)``: rows kept after each prefix of the request's tokens."""
        c = self._counts.get(request.request_id)
        if c is None or c.shape[0] != request.num_tokens + 1:
            ids = np.fromiter(request.all_token_ids, dtype=np.int64, count=request.num_tokens)  # (num_tokens,)
            c = kept_counts(self._flags.flags(request.request_id, ids), self.served)
            self._counts[request.request_id] = c
        return c

    def kept(self, request, n: int) -> int:
        return int(self.counts(request)[n])

    def peak(self, request, n: int, chunk: int) -> int:
        """Most rows the request can hold while computing its tokens from ``n`` on in steps of at most ``chunk``."""
        c = self.counts(request)
        b = torch.arange(n, c.shape[0] - 1)  # prefixes a step can start from
        if b.numel() == 0:
            return int(c[n])
        return int((c[b] + (c.shape[0] - 1 - b).clamp(max=chunk)).max())

    def retain(self, req_ids) -> None:
        """Drop the counts of requests not in ``req_ids`` (finished or aborted)."""
        for r in set(self._counts) - set(req_ids):
            del self._counts[r]
        self._flags.retain(req_ids)
