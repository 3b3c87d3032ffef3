"""The anchor attention backend for vLLM on CPU: only the kept K/V rows are stored, the AnSAN visibility applied.

Registered in place of vLLM's CPU backend (``register_backend(AttentionBackendEnum.CPU_ATTN, ...)``). K/V rows are
stored in the paged cache in a plain layout - block ``b``, kv head ``h``, row ``r``: ``cache[b, h, r, :D]`` the key,
``cache[b, h, r, D:]`` the value - written and read only by this backend, at the rows of
:mod:`anllm.serving.vllm.rows` (the kept rows first, then the step's tokens; vLLM's own slot mapping, which counts
every token, is not used). The step's queries attend in tiles over only the rows they can see, with the AnSAN mask
of those rows, batched over requests (:mod:`anllm.serving.vllm.tiles`), so chunked prefill, decode and batches mixing
both are exact (docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from anllm.serving.vllm import step as step_state
from anllm.serving.vllm import tiles
from anllm.serving.vllm.checks import check_engine_config
from anllm.serving.vllm.errors import AnchorServingError


class AnchorCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CPU_ATTN"  # the slot it fills; vLLM looks backends up by this name

    @staticmethod
    def get_impl_cls():
        return AnchorCPUAttentionImpl

    @staticmethod
    def get_builder_cls():
        return AnchorCPUMetadataBuilder


@dataclass
class AnchorCPUMetadata(CPUAttentionMetadata):
    num_reqs: int = 0
    query_start: list[int] | None = None  # (num_reqs + 1,), host ints
    rows: list[int] | None = None  # rows each request reads (kept + this step's); vLLM's seq_lens count every token
    groups: list[tiles.TileGroup] | None = None  # the step's query tiles; None only in vLLM's warm-up runs


class AnchorCPUMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        check_engine_config(vllm_config)  # also here: a run without the anchor worker is refused, not served wrong
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False) -> AnchorCPUMetadata:
        cm = common_attn_metadata
        n = cm.num_reqs
        qsl = cm.query_start_loc_cpu[: n + 1].tolist()
        seq_lens = cm.seq_lens[:n].tolist()
        step, in_step = step_state.current()
        groups, rows = None, seq_lens  # warm-up runs: nothing evicted
        if in_step:
            if step is None:
                raise AnchorServingError("an engine step ran without its anchor masks (the worker hook did not run)")
            k = len(step.seq_lens)
            if k > n or step.seq_lens != seq_lens[:k] or step.query_start != qsl[: k + 1] or qsl[k] != qsl[n]:
                raise AnchorServingError(
                    f"the step's batch ({n} requests, lengths {seq_lens}) does not match the anchor masks "
                    f"({k} requests, lengths {step.seq_lens})"
                )  # rows past num_reqs are padding with no query
            groups, rows = step.groups, step.rows + seq_lens[k:]
        return AnchorCPUMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            max_query_len=cm.max_query_len,
            query_start_loc=cm.query_start_loc,
            max_seq_len=cm.max_seq_len,
            seq_lens=cm.seq_lens,
            block_table=cm.block_table_tensor,
            slot_mapping=cm.slot_mapping,
            scheduler_metadata=None,
            causal=True,
            num_reqs=n,
            query_start=qsl,
            rows=rows,
            groups=groups,
        )


class AnchorCPUAttentionImpl(CPUAttentionBackendImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.attn_type != AttentionType.DECODER:
            raise AnchorServingError(f"attention type {self.attn_type} is not supported (decoder-only models)")
        if self.alibi_slopes is not None or self.logits_soft_cap or self.sinks is not None:
            raise AnchorServingError("ALiBi, logit soft-capping and learned sinks are not supported")

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        block_size = kv_cache.shape[2]
        step, in_step = step_state.current()
        if in_step and step is not None:
            slot_mapping = step.slots  # the rows after the kept ones (vLLM's slots count evicted tokens too)
        slots = slot_mapping[: key.shape[0]].long()
        ok = slots >= 0  # padded tokens carry -1
        if not bool(ok.all()):
            slots, key, value = slots[ok], key[: ok.shape[0]][ok], value[: ok.shape[0]][ok]
        n = slots.shape[0]
        kv = torch.cat([key[:n], value[:n]], dim=-1)  # (n, H_kv, 2D): one row each, key then value
        kv_cache[slots // block_size, :, slots % block_size] = kv.to(kv_cache.dtype)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):  # fmt: skip
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the anchor backend")
        md = attn_metadata
        if md is None:  # vLLM's warm-up
            return output
        if md.groups is not None:
            tiles.attend(md.groups, query, kv_cache, self.scale, output)
            return output
        _, h_kv, block_size, d2 = kv_cache.shape  # warm-up/profile runs only (outputs discarded): plain causal
        d = d2 // 2
        for i in range(md.num_reqs):
            qs, qe = md.query_start[i], md.query_start[i + 1]
            if qe <= qs:
                continue
            L = md.rows[i]
            n_blocks = -(-L // block_size)
            blocks = md.block_table[i, :n_blocks].long()
            rows = kv_cache.index_select(0, blocks).transpose(0, 1).reshape(h_kv, n_blocks * block_size, d2)[:, :L]
            q = query[qs:qe].transpose(0, 1)  # (H, Q, D)
            mask = torch.ones(qe - qs, L, dtype=torch.bool).tril(L - (qe - qs))
            out = F.scaled_dot_product_attention(
                q, rows[..., :d], rows[..., d:], attn_mask=mask, scale=self.scale, enable_gqa=True
            )  # (H, Q, D)
            output[qs:qe] = out.transpose(0, 1).to(output.dtype)
        return output
