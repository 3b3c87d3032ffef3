"""The anchor worker: vLLM's CPU worker plus the per-step anchor rows (start vLLM with ``--worker-cls`` this class).

It refuses unsupported settings at start-up (:mod:`anllm.serving.vllm.checks`). Each step, right after vLLM's V1
runner has laid out the batch (``_prepare_inputs``, a private name listed in
:mod:`anllm.serving.vllm.vllm_internals`), it reads each request's token ids and blocks and computes what its queries
may see and where its rows live (:mod:`anllm.serving.vllm.step`). After the step it moves the rows the anchor cache
keeps to the front of each request's blocks and drops the blocks past them from the runner's block table - the same
blocks the anchor scheduler (:mod:`anllm.serving.vllm.scheduler`) returns to the pool (docs/serving.md).
"""

from __future__ import annotations

import torch
from vllm.v1.worker.cpu_worker import CPUWorker

from anllm.serving.vllm import step as step_state
from anllm.serving.vllm import trace
from anllm.serving.vllm.checks import check_engine_config
from anllm.serving.vllm.errors import AnchorServingError
from anllm.serving.vllm.flags import AnchorFlags
from anllm.serving.vllm.rows import blocks_for, move_rows


class AnchorCPUWorker(CPUWorker):
    def __init__(self, vllm_config, *args, **kwargs) -> None:
        self.anllm_served = check_engine_config(vllm_config)
        super().__init__(vllm_config, *args, **kwargs)

    def init_device(self) -> None:
        super().init_device()
        if getattr(self, "use_v2_model_runner", False):
            raise AnchorServingError("vLLM's Model Runner V2 is on: the CPU plugin hooks the V1 runner (unset it)")
        install_step_hook(self.model_runner, self.anllm_served)

    def execute_model(self, scheduler_output):
        step_state.begin_step()
        try:
            out = super().execute_model(scheduler_output)
            step, _ = step_state.current()
            if step is not None:
                compact(self.model_runner, step)
            return out
        finally:
            step_state.end_step()


def _block_table(runner):
    return runner.input_batch.block_table[0]  # the one KV cache group of a decoder-only model


def install_step_hook(runner, served) -> None:
    """Wrap ``runner._prepare_inputs`` (instance only) so each step's anchor rows are computed from its batch."""
    original = runner._prepare_inputs
    flags = AnchorFlags(served)

    def _prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs):
        out = original(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        batch = runner.input_batch
        n = batch.num_reqs
        table = _block_table(runner)
        req_ids = list(batch.req_ids[:n])
        step_state.set_current(
            step_state.compute_step(
                req_ids,
                batch.token_ids_cpu,
                batch.num_computed_tokens_cpu[:n],
                num_scheduled_tokens[:n],
                table.get_numpy_array(),
                table.num_blocks_per_row,
                table.block_size,
                served,
                flags,
            )  # fmt: skip
        )
        flags.retain(req_ids)  # a request back after a pause is checked, or recomputed, like any other
        return out

    runner._prepare_inputs = _prepare_inputs


def compact(runner, step: step_state.StepAnchors) -> None:
    """After a step: move the kept rows to the front in every layer, then drop each request's blocks past them."""
    if step.move_src.numel():
        seen = set()
        for kv in runner.kv_caches:  # one tensor per layer (shared tensors moved once)
            if isinstance(kv, torch.Tensor) and kv.data_ptr() not in seen:
                seen.add(kv.data_ptr())
                move_rows(kv, step.move_src, step.move_dst)
    table = _block_table(runner)
    for rid, kept, n_computed in zip(step.req_ids, step.kept, step.seq_lens):
        k = blocks_for(kept, table.block_size)
        row = runner.input_batch.req_id_to_index[rid]
        held = int(table.num_blocks_per_row[row])
        if held > k:
            table.get_numpy_array()[row, k:held] = 0
            table.num_blocks_per_row[row] = k
            del runner.requests[rid].block_ids[0][k:]
        trace.record("worker", rid, n_computed, kept, int(table.num_blocks_per_row[row]))
