"""Perplexity by cache decoding equals perplexity from one forward pass; KV statistics and C⇓ are consistent."""

import json
import math

import pytest
import torch

from anllm.anchors import is_anchor
from anllm.cli import main
from anllm.config import AnLLMError
from anllm.evaluation.metrics import kv_reduction
from anllm.evaluation.ppl import encode_text, perplexity, perplexity_text
from anllm.models import LoadedModel, tiny_model
from anllm.verify import masked_forward
from tests.conftest import make_lm
from tests.reference import expected_kept

TEXT = "The cat sat on the mat. It was warm! Then the rain came, and we ran home? Yes. We did. " * 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ppl_from_logits(logits, ids):
    """exp(mean NLL) of ids[1:] from logits (1, T, V), computed here in float64."""
    logp = torch.log_softmax(logits[0, :-1].double(), -1)
    return math.exp(-float(logp.gather(1, ids[0, 1:, None]).mean()))


@pytest.mark.parametrize("mode", ["ep", "ac"])
@pytest.mark.parametrize("chunk", [1, 9, 64])
def test_anchor_ppl_equals_masked_forward(mode, chunk):
    lm = make_lm(kind=mode)
    ids = torch.tensor([encode_text(lm, TEXT)])
    with torch.inference_mode():
        ref = ppl_from_logits(masked_forward(lm.model, ids, is_anchor(ids, lm.anchor_ids)), ids)
    got = perplexity(lm, ids[0], "anchor", chunk_size=chunk)
    assert got.ppl == pytest.approx(ref, rel=1e-9)
    kept = expected_kept(ids[0].tolist(), set(lm.anchor_ids))
    assert got.kv_kept_end == len(kept) and got.tokens == ids.shape[1]
    assert got.kv_kept_frac == pytest.approx(len(kept) / ids.shape[1])
    assert got.kv_reduction == pytest.approx(1 - len(kept) / ids.shape[1])  # C⇓ = 1 - kept / total


def test_full_ppl_equals_plain_forward_and_keeps_everything():
    lm = make_lm()
    ids = torch.tensor([encode_text(lm, TEXT)])
    with torch.inference_mode():
        ref = ppl_from_logits(lm.model(input_ids=ids).logits, ids)
    got = perplexity(lm, ids[0], "full", chunk_size=17)
    assert got.ppl == pytest.approx(ref, rel=1e-9)
    assert got.kv_kept_end == ids.shape[1] and got.kv_kept_frac == 1.0 and got.kv_reduction == 0.0
    # mean kept over chunks: after chunk i the full cache holds min(17 * (i + 1), T) entries
    T = ids.shape[1]
    sizes = [min(17 * (i + 1), T) for i in range(math.ceil(T / 17))]
    assert got.kv_kept_mean == pytest.approx(sum(sizes) / len(sizes))


def test_budget_matching_and_streaming_size():
    lm = make_lm()
    res = perplexity_text(lm, TEXT, ("full", "streaming", "anchor"), chunk_size=8, budget="anchor")
    n = max(2, round(res["anchor"].kv_kept_mean))
    assert res["streaming"].mode == f"streaming:budget={n},sink=4"
    assert res["streaming"].kv_kept_end == n  # the text is longer than the budget
    res = perplexity_text(lm, TEXT, ("streaming",), budget=12, chunk_size=5)
    assert res["streaming"].kv_kept_end == 12
    served = "anchor:sink=1,window=4"  # any mode can set the budget, listed in any order
    res = perplexity_text(lm, TEXT, ("sepllm", served), chunk_size=8, budget=served)
    n = max(2, round(res[served].kv_kept_mean))
    assert n != max(2, round(perplexity_text(lm, TEXT, ("anchor",), chunk_size=8)["anchor"].kv_kept_mean))
    assert res["sepllm"].mode == f"sepllm:budget={n},sink=4"


def test_kv_reduction_formula():
    assert kv_reduction(6, 100) == pytest.approx(0.94)
    with pytest.raises(AnLLMError):
        kv_reduction(1, 0)


def test_errors_are_clear():
    lm = make_lm()
    with pytest.raises(AnLLMError, match="budget must be >= 1"):
        perplexity_text(lm, TEXT, ("streaming",), budget=0)
    with pytest.raises(AnLLMError, match="must be among the modes"):
        perplexity_text(lm, TEXT, ("full", "streaming"), budget="anchor")
    with pytest.raises(AnLLMError, match="unknown cache policy 'bogus'"):
        perplexity_text(lm, TEXT, ("full", "bogus"))
    with pytest.raises(AnLLMError, match="empty"):
        perplexity_text(lm, "   ", ("full",))
    short = LoadedModel(
        tiny_model(vocab_size=len(lm.tokenizer), max_position_embeddings=32), lm.tokenizer, lm.anchor, lm.anchor_ids
    )
    with pytest.raises(AnLLMError, match="supports 32 positions"):
        perplexity_text(short, TEXT, ("full",))
    assert perplexity_text(short, TEXT, ("full",), max_tokens=32)["full"].tokens == 32


def test_cli_ppl_json(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    rc = main(
        [
            "eval",
            "ppl",
            "--model",
            "tiny-random",
            "--text-file",
            str(f),
            "--modes",
            "full,anchor,sepllm:sink=2;window=8",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out) == ["full", "anchor", "sepllm:sink=2,window=8"]
    for r in out.values():
        assert {"ppl", "kv_kept_frac", "tokens"} <= set(r) and r["ppl"] > 1
        assert r["kv_kept_frac"] == pytest.approx(r["kv_kept_end"] / r["tokens"])
    assert out["full"]["kv_kept_frac"] == 1.0 and out["anchor"]["kv_kept_frac"] < 1.0


def test_cli_reports_errors(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    assert main(["eval", "ppl", "--model", "tiny-random", "--text-file", str(f), "--budget", "0"]) == 2
    assert "--budget must be KV entries >= 1" in capsys.readouterr().err
    assert main(["eval", "ppl", "--model", "tiny-random", "--text-file", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
