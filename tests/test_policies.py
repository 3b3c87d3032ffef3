"""Cache policies: StreamingLLM and SepLLM keep exactly the entries their rule says; every registered policy decodes
exactly (one table-driven test over anllm.policies.POLICIES)."""

import pytest
import torch

from anllm.anchors import insert_ac, mark_anchors
from anllm.config import AnLLMError
from anllm.generation import forward_chunk, make_cache
from anllm.masks import segment_ids, to_additive, token_positions
from anllm.policies import (
    POLICIES,
    SepLLMPolicy,
    StreamingPolicy,
    TokenMeta,
    parse_spec,
    policy_from_spec,
    split_modes,
)
from anllm.policies.sepllm import separator_ids
from tests.conftest import make_lm

TEXT = "The sun rose; birds sang, loudly. Was it spring?\nYes: it was! Then came rain, and wind. End"
# SepLLM separators (the tiny character vocabulary has no tab); one token = one character
SEP_CHARS = set(".,?!;: \n")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expected_positions(text, n_seen, rule, n_sink, window):
    """Positions a cache must hold after `n_seen` characters, from the rule's wording (not from the policy)."""
    keep = set(range(min(n_sink, n_seen)))
    keep |= {p for p in range(n_seen) if p > n_seen - window}  # the next token's window: itself + window - 1
    if rule == "sepllm":
        keep |= {p for p in range(n_seen) if text[p] in SEP_CHARS}
    return sorted(keep)


