"""The anchor scheduler: vLLM's scheduler, sizing each request's blocks by the rows its anchor cache keeps.

vLLM's KV cache manager gives a request ``ceil((computed + new) / block_size)`` blocks: every token ever seen holds a
row. With the plugin a request holds only its kept rows (:func:`anllm.serving.vllm.visibility.kept_counts`) plus
the step's new tokens, so this scheduler (``--scheduler-cls`` this class):

* asks the manager for blocks as if the request had computed only its kept rows (the manager's own arithmetic,
  watermark and admission included, then applies to rows, not tokens);
* after each step returns the blocks past a request's kept rows to vLLM's pool - the worker has moved those rows to
  the front (:mod:`anllm.serving.vllm.worker`) and drops the same blocks from its block table;
* admits a waiting request when the peak of its rows over the prompt fits (vLLM's default asks the whole prompt to
  fit, which an anchor cache never holds).

Everything here is a function of each request's token ids, so preemption (recompute from token 0) and aborts need no
extra state. The private names used are listed in :mod:`anllm.serving.vllm.vllm_internals`.
"""

from __future__ import annotations

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from anllm.serving.vllm import trace
from anllm.serving.vllm.checks import check_engine_config
from anllm.serving.vllm.rows import KeptRows, blocks_for


class _InRows:
    """A request as the KV cache manager should see it: ``num_computed_tokens`` rows held, ``num_tokens`` rows at
    most (every other attribute is the request's own)."""

    def __init__(self, request, num_computed_tokens: int, num_tokens: int) -> None:
        self._request = request
        self.num_computed_tokens = num_computed_tokens
        self.num_tokens = num_tokens

    def __getattr__(self, name):
        return getattr(self._request, name)


class AnchorScheduler(Scheduler):
    def __init__(self, vllm_config, *args, **kwargs) -> None:
        self.anllm_served = check_engine_config(vllm_config)
        super().__init__(vllm_config, *args, **kwargs)
        self.anllm_rows = KeptRows(self.anllm_served)
        self.anllm_chunk = int(vllm_config.scheduler_config.max_num_batched_tokens)
        manager = self.kv_cache_manager
        original = manager.allocate_slots

        def allocate_slots(request, num_new_tokens, *args, full_sequence_must_fit: bool = False, **kwargs):
            nc = request.num_computed_tokens
            held = self.anllm_rows.kept(request, nc)
            self._free_past(request.request_id, held)
            if full_sequence_must_fit:  # admission: the request's peak rows over the prompt must fit
                most = self.anllm_rows.peak(request, nc, self.anllm_chunk)
            else:
                most = held + request.num_tokens - nc
            view = _InRows(request, held, most)
            return original(view, num_new_tokens, *args, full_sequence_must_fit=full_sequence_must_fit, **kwargs)

        manager.allocate_slots = allocate_slots

    def _manager(self):
        return self.kv_cache_manager.coordinator.single_type_managers[0]  # the one full-attention group

    def _free_past(self, req_id: str, rows: int) -> None:
        """Return the blocks of ``req_id`` past its first ``rows`` rows to the pool (tail first, as vLLM frees)."""
        manager = self._manager()
        blocks = manager.req_to_blocks.get(req_id)
        k = blocks_for(rows, self.block_size)
        if blocks and len(blocks) > k:
            tail = blocks[k:]
            del blocks[k:]
            manager.block_pool.free_blocks(reversed(tail))

    def update_from_output(self, scheduler_output, model_runner_output):
        out = super().update_from_output(scheduler_output, model_runner_output)
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue
            kept = self.anllm_rows.kept(request, request.num_computed_tokens)
            self._free_past(req_id, kept)
            held = len(self._manager().req_to_blocks.get(req_id, ()))
            trace.record("scheduler", req_id, request.num_computed_tokens, kept, held)
        self.anllm_rows.retain(self.requests)  # finished and aborted requests leave no counts behind
        return out
