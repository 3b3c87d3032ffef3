"""The anchor cache is exact: decoding through it equals one AnSAN-masked forward pass (float64)."""

import pytest
import torch
from transformers import DynamicCache

from anllm.anchors import insert_ac, mark_anchors
from anllm.generation import forward_chunk, generate_batch, make_cache, prefill
from anllm.masks import to_additive, token_positions
from anllm.policies import AnchorPolicy
from tests.conftest import ARCHS, make_lm
from tests.reference import expected_kept, forced_anchor_flags, official_mask

pytestmark = pytest.mark.core
TEXTS = [
    "The cat sat. It was warm! Was it? Yes. Then the dog came and sat down too",
    "One. Two.",
    "No anchor in this row at all, only commas, words and more words",
]


def batch(lm, texts, side):
    tok = lm.tokenizer
    tok.padding_side = side
    if lm.anchor.kind == "ac":
        texts = [insert_ac(t) for t in texts]
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def reference_logits(lm, ids, am, **rule):
    mask = official_mask(ids, set(lm.anchor_ids), valid=am.bool(), **rule)
    return lm.model(
        input_ids=ids, attention_mask=to_additive(mask, lm.model.dtype), position_ids=token_positions(am.bool())
    ).logits


def decode(lm, ids, am, chunk, policy):
    cache = make_cache(lm, policy)
    outs = [
        forward_chunk(lm.model, cache, ids[:, s : s + chunk], am[:, s : s + chunk])
        for s in range(0, ids.shape[1], chunk)
    ]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["ep", "ac"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_exact_step_and_chunked(arch, mode, side):
    lm = make_lm(arch, mode)
    ids, am = batch(lm, TEXTS, side)
    assert ids.shape[0] == 3 and (am == 0).any()
    with torch.no_grad():
        ref = reference_logits(lm, ids, am)
        for chunk in (1, 7, 64):
            got, cache = decode(lm, ids, am, chunk, AnchorPolicy())
            diff = ((got - ref).abs() * am[..., None]).max()
            assert diff < 1e-4, f"chunk {chunk}: {diff}"
            assert cache.n_evicted.sum() > 0


@pytest.mark.parametrize(
    "rule", [{"anchors_see_anchors": True}, {"n_sink": 2}, {"window": 5}, {"n_sink": 1, "window": 3}]
)
def test_exact_with_ablation_options(rule):
    lm = make_lm("llama", "ep")
    ids, am = batch(lm, TEXTS, "left")
    with torch.no_grad():
        ref = reference_logits(lm, ids, am, **rule)
        got, _ = decode(lm, ids, am, 5, AnchorPolicy(**rule))
    assert ((got - ref).abs() * am[..., None]).max() < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_cache_holds_anchors_plus_tail_per_layer_and_row(side):
    lm = make_lm("qwen2", "ep")
    ids, am = batch(lm, TEXTS, side)
    with torch.no_grad():
        cache = make_cache(lm, "anchor")
        prefill(lm.model, cache, ids, am, chunk_size=6)
        # reference K/V: one masked pass through a plain DynamicCache, which keeps every position
        mask = official_mask(ids, set(lm.anchor_ids), valid=am.bool())
        full = DynamicCache(config=lm.model.config)
        lm.model(
            input_ids=ids,
            attention_mask=to_additive(mask, lm.model.dtype),
            position_ids=token_positions(am.bool()),
            past_key_values=full,
            use_cache=True,
        )
    for b in range(ids.shape[0]):
        real = am[b].nonzero().flatten()
        tokens = ids[b, real].tolist()
        want = expected_kept(tokens, set(lm.anchor_ids))  # positions among real tokens
        kept = cache.meta.valid[b]
        assert cache.meta.pos[b, kept].tolist() == want
        assert int(cache.n_kept()[b]) == len(want)
        for layer, ref_layer in zip(cache.layers, full.layers):
            torch.testing.assert_close(layer.keys[b][:, kept], ref_layer.keys[b][:, real[want]], atol=1e-9, rtol=0)
            torch.testing.assert_close(layer.values[b][:, kept], ref_layer.values[b][:, real[want]], atol=1e-9, rtol=0)


def test_no_anchor_text_keeps_everything_and_matches_causal():
    lm = make_lm("llama", "ep")
    ids = lm.tokenizer(["no anchor here, none at all"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, cache = decode(lm, ids, torch.ones_like(ids), 4, AnchorPolicy())
        ref = lm.model(input_ids=ids).logits
    assert int(cache.n_kept()[0]) == ids.shape[1] and int(cache.n_evicted[0]) == 0
    assert (got - ref).abs().max() < 1e-4 and torch.isfinite(got).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_full_cache_equals_model_generate(arch):
    lm = make_lm(arch, "ep", dtype=torch.float32)
    lm.tokenizer.padding_side = "left"
    from anllm.config import GenerationConfig

    prompts = ["Once upon a time. The", "Hi"]
    gen = GenerationConfig(max_new_tokens=12, chat=False, stop_on_eos=False)
    ours = generate_batch(lm, prompts, "full", gen)
    enc = lm.tokenizer(prompts, padding=True, return_tensors="pt")
    ref = lm.model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == ref[:, enc["input_ids"].shape[1] :].tolist()


def test_kv_bytes_from_config():
    lm = make_lm("llama", "ep")
    ids, am = batch(lm, TEXTS[:1], "left")
    with torch.no_grad():
        _, cache = decode(lm, ids, am, 8, AnchorPolicy())
    c = lm.model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_entry = c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * 8  # float64
    assert int(cache.kv_bytes()[0]) == int(cache.n_kept()[0]) * per_entry
    assert cache.allocated_bytes() >= int(cache.kv_bytes().sum())


def test_position_policies():
    lm = make_lm("llama", "ep")
    ids = lm.tokenizer(["Ab. Cd. ef"], return_tensors="pt")["input_ids"]
    for policy, want in (("true", 10), ("compact", 5)):
        lm.anchor = lm.anchor.replace(position_policy=policy)
        cache = make_cache(lm, "anchor")
        with torch.no_grad():
            prefill(lm.model, cache, ids)
        # kept: "." at 2, "." at 6, then " ef" (3 tokens) -> 5 entries; n_seen = 10
        assert int(cache.n_kept()[0]) == 5 and int(cache.n_seen[0]) == 10
        _, position_ids = cache.prepare(torch.tensor([[40]]))
        assert int(position_ids[0, 0]) == want


# -- forced anchors (max_segment): a segment never grows past max_segment tokens --------------------------------
@pytest.mark.parametrize("max_segment", [1, 3, 7])
def test_mark_anchors_matches_a_token_loop_across_chunks_and_padding(max_segment):
    g = torch.Generator().manual_seed(max_segment)
    ids = torch.randint(0, 6, (3, 40), generator=g)  # id 5 is the anchor id, ~1 in 6 tokens
    ids[1] = 0  # a row with no anchor id at all
    valid = torch.rand(3, 40, generator=g) > 0.2
    want = [forced_anchor_flags(ids[b].tolist(), {5}, max_segment, valid[b].tolist()) for b in range(3)]
    for chunk in (1, 4, 40):
        run, got = torch.zeros(3, dtype=torch.long), []
        for s in range(0, 40, chunk):
            a, run = mark_anchors(
                ids[:, s : s + chunk], (5,), valid[:, s : s + chunk], max_segment=max_segment, run=run
            )
            got.append(a)
        assert torch.cat(got, 1).tolist() == want, f"chunk {chunk}"
    natural, _ = mark_anchors(ids, (5,), valid)
    assert natural.tolist() == (valid & (ids == 5)).tolist()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("rule", [{}, {"n_sink": 1, "window": 4}])
def test_exact_with_forced_anchors(side, rule):
    lm = make_lm("qwen3", "ep", max_segment=6)
    ids, am = batch(lm, TEXTS, side)
    with torch.no_grad():
        mask = official_mask(ids, set(lm.anchor_ids), valid=am.bool(), max_segment=6, **rule)
        ref = lm.model(
            input_ids=ids, attention_mask=to_additive(mask, lm.model.dtype), position_ids=token_positions(am.bool())
        ).logits
        for chunk in (1, 5, 64):
            got, _ = decode(lm, ids, am, chunk, AnchorPolicy(**rule))
            assert ((got - ref).abs() * am[..., None]).max() < 1e-4, f"chunk {chunk}"


def test_forced_anchors_bound_the_cache_on_text_without_sentence_ends():
    lm = make_lm("llama", "ep", max_segment=8)
    ids = lm.tokenizer(["no sentence end here, only words and commas, " * 4], return_tensors="pt")["input_ids"]
    T = ids.shape[1]
    with torch.no_grad():
        _, cache = decode(lm, ids, torch.ones_like(ids), 5, AnchorPolicy())
        _, unbounded = decode(make_lm("llama", "ep"), ids, torch.ones_like(ids), 5, AnchorPolicy())
    assert int(unbounded.n_kept()[0]) == T  # no anchor id: the open sentence is the whole text
    n_forced = T // 8
    assert int(cache.n_seg[0]) == n_forced
    assert int(cache.n_kept()[0]) == n_forced + T % 8  # the forced anchors + the open segment (< 8 tokens)


# -- the cache owns its state: snapshot / restore, copies, tensors ----------------------------------------------
def _filled(lm, text=TEXTS[0], policy="streaming:sink=2,window=6"):
    cache = make_cache(lm, policy)
    with torch.no_grad():
        prefill(lm.model, cache, lm.tokenizer([text], return_tensors="pt")["input_ids"], chunk_size=5)
    return cache


def _same(a, b) -> bool:
    ta, tb = a.to_tensors(), b.to_tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_restore_returns_to_the_snapshot_exactly():
    lm = make_lm("llama", "ep")
    cache = _filled(lm)
    before = cache.copy()
    snap = cache.snapshot()
    q = lm.tokenizer([" Then what? More. And more words"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = forward_chunk(lm.model, cache, q)
        assert int(cache.n_evicted[0]) > int(before.n_evicted[0])  # the continuation changed every counter
        cache.restore(snap)
        assert _same(cache, before)
        again = forward_chunk(lm.model, cache, q)
        cache.restore(snap)  # a snapshot serves more than one restore
    assert torch.equal(first, again) and _same(cache, before)


def test_state_is_read_only_and_in_forward_follows_prepare():
    lm = make_lm("llama", "ep")
    cache = make_cache(lm, "anchor")
    assert cache.meta is None and cache.n_seen is None and cache.batch_size is None and not cache.in_forward
    cache.prepare(torch.tensor([[3, 4]]))
    assert cache.in_forward
    with pytest.raises(Exception, match="middle of a forward pass"):
        cache.copy()
    cache.evict()
    assert not cache.in_forward and cache.n_seen.tolist() == [2] and cache.batch_size == 1
    for name in ("meta", "n_seen", "n_seg", "n_evicted", "n_run", "state"):
        with pytest.raises(AttributeError):
            setattr(cache, name, None)


def test_copy_is_independent_and_repeats_one_row():
    lm = make_lm("llama", "ep")
    cache = _filled(lm)
    q = lm.tokenizer([" Then what? More"], return_tensors="pt")["input_ids"]  # (1, Q)
    twin, three = cache.copy(), cache.copy(batch_size=3)
    with torch.no_grad():
        one = forward_chunk(lm.model, twin, q)[:, -1]  # (1, V)
        rows = forward_chunk(lm.model, three, q.expand(3, -1))[:, -1]  # (3, V)
        assert _same(cache, cache.copy()) and not _same(cache, twin)  # the copy moved on, the original did not
        assert torch.equal(forward_chunk(lm.model, cache, q)[:, -1], one)
    assert three.batch_size == 3 and (rows - one).abs().max() < 1e-10
    with pytest.raises(Exception, match="only a one-row cache"):
        three.copy(batch_size=2)


def test_to_and_from_tensors_round_trip():
    lm = make_lm("mistral", "ep")
    cache = _filled(lm)
    tensors = cache.to_tensors()
    assert {"meta.token", "n_seen", "n_seg", "n_evicted", "n_run", "layer.0.keys"} <= tensors.keys()
    back = type(cache).from_tensors(
        lm.model.config, tensors, cache.policy, cache.anchor_ids, cache.position_policy, cache.max_segment
    )
    assert _same(back, cache)
    with pytest.raises(ValueError, match="tensor n_run is missing"):
        type(cache).from_tensors(lm.model.config, {k: v for k, v in tensors.items() if k != "n_run"})
    with pytest.raises(ValueError, match="shapes"):
        type(cache).from_tensors(lm.model.config, {**tensors, "n_seen": torch.zeros(2, dtype=torch.long)})
