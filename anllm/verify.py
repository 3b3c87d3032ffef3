"""Exactness check: anchor-cache decoding (step by step and chunked) against one AnSAN-masked forward pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from anllm.anchors import insert_ac, mark_anchors
from anllm.cache import PolicyCache
from anllm.config import AnLLMError
from anllm.generation import check_fits, forward_chunk, make_cache
from anllm.masks import ansan_mask, to_additive, token_positions
from anllm.models import LoadedModel
from anllm.policies import AnchorPolicy

TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    max_abs_diff: float  # worst |logit difference| over both decodings and every position
    step_diff: float  # token-by-token decoding vs the masked pass
    chunk_diff: float  # chunked decoding vs the masked pass
    tokens: int
    anchors: int
    kv_kept: int  # entries stored after the text
    chunk_size: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def masked_forward(model, input_ids: Tensor, anchor: Tensor, attention_mask: Tensor | None = None, **rule) -> Tensor:
    """Logits ``(B, T, V)`` of one forward pass under the AnSAN mask (true positions)."""
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    mask = to_additive(ansan_mask(anchor, valid, **rule), model.dtype)  # (B, 1, T, T)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=token_positions(valid)).logits


def decode_logits(
    lm: LoadedModel, input_ids: Tensor, attention_mask: Tensor | None, chunk_size: int, policy
) -> tuple[Tensor, PolicyCache]:
    """Feed ``input_ids`` through a policy cache ``chunk_size`` tokens at a time.

    Returns:
        the logits ``(B, T, V)`` and the cache, holding what the policy kept at the end.
    """
    cache = make_cache(lm, policy)
    outs = []
    for s in range(0, input_ids.shape[1], chunk_size):
        am = None if attention_mask is None else attention_mask[:, s : s + chunk_size]
        outs.append(forward_chunk(lm.model, cache, input_ids[:, s : s + chunk_size], am))
    return torch.cat(outs, 1), cache


def verify_text(lm: LoadedModel, text: str, *, chunk_size: int = 64) -> VerifyReport:
    """Decode ``text`` through the anchor cache token by token and in chunks; compare with one masked pass."""
    if not text.strip():
        raise AnLLMError("the text to verify is empty")
    if lm.anchor.position_policy != "true":
        raise AnLLMError("exactness holds only under position_policy='true'; 'compact' matches no single pass")
    if lm.anchor.kind == "ac":
        text = insert_ac(text)
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]], device=next(lm.model.parameters()).device)
    check_fits(lm, ids.shape[1], "the text has", "verify a shorter text")
    policy = AnchorPolicy.from_config(lm.anchor)
    rule = dict(anchors_see_anchors=policy.anchors_see_anchors, n_sink=policy.n_sink, window=policy.window)
    anchor, _ = mark_anchors(ids, lm.anchor_ids, max_segment=lm.anchor.max_segment)
    with torch.inference_mode():
        ref = masked_forward(lm.model, ids, anchor, **rule).double()
        step, _ = decode_logits(lm, ids, None, 1, policy)
        chunked, cache = decode_logits(lm, ids, None, chunk_size, policy)
    step_diff = float((step.double() - ref).abs().max())
    chunk_diff = float((chunked.double() - ref).abs().max())
    return VerifyReport(
        max(step_diff, chunk_diff),
        step_diff,
        chunk_diff,
        ids.shape[1],
        int(anchor.sum()),
        int(cache.n_kept()[0]),
        chunk_size,
    )
