"""Losses of one training micro-batch under the AnSAN mask (arXiv 2402.07616 §4.2; docs/training.md).

* :func:`anchor_attention` builds the mask of a batch: a dense 4D mask (SDPA) or a FlexAttention ``BlockMask``;
* :func:`token_nll` and :func:`token_kl` are summed next-token losses (normalised by the loop, not here);
* :func:`micro_batch_loss` computes the LM loss and/or the KL distillation loss against the model's own
  full-attention predictions (teacher = adapters disabled for LoRA, a frozen copy for full fine-tuning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from anllm.anchors import mark_anchors
from anllm.masks import ansan_block_mask, ansan_mask, to_additive, token_positions
from anllm.train.config import TrainConfig
from anllm.train.data import IGNORE_INDEX


def anchor_attention(
    input_ids: Tensor, attention_mask: Tensor, anchor_ids, rule: dict, *, path: str, dtype=None, max_segment: int = 0
):
    """The AnSAN attention of a right-padded batch.

    Args:
        input_ids: long ``(B, T)``; attention_mask: ``(B, T)``, 1 = real token.
        max_segment: forced anchors after this many tokens without one (0 = off), as the anchor cache does.
        path: ``"dense"`` (4D mask, any backend honouring it) or ``"flex"`` (``BlockMask``, FlexAttention on GPU).
        dtype: ``None`` for a bool mask (SDPA, any autocast dtype), else the dtype of an additive mask (eager).
    Returns:
        (mask, position_ids): bool/float ``(B, 1, T, T)`` or a ``BlockMask``; long ``(B, T)`` true positions.
    """
    valid = attention_mask.bool()
    anchor, _ = mark_anchors(input_ids, anchor_ids, valid, max_segment=max_segment)
    if path == "flex":
        mask = ansan_block_mask(anchor, valid, **rule)
    else:
        mask = ansan_mask(anchor, valid, **rule)  # (B, 1, T, T) bool
        mask = mask if dtype is None else to_additive(mask, dtype)
    return mask, token_positions(valid)


def token_nll(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Summed next-token negative log-likelihood: logits ``(B, T, V)``, labels ``(B, T)`` -> scalar.

    ``weights`` ``(B, T)`` scales the loss of predicting each label (None = 1).
    """
    nll = F.cross_entropy(
        _wide(logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B * (T-1),)
    return nll.sum() if weights is None else (nll * weights[:, 1:].flatten().to(nll.dtype)).sum()


def _wide(x: Tensor) -> Tensor:
    """At least float32 (bf16 logits are upcast; float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def token_kl(
    student: Tensor, teacher: Tensor, labels: Tensor, temperature: float = 1.0, weights: Tensor | None = None
) -> Tensor:
    """Summed KL(teacher || student) over the positions that predict a label, times ``temperature**2``.

    Args:
        student, teacher: logits ``(B, T, V)``; labels: long ``(B, T)``; weights: ``(B, T)`` per predicted label.
    """
    keep = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    s = F.log_softmax(_wide(student[:, :-1][keep]) / temperature, -1)  # (N, V)
    t = F.log_softmax(_wide(teacher[:, :-1][keep]) / temperature, -1)
    per_token = (t.exp() * (t - s)).sum(-1)  # (N,)
    if weights is not None:
        per_token = per_token * weights[:, 1:][keep].to(per_token.dtype)
    return per_token.sum() * temperature**2


def micro_batch_loss(model, batch: dict[str, Tensor], anchor_ids, cfg: TrainConfig, *, teacher=None, path="dense"):
    """Summed losses of one micro-batch under the AnSAN mask.

    Args:
        batch: ``input_ids``, ``labels``, ``attention_mask``, each ``(B, T)``, on the model's device.
        teacher: callable ``(input_ids, attention_mask, position_ids) -> logits`` with full attention (KL losses).
    Returns:
        (objective, parts): the scalar to minimise (a sum over predicted tokens, not a mean) and its detached
        summed parts ``nll``, ``kl`` and ``kl_full`` (the student under full attention, when
        ``cfg.loss.full_kl_weight > 0``).
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    mask, pos = anchor_attention(ids, attn, anchor_ids, cfg.mask_rule(), path=path, max_segment=cfg.anchor.max_segment)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (B, T, V)
    w = batch.get("weights")  # (B, T) or None
    nll = token_nll(logits, batch["labels"], w)
    zero = torch.zeros((), device=logits.device)
    kl = kl_full = target_nll = zero
    if cfg.loss.needs_teacher:
        with torch.no_grad():
            t_logits = teacher(ids, attn, pos)
        if cfg.loss.kind != "lm":
            kl = token_kl(logits, t_logits, batch["labels"], cfg.loss.kl_temperature, w)
        if cfg.loss.full_kl_weight > 0:  # keep the model's own full-attention behaviour while it learns anchors
            full = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
            kl_full = token_kl(full, t_logits, batch["labels"], cfg.loss.kl_temperature, w)
    if cfg.loss.target_lm_weight > 0 and "targets" in batch:  # ground truth on marked tokens (a memory item's answer)
        target_nll = token_nll(logits, batch["labels"], batch["targets"].float())
    objective = {"lm": nll, "kl": kl, "lm+kl": nll + cfg.loss.kl_weight * kl}[cfg.loss.kind]
    objective = objective + cfg.loss.full_kl_weight * kl_full + cfg.loss.target_lm_weight * target_nll
    return objective, {"nll": nll.detach(), "kl": kl.detach(), "kl_full": kl_full.detach()}