def brute_mask(text, rule, n_sink, window):
    """Bool (1, 1, T, T): query q sees key k <= q if k is a sink, among the `window` most recent tokens (q itself
    included), or (SepLLM) a separator."""
    T = len(text)
    m = torch.zeros(1, 1, T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(q + 1):
            m[0, 0, q, k] = k < n_sink or q - k < window or (rule == "sepllm" and text[k] in SEP_CHARS)
    return m


def make_policy(lm, rule, n_sink, window):
    return (
        StreamingPolicy(n_sink, window)
        if rule == "streaming"
        else SepLLMPolicy.from_model(lm, n_sink=n_sink, window=window)
    )


def test_separator_ids_are_punctuation_and_whitespace():
    lm = make_lm()
    expected = {lm.tokenizer.convert_tokens_to_ids(c) for c in SEP_CHARS}
    assert set(separator_ids(lm.tokenizer)) == expected


@pytest.mark.parametrize("rule", ["streaming", "sepllm"])
@pytest.mark.parametrize("n_sink,window,chunk", [(4, 6, 1), (2, 9, 7), (0, 3, 5)])
def test_cache_keeps_exactly_the_rule(rule, n_sink, window, chunk):
    lm = make_lm()
    policy = make_policy(lm, rule, n_sink, window)
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    assert ids.shape[1] == len(TEXT)
    cache, full = make_cache(lm, policy), make_cache(lm, "full")
    with torch.inference_mode():
        for s in range(0, ids.shape[1], chunk):
            forward_chunk(lm.model, cache, ids[:, s : s + chunk])
            forward_chunk(lm.model, full, ids[:, s : s + chunk])
            n_seen = min(s + chunk, ids.shape[1])
            kept = cache.meta.pos[0][cache.meta.valid[0]].tolist()
            assert kept == expected_positions(TEXT, n_seen, rule, n_sink, window)
            assert int(cache.n_seen[0]) == n_seen and int(cache.n_evicted[0]) == n_seen - len(kept)
            # layer-0 keys depend only on token and true position: the kept ones equal the full cache's rows
            k0 = cache.layers[0].keys[0, :, : len(kept)]  # (H_kv, M, D)
            torch.testing.assert_close(k0, full.layers[0].keys[0, :, kept], rtol=0, atol=1e-12)
    if rule == "streaming":
        assert cache.n_kept()[0] == min(len(TEXT), policy.budget)


@pytest.mark.parametrize("rule", ["streaming", "sepllm"])
def test_visible_is_the_rules_wording(rule):
    """The policy's mask is the rule as its paper words it (the table below proves decoding equals that mask)."""
    lm = make_lm()
    n_sink, window = 3, 5
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    T = ids.shape[1]
    meta = TokenMeta(ids, torch.arange(T)[None], torch.zeros_like(ids), torch.zeros_like(ids).bool(), ids >= 0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    got = make_policy(lm, rule, n_sink, window).visible(meta, meta)[0] & causal  # (T, T)
    assert torch.equal(got, brute_mask(TEXT, rule, n_sink, window)[0, 0])


# -- every registered policy proves itself -----------------------------------------------------------------------
# Small settings, so that every policy evicts on the short texts below; a policy registered in
# anllm.policies.POLICIES without a row here runs with its defaults (and must still evict, see the assertion).
SMALL = {
    "anchor": ("anchor", "anchor:sink=1,window=4"),
    "streaming": ("streaming:sink=2,window=5",),
    "sepllm": ("sepllm:sink=1,window=4",),
}
TABLE_TEXTS = [
    "The cat sat. It was warm! Was it? Yes. Then the dog came, and sat down too",
    "One. Two.",
    "No anchor in this row at all; only commas, words and more words",
]


def one_pass_mask(policy, lm, ids, valid):
    """Bool ``(B, 1, T, T)``: the policy's own rule over the whole padded batch, plus causality and padding (built
    here, not by the cache); a padding query sees itself only."""
    anchor, _ = mark_anchors(ids, lm.anchor_ids, valid, max_segment=lm.anchor.max_segment)
    meta = TokenMeta(ids, token_positions(valid), segment_ids(anchor, valid), anchor, valid)
    T = ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = policy.visible(meta, meta) & causal & valid[:, None, :] & valid[:, :, None]  # (B, T, T)
    return (allowed | (torch.eye(T, dtype=torch.bool) & ~valid[:, :, None]))[:, None]


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("kind", ["ep", "ac"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_every_registered_policy_decodes_as_one_masked_pass(name, kind, side):
    """Decoding through the evicting cache (chunks of 1, 5 and all tokens) equals one forward pass with the
    policy's ``visible`` rule as the mask: float64, EP and AC anchors, left and right padding."""
    lm = make_lm(kind=kind)  # float64
    tok = lm.tokenizer
    tok.padding_side = side
    texts = [insert_ac(t) for t in TABLE_TEXTS] if kind == "ac" else TABLE_TEXTS
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, am = enc["input_ids"], enc["attention_mask"]
    valid = am.bool()
    assert (~valid).any()  # the batch is padded
    for spec in SMALL.get(name, (name,)):
        policy = lm.policy(spec)
        assert type(policy) is POLICIES[name]
        with torch.inference_mode():
            mask = to_additive(one_pass_mask(policy, lm, ids, valid), lm.model.dtype)
            ref = lm.model(input_ids=ids, attention_mask=mask, position_ids=token_positions(valid)).logits
            for chunk in (1, 5, ids.shape[1]):
                cache = make_cache(lm, policy)
                got = torch.cat(
                    [forward_chunk(lm.model, cache, ids[:, s : s + chunk], am[:, s : s + chunk])
                     for s in range(0, ids.shape[1], chunk)], 1)  # fmt: skip
                diff = float(((got - ref).abs() * am[..., None]).max())
                assert diff < 1e-9, f"{spec}, chunk {chunk}: max |logit diff| {diff}"
                if name != "full" and chunk < ids.shape[1]:
                    assert int(cache.n_evicted.sum()) > 0, f"{spec} evicted nothing: add small settings to SMALL"


def test_split_modes_keeps_spec_parameters_together():
    assert split_modes(" full, streaming:sink=4;window=64,,anchor ") == ("full", "streaming:sink=4,window=64", "anchor")


def test_spec_strings_and_budget():
    lm = make_lm()
    assert set(POLICIES) >= {"full", "anchor", "streaming", "sepllm"}
    assert parse_spec("Streaming: sink=2, window=9") == ("streaming", {"sink": 2, "window": 9})
    p = policy_from_spec("streaming:budget=64", lm)
    assert (p.n_sink, p.window, p.budget) == (4, 61, 64)
    p = policy_from_spec("sepllm:sink=1,window=8", lm)
    assert (p.n_sink, p.window) == (1, 8) and p.separator_ids == separator_ids(lm.tokenizer)
    assert lm.policy("streaming:sink=0,window=5") == StreamingPolicy(0, 5)


@pytest.mark.parametrize(
    "spec,words",
    [
        ("streaming:budget=0", "budget must be >= 1"),
        ("sepllm:window=0", "budget of zero"),
        ("streaming:budget=4", "no room for a window"),
        ("nosuch", "unknown cache policy 'nosuch'"),
        ("streaming:size=3", "unknown key(s) size"),
        ("streaming:window=many", "must be an integer"),
        ("streaming:window", "is not key=value"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, words):
    with pytest.raises(AnLLMError, match=None) as e:
        make_lm().policy(spec)
    assert words in str(e.value)


def test_dataclass_validation_names_the_field():
    with pytest.raises(AnLLMError, match="StreamingPolicy.window"):
        StreamingPolicy(window=0)
    with pytest.raises(AnLLMError, match="SepLLMPolicy.separator_ids"):
        SepLLMPolicy()


@pytest.mark.parametrize("window", [1, 2, 5])
def test_window_means_the_same_for_every_policy(window):
    """A query sees the `window` most recent tokens, itself included, under anchor, streaming and sepllm alike."""
    from anllm.policies import AnchorPolicy, TokenMeta

    T = 9
    pos = torch.arange(T)[None]  # (1, T)
    meta = TokenMeta(pos + 100, pos, pos, torch.zeros(1, T, dtype=torch.bool), torch.ones(1, T, dtype=torch.bool))
    causal = pos[0, :, None] >= pos[0, None, :]  # (T, T)
    want = causal & (pos[0, :, None] - pos[0, None, :] < window)
    anchor = AnchorPolicy(window=window).visible(meta, meta)[0] & causal  # every token its own sentence, no anchor
    streaming = StreamingPolicy(0, window).visible(meta, meta)[0] & causal
    sepllm = SepLLMPolicy(0, window, separator_ids=(1,)).visible(meta, meta)[0] & causal  # no separator in the text
    assert torch.equal(anchor, want) and torch.equal(streaming, want) and torch.equal(sepllm, want)
    assert want.sum(-1).max() == window
