"""The per-step anchor context: what each request's queries may see, handed from the worker to the attention.

The worker (:mod:`anllm.serving.vllm.worker`) computes it right after vLLM's runner has laid out the step's inputs
(request order, token ids, tokens already cached, block tables); the attention metadata builder attaches it to the
step's metadata, the backend writes and reads K/V rows by it, and the worker compacts the rows after the step.
Plain module state, as vLLM's own forward context: one worker process runs one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anllm.serving.export import ServedAnchor
from anllm.serving.vllm.errors import AnchorServingError
from anllm.serving.vllm.flags import AnchorFlags
from anllm.serving.vllm.rows import blocks_for, compaction, request_rows, row_slots
from anllm.serving.vllm.tiles import TileGroup, group_tiles, request_tiles


@dataclass
class StepAnchors:
    """One engine step, requests in batch order (row ``i``): what each query sees and where each K/V row lives.

    ``seq_lens`` are vLLM's own (tokens computed + this step's), ``rows`` the rows each request reads (kept rows +
    this step's tokens), ``query_start`` where each request's queries start in the step (``num_reqs + 1`` ints);
    ``groups`` are the step's queries in tiles over the rows they see (:mod:`anllm.serving.vllm.tiles`). ``slots``
    (long, one per query token) is where the step's K/V are written; after the step the rows ``move_src`` are copied
    to ``move_dst`` (slots) and request ``i`` keeps ``kept[i]`` rows.
    """

    req_ids: list[str]
    seq_lens: list[int]
    rows: list[int]
    query_start: list[int]
    groups: list[TileGroup]
    slots: Tensor
    move_src: Tensor
    move_dst: Tensor
    kept: list[int]


_current: StepAnchors | None = None
_in_step = False


def begin_step() -> None:
    global _current, _in_step
    _current, _in_step = None, True


def end_step() -> None:
    global _current, _in_step
    _current, _in_step = None, False


def set_current(step: StepAnchors) -> None:
    global _current
    _current = step


def current() -> tuple[StepAnchors | None, bool]:
    """``(step, in_step)``: the step's anchors, and whether an engine step (not a warm-up run) is running."""
    return _current, _in_step


def compute_step(
    req_ids: list[str],
    token_ids: np.ndarray,
    n_computed: np.ndarray,
    n_scheduled: np.ndarray,
    block_rows: np.ndarray,
    n_blocks: np.ndarray,
    block_size: int,
    served: ServedAnchor,
    flags: AnchorFlags | None = None,
) -> StepAnchors:
    """One step's anchors and rows from the runner's batch (rows in batch order).

    Args:
        token_ids: int ``(max_reqs, max_len)``, each row a request's token ids (prompt then outputs).
        n_computed: tokens of each row already in the KV cache; ``n_scheduled``: this step's query tokens per row.
        block_rows: int ``(max_reqs, max_blocks)``, each request's blocks; ``n_blocks``: how many are its own.
        flags: the worker's anchor flags so far (extended here, checked against the tokens); None: from scratch.
    Raises:
        AnchorServingError: a request holds other than the blocks its kept rows need (the scheduler and the worker
            disagree: never serve on).
    """
    tiles, seq_lens, rows, kept, query_start = [], [], [], [], [0]
    slots, src, dst = [], [], []
    for i in range(len(req_ids)):
        nc, nq = int(n_computed[i]), int(n_scheduled[i])
        ids = np.ascontiguousarray(token_ids[i, : nc + nq], dtype=np.int64)
        anchor = None if flags is None else flags.flags(req_ids[i], ids)
        r = request_rows(torch.from_numpy(ids), nc, served, anchor)
        n_rows = r.n_before + nq
        if int(n_blocks[i]) != blocks_for(n_rows, block_size):
            raise AnchorServingError(
                f"request {req_ids[i]} holds {int(n_blocks[i])} blocks for {n_rows} rows of {block_size} (expected "
                f"{blocks_for(n_rows, block_size)}): the engine was not started with the anchor scheduler"
            )
        blocks = torch.from_numpy(np.ascontiguousarray(block_rows[i, : int(n_blocks[i])], dtype=np.int64))
        read = row_slots(blocks, torch.arange(n_rows), block_size)  # (n_rows,): the kept rows, then the step's
        slots.append(read[r.n_before :])
        tiles += request_tiles(query_start[-1], read, r.mask)
        s, d = compaction(r.keep)
        src.append(read[s])
        dst.append(read[d])
        seq_lens.append(nc + nq)
        rows.append(n_rows)
        query_start.append(query_start[-1] + nq)
        kept.append(int(r.keep.shape[0]))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    groups = group_tiles(tiles, block_size)
    return StepAnchors(list(req_ids), seq_lens, rows, query_start, groups, cat(slots), cat(src), cat(dst), kept)
