"""The anchor worker: vLLM's CPU worker plus the per-step anchor masks (start vLLM with ``--worker-cls`` this class).

It refuses unsupported settings at start-up (:mod:`anllm.serving.vllm.checks`), then, each step, right after vLLM's
V1 runner has laid out the batch (``_prepare_inputs``, a private name listed in
:mod:`anllm.serving.vllm.vllm_internals`), reads each request's token ids and computes what its queries may see.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker

from anllm.serving.vllm import step as step_state
from anllm.serving.vllm.checks import check_engine_config
from anllm.serving.vllm.errors import AnchorServingError


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
            return super().execute_model(scheduler_output)
        finally:
            step_state.end_step()


def install_step_hook(runner, served) -> None:
    """Wrap ``runner._prepare_inputs`` (instance only) so each step's anchor masks are computed from its batch."""
    original = runner._prepare_inputs

    def _prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs):
        out = original(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        batch = runner.input_batch
        n = batch.num_reqs
        step_state.set_current(
            step_state.compute_step(
                list(batch.req_ids[:n]),
                batch.token_ids_cpu,
                batch.num_computed_tokens_cpu[:n],
                num_scheduled_tokens[:n],
                served,
            )  # fmt: skip
        )
        return out

    runner._prepare_inputs = _prepare_inputs
