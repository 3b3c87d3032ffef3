import pytest
import torch

from anllm.masks import ansan_mask, ansan_mask_mod, segment_ids, to_additive, token_positions
from tests.reference import official_mask

pytestmark = pytest.mark.core
ANCHOR_IDS = {7, 11}


def random_batch(seed, B=3, T=23, p_anchor=0.2, pad="left"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(12, 40, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < p_anchor] = 7
    ids[torch.rand(B, T, generator=g) < p_anchor / 2] = 11
    valid = torch.ones(B, T, dtype=torch.bool)
    for b in range(1, B):
        n_pad = int(torch.randint(0, T // 2, (1,), generator=g))
        if pad == "left":
            valid[b, :n_pad] = False
        else:
            valid[b, T - n_pad :] = False
    return ids, valid


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("pad", ["left", "right"])
@pytest.mark.parametrize(
    "rule", [{}, {"anchors_see_anchors": True}, {"n_sink": 2}, {"window": 4}, {"n_sink": 1, "window": 3}]
)
def test_vectorised_mask_equals_brute_force(seed, pad, rule):
    ids, valid = random_batch(seed, pad=pad)
    anchor = torch.isin(ids, torch.tensor(sorted(ANCHOR_IDS)))
    got = ansan_mask(anchor, valid.long(), **rule)
    want = official_mask(ids, ANCHOR_IDS, valid=valid, **rule)
    assert got.dtype == torch.bool and got.shape == (3, 1, 23, 23)
    assert torch.equal(got, want)


def test_closed_form_table_of_method_md():
    # tokens: a b . c d . e   (anchors at 2 and 5)
    anchor = torch.tensor([[0, 0, 1, 0, 0, 1, 0]], dtype=torch.bool)
    m = ansan_mask(anchor)[0, 0]
    assert m[6].nonzero().flatten().tolist() == [2, 5, 6]  # trailing token: earlier anchors + own segment
    assert m[5].nonzero().flatten().tolist() == [3, 4, 5]  # anchor: own segment only
    assert m[4].nonzero().flatten().tolist() == [2, 3, 4]  # non-anchor: earlier anchor + own segment
    assert m[1].nonzero().flatten().tolist() == [0, 1]  # before any anchor: causal


@pytest.mark.parametrize("seed", range(5))
def test_invariants(seed):
    ids, valid = random_batch(seed)
    anchor = torch.isin(ids, torch.tensor(sorted(ANCHOR_IDS)))
    m = ansan_mask(anchor, valid.long())[:, 0]
    T = ids.shape[1]
    assert not (m & ~torch.tril(torch.ones(T, T, dtype=torch.bool))).any(), "mask must be causal"
    assert m.any(-1).all(), "no row may be fully masked"
    assert m.diagonal(dim1=-2, dim2=-1).all(), "every token sees itself"
    no_anchor = ansan_mask(torch.zeros_like(anchor))[:, 0]
    assert torch.equal(no_anchor, torch.tril(torch.ones(3, T, T, dtype=torch.bool)))


def test_segment_ids_and_positions():
    anchor = torch.tensor([[False, True, False, True, False]])
    assert segment_ids(anchor).tolist() == [[0, 0, 1, 1, 2]]
    valid = torch.tensor([[False, False, True, True, True]])
    assert token_positions(valid)[valid].tolist() == [0, 1, 2]  # padding positions are irrelevant (masked)
    assert token_positions(valid, torch.tensor([5]))[valid].tolist() == [5, 6, 7]


def test_additive_mask_has_no_nan_in_sdpa():
    anchor = torch.tensor([[0, 1, 0, 0, 1, 0]], dtype=torch.bool).repeat(2, 1)
    valid = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    bias = to_additive(ansan_mask(anchor, valid), torch.float32)
    q = torch.randn(2, 3, 6, 8)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias)
    assert torch.isfinite(out).all()
    assert bias.dtype == torch.float32 and bias.max() == 0 and bias.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("rule", [{}, {"anchors_see_anchors": True, "n_sink": 2, "window": 3}])
def test_flex_mask_mod_equals_dense(rule):
    ids, valid = random_batch(3, pad="left")
    anchor = torch.isin(ids, torch.tensor(sorted(ANCHOR_IDS)))
    mod = ansan_mask_mod(anchor, valid.long(), **rule)
    B, T = ids.shape
    b = torch.arange(B)[:, None, None]
    q = torch.arange(T)[None, :, None]
    kv = torch.arange(T)[None, None, :]
    got = mod(b, 0, q, kv)
    assert torch.equal(got, ansan_mask(anchor, valid.long(), **rule)[:, 0])
