"""The FlexAttention path (BlockMask from the AnSAN mask_mod) gives the same logits as the dense 4D mask."""

import pytest
import torch

from anllm.anchors import is_anchor
from anllm.masks import ansan_block_mask, ansan_mask, to_additive, token_positions
from tests.conftest import make_lm

TEXT = "The cat sat. On the mat! Was it warm? Yes it was and the day went on. " * 3


def _compare(device, dtype, atol):
    lm = make_lm(dtype=dtype)
    lm.model.to(device)
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]], device=device)
    anchor = is_anchor(ids, lm.anchor_ids)
    pos = token_positions(torch.ones_like(anchor))
    with torch.no_grad():
        dense = lm.model(input_ids=ids, attention_mask=to_additive(ansan_mask(anchor), dtype), position_ids=pos).logits
        lm.model.set_attn_implementation("flex_attention")
        flex = lm.model(input_ids=ids, attention_mask=ansan_block_mask(anchor, block_size=16), position_ids=pos).logits
    assert (flex.float() - dense.float()).abs().max() < atol


@pytest.mark.core
def test_flex_attention_matches_dense_mask_on_cpu():
    _compare("cpu", torch.float32, 1e-4)


@pytest.mark.gpu
def test_flex_attention_matches_dense_mask_on_cuda_bf16():
    _compare("cuda", torch.bfloat16, 5e-2)
