"""bench/fact_kept.py: the anchor cache plus the fact's sentence is exact, keeps that sentence and finds it."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anllm.generation import forward_chunk, make_cache
from anllm.masks import to_additive, token_positions
from anllm.policies.anchor import AnchorPolicy
from tests.conftest import make_lm
from tests.test_policies import one_pass_mask

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fact_kept", ROOT / "bench" / "fact_kept.py")
fact_kept = importlib.util.module_from_spec(_spec)
sys.modules["fact_kept"] = fact_kept  # its dataclass looks its module up while it is built
_spec.loader.exec_module(fact_kept)

TEXT = "The cat sat on the mat. The key is 7391. It was warm that day! Was it? Yes. Then the dog came and sat down"


def _run(lm, policy, ids, chunk):
    cache = make_cache(lm, policy)
    with torch.inference_mode():
        parts = [forward_chunk(lm.model, cache, ids[:, s : s + chunk]) for s in range(0, ids.shape[1], chunk)]
    got = torch.cat(parts, 1)
    return got, cache  # (1, T, V)


def test_fact_kept_policy_decodes_as_one_masked_pass_and_keeps_the_span():
    lm = make_lm(n_sink=1, window=4)  # float64, character tokenizer
    ids = lm.tokenizer([TEXT], return_tensors="pt")["input_ids"]  # (1, T)
    lo = TEXT.index("The key")
    hi = lo + len("The key is 7391.")
    policy = fact_kept.FactKeptPolicy(n_sink=1, window=4, lo=lo, hi=hi)
    valid = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        mask = to_additive(one_pass_mask(policy, lm, ids, valid), lm.model.dtype)
        ref = lm.model(input_ids=ids, attention_mask=mask, position_ids=token_positions(valid)).logits
    plain, _ = _run(lm, AnchorPolicy(n_sink=1, window=4), ids, ids.shape[1])
    assert float((plain - ref).abs().max()) > 1e-3  # the span changes what later tokens see
    for chunk in (1, 5, ids.shape[1]):
        got, cache = _run(lm, policy, ids, chunk)
        assert float((got - ref).abs().max()) < 1e-9, f"chunk {chunk}"
        kept = set(cache.meta.pos[0][cache.meta.valid[0]].tolist())
        assert set(range(lo, hi)) <= kept  # every token of the span stayed
        assert int(cache.n_evicted.sum()) > 0  # the rest was still evicted
    empty, _ = _run(lm, fact_kept.FactKeptPolicy(n_sink=1, window=4), ids, 5)
    assert torch.equal(empty, _run(lm, AnchorPolicy(n_sink=1, window=4), ids, 5)[0])  # no span: the anchor cache


def test_summary_pairs_each_item_with_its_baseline_rows():
    key = ("literary", "a", "single", 256)
    recs = [
        {"filler": "literary", "id": i, "family": "single", "distance": 256, "em": em, "kv_entries": 10}
        for i, em in (("a", True), ("b", True), ("c", False))
    ]
    base = {
        (r["filler"], r["id"], r["family"], r["distance"]): {
            "base:full": {"em": True}, "full": {"em": True}, "anchor": {"em": r["id"] == "c", "kv_entries": 8},
        }
        for r in recs
    }  # fmt: skip
    assert key in base
    cell = fact_kept.summary(recs, base)["256"]
    assert cell["anchor+fact"]["em"] == pytest.approx(2 / 3)
    assert cell["anchor"]["em"] == pytest.approx(1 / 3)
    assert cell["anchor+fact - anchor"]["diff"] == pytest.approx(1 / 3)  # (+1 +1 -1) / 3
    assert cell["anchor+fact - base:full"]["diff"] == pytest.approx(-1 / 3)
    assert cell["kv_entries_mean"] == {"anchor+fact": 10, "anchor": 8}


@pytest.mark.slow
def test_fact_span_is_the_fact_in_every_family():
    from anllm.config import AnchorConfig
    from anllm.evaluation.acceptance import AcceptanceConfig, acceptance_items
    from anllm.evaluation.recall import render
    from anllm.models import load_model

    tok = load_model("smollm2-135m").tokenizer
    lm = SimpleNamespace(tokenizer=tok, anchor=AnchorConfig())
    items = acceptance_items(lm, AcceptanceConfig(distances=(64,), n=1, policies=("anchor",)))
    assert {it.family for _, it in items} == {"single", "multi", "chat", "fewshot-recall"}
    for _, it in items:
        prompt, _ = render(lm, it)
        lo, hi = fact_kept.fact_span(lm, it, prompt)
        assert tok.decode(prompt[lo:hi]).strip() == it.fact.strip(), it.id
