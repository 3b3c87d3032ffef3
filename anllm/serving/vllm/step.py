"""The per-step anchor context: what each request's queries may see, handed from the worker to the attention.

The worker (:mod:`anllm.serving.vllm.worker`) computes it right after vLLM's runner has laid out the step's inputs
(request order, token ids, tokens already cached) and the attention metadata builder attaches it to the step's
metadata. Plain module state, as vLLM's own forward context: one worker process runs one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anllm.serving.export import ServedAnchor
from anllm.serving.vllm.visibility import request_visibility


@dataclass
class StepAnchors:
    """One engine step: for request row ``i`` of the batch, ``masks[i]`` is bool ``(Q_i, L_i)``."""

    req_ids: list[str]
    n_computed: list[int]
    seq_lens: list[int]
    masks: list[Tensor]


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
    req_ids: list[str], token_ids: np.ndarray, n_computed: np.ndarray, n_scheduled: np.ndarray, served: ServedAnchor
) -> StepAnchors:
    """Masks of one step from the runner's batch (rows in batch order).

    Args:
        token_ids: int ``(max_reqs, max_len)``, each row a request's token ids (prompt then outputs).
        n_computed: tokens of each row already in the KV cache; ``n_scheduled``: this step's query tokens per row.
    """
    masks, seq_lens, done = [], [], []
    for i in range(len(req_ids)):
        nc, nq = int(n_computed[i]), int(n_scheduled[i])
        L = nc + nq
        tokens = torch.from_numpy(np.ascontiguousarray(token_ids[i, :L], dtype=np.int64))
        masks.append(request_visibility(tokens, nc, served))
        seq_lens.append(L)
        done.append(nc)
    return StepAnchors(list(req_ids), done, seq_lens, masks)
