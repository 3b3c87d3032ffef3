"""A step's anchor attention as a few batched calls over only the keys each query can see (pure torch, no vLLM).

A request's queries see few of its rows under the AnSAN rule (arXiv 2402.07616 §3.2): sinks, earlier anchors, their
own open sentence and the window. So each request's queries are cut into tiles of :data:`TILE` consecutive queries;
a tile keeps only the rows at least one of its queries sees (the columns of its mask that are not all False), which
leaves the softmax of every query unchanged: a dropped column is masked for every query of the tile. A decode query
is a tile of one. Tiles of one size are padded (queries repeat a real one and are not written back, keys point at
slot 0 and are masked) and attended in one SDPA call per size, for all requests of the step at once
(docs/serving.md "Benchmark").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TILE = 64  # queries per prefill tile: a tile reads its band (TILE + window + open sentence) beside the anchors


@dataclass
class TileGroup:
    """Tiles of ``T`` queries attended in one call: ``N`` tiles, ``C`` key columns each (padded)."""

    q_idx: Tensor  # long (N, T): each query's token index in the step (padding repeats a real query)
    q_valid: Tensor  # bool (N, T): False on padded queries (not written back)
    block: Tensor  # long (N, C): the cache block of each key column
    offset: Tensor  # long (N, C): its row in the block
    mask: Tensor  # bool (N, 1, T, C): may query t see column c (False on padded columns)

    def to(self, device: torch.device | str) -> TileGroup:
        """The same tiles on ``device`` (built on the host; a GPU runner moves a step's groups once, not per layer)."""
        return TileGroup(*(t.to(device, non_blocking=True) for t in (self.q_idx, self.q_valid, self.block,
                                                                       self.offset, self.mask)))  # fmt: skip


def request_tiles(q_start: int, slots: Tensor, mask: Tensor, tile: int = TILE) -> list[tuple[Tensor, Tensor, Tensor]]:
    """One request's tiles: ``(q_idx (t,), key slots (c,), mask (t, c))`` each, keeping only the visible columns.

    Args:
        q_start: the step token index of the request's first query.
        slots: long ``(L,)``, the cache slot of each row the request reads.
        mask: bool ``(Q, L)``, may query ``i`` see row ``j``.
    """
    Q = mask.shape[0]
    size = 1 if Q == 1 else tile
    out = []
    for t0 in range(0, Q, size):
        m = mask[t0 : t0 + size]  # (t, L)
        cols = m.any(0).nonzero()[:, 0]  # (c,): rows some query of the tile sees
        q_idx = torch.arange(q_start + t0, q_start + t0 + m.shape[0])
        out.append((q_idx, slots[cols], m[:, cols]))
    return out


def group_tiles(tiles: list[tuple[Tensor, Tensor, Tensor]], block_size: int) -> list[TileGroup]:
    """Pad tiles of the same query count (1 or :data:`TILE`; a shorter last tile joins the full ones) into groups."""
    by_size: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
    for t in tiles:
        by_size.setdefault(1 if t[0].shape[0] == 1 else TILE, []).append(t)
    groups = []
    for T, ts in sorted(by_size.items()):
        N, C = len(ts), max(t[1].shape[0] for t in ts)
        q_idx = torch.zeros(N, T, dtype=torch.long)
        q_valid = torch.zeros(N, T, dtype=torch.bool)
        slots = torch.zeros(N, C, dtype=torch.long)  # padding reads slot 0 (a real row), masked out
        mask = torch.zeros(N, T, C, dtype=torch.bool)
        for n, (qi, s, m) in enumerate(ts):
            t, c = m.shape
            q_idx[n, :t], q_idx[n, t:] = qi, qi[-1]
            q_valid[n, :t] = True
            slots[n, :c] = s
            mask[n, :t, :c] = m
            mask[n, t:, :c] = m[-1]  # a padded query repeats the last real one (never an empty softmax)
        groups.append(TileGroup(q_idx, q_valid, slots // block_size, slots % block_size, mask[:, None]))
    return groups


def attend(groups: list[TileGroup], query: Tensor, kv_cache: Tensor, scale: float, output: Tensor) -> None:
    """Write each tile's attention into ``output``.

    Args:
        query: ``(num_tokens, H, D)``; ``output``: the same shape, written at the tiles' queries.
        kv_cache: ``(num_blocks, H_kv, block_size, 2D)``, row ``r`` of block ``b``: ``[:D]`` key, ``[D:]`` value.
    """
    _, h_kv, block_size, d2 = kv_cache.shape
    rows = kv_cache.view(-1, d2)  # (num_blocks * H_kv * block_size, 2D): one row per (block, head, offset)
    heads = torch.arange(h_kv, device=kv_cache.device)[None, :, None]  # (1, H_kv, 1)
    for g in groups:
        if g.mask.device != kv_cache.device:  # tiles are built on the host: follow the cache's device
            g = g.to(kv_cache.device)
        idx = (g.block[:, None] * h_kv + heads) * block_size + g.offset[:, None]  # (N, H_kv, C)
        kv = rows.index_select(0, idx.flatten()).view(*idx.shape, d2)  # (N, H_kv, C, 2D)
        q = query[g.q_idx].transpose(1, 2)  # (N, H, T, D)
        out = F.scaled_dot_product_attention(
            q, kv[..., : d2 // 2], kv[..., d2 // 2 :], attn_mask=g.mask, scale=scale, enable_gqa=True
        )  # (N, H, T, D)
        output[g.q_idx[g.q_valid]] = out.transpose(1, 2)[g.q_valid].to(output.dtype)  # (valid, H, D)
