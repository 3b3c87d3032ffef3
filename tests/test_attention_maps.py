import pytest
import torch

from anllm.anchors import is_anchor
from anllm.attention_maps import attention_maps, attention_mass, blocked_by_ansan
from anllm.config import AnLLMError
from anllm.masks import ansan_mask
from anllm.plots import attention_figure
from tests.conftest import make_lm

TEXT = "Ab cd. Ef gh! Ij kl? Mn"


def _ids_and_anchor(lm):
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    return ids, is_anchor(ids, lm.anchor_ids)


def test_causal_maps_are_probabilities_and_causal():
    lm = make_lm()
    ids, _ = _ids_and_anchor(lm)
    maps = attention_maps(lm.model, ids)
    L, H, T = lm.model.config.num_hidden_layers, lm.model.config.num_attention_heads, ids.shape[1]
    assert maps.shape == (L, H, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(L, H, T), atol=1e-5, rtol=0)
    future = ~torch.tril(torch.ones(T, T, dtype=torch.bool))
    assert float(maps[..., future].abs().max()) == 0.0


def test_masked_maps_respect_ansan_and_restore_attention_implementation():
    lm = make_lm()
    ids, anchor = _ids_and_anchor(lm)
    assert int(anchor.sum()) == 3
    before = lm.model.config._attn_implementation
    maps = attention_maps(lm.model, ids, anchor)
    assert lm.model.config._attn_implementation == before
    allowed = ansan_mask(anchor)[0, 0]
    assert float(maps[..., ~allowed].abs().max()) == 0.0
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)
    # the masked pass differs from the causal one: AnSAN changes what later sentences see
    assert float((maps - attention_maps(lm.model, ids)).abs().max()) > 1e-3


def test_rule_options_reach_the_mask():
    lm = make_lm()
    ids, anchor = _ids_and_anchor(lm)
    maps = attention_maps(lm.model, ids, anchor, n_sink=1)
    T = ids.shape[1]
    assert float(maps[..., 1:, 0].min()) > 0.0  # every query sees the sink token
    blocked = blocked_by_ansan(anchor, n_sink=1)
    assert not bool(blocked[:, 0].any())
    assert blocked.shape == (T, T)


def test_blocked_by_ansan_is_causal_minus_allowed():
    anchor = torch.tensor([[False, True, False, False, True, False]])
    blocked = blocked_by_ansan(anchor)
    # token 2 (sentence 2) may not see token 0 (a non-anchor of sentence 1) but sees anchor 1
    assert bool(blocked[2, 0]) and not bool(blocked[2, 1])
    # anchor 4 may not see the earlier anchor 1; nothing in the future is "blocked" (it is not causal)
    assert bool(blocked[4, 1]) and not bool(blocked[0, 1])
    # sentence 2 (tokens 2-4) loses token 0; anchor 4 also loses anchor 1; token 5 (sentence 3) sees only
    # anchors 1 and 4 and itself
    expected = {(2, 0), (3, 0), (4, 0), (4, 1), (5, 0), (5, 2), (5, 3)}
    assert {tuple(p) for p in blocked.nonzero().tolist()} == expected


def test_attention_mass_selects_keys_and_queries():
    maps = torch.zeros(2, 1, 3, 3)
    maps[:, :, 0, 0] = 1.0
    maps[:, :, 1, :2] = torch.tensor([0.25, 0.75])
    maps[:, :, 2] = torch.tensor([0.5, 0.25, 0.25])
    mass = attention_mass(maps, torch.tensor([True, False, False]))
    torch.testing.assert_close(mass, torch.full((2,), (1.0 + 0.25 + 0.5) / 3))
    q = torch.tensor([False, True, True])
    torch.testing.assert_close(attention_mass(maps, torch.tensor([True, False, False]), q), torch.full((2,), 0.375))
    assert attention_mass(maps, torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0]
    with pytest.raises(AnLLMError):
        attention_mass(maps, torch.ones(2, 2, dtype=torch.bool))


def test_bad_inputs_are_named():
    lm = make_lm()
    with pytest.raises(AnLLMError, match="one sequence"):
        attention_maps(lm.model, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(AnLLMError, match="do not match"):
        attention_maps(lm.model, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))


def test_attention_figure_has_title_axes_and_panels():
    z = torch.rand(4, 4)
    fig = attention_figure({"full": z, "AnSAN": z}, ["a", "b", ".", "c"], [False, False, True, False], title="maps")
    assert fig.layout.title.text == "maps"
    assert len(fig.data) == 2
    assert fig.layout.xaxis.title.text == "key token (index)"
    assert fig.layout.yaxis.title.text == "query token (index)"
    assert "⚓" in fig.layout.xaxis.ticktext[2]
    with pytest.raises(AnLLMError):
        attention_figure({}, [], [])
