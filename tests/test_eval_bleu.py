"""BLEU on local files: sacrebleu scores, translation through cache modes, bad input."""

import json
import math
from collections import Counter

import pytest

from anllm.cli import main
from anllm.config import AnLLMError
from anllm.evaluation.bleu import corpus_bleu, evaluate_bleu
from tests.conftest import make_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bleu_by_hand(hyp, ref):
    """Single-sentence BLEU-4 from the definition (whitespace tokens, no smoothing), as a percentage."""
    h, r = hyp.split(), ref.split()
    logs = []
    for n in range(1, 5):
        hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
        rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        logs.append(math.log(sum(min(c, rc[g]) for g, c in hc.items()) / sum(hc.values())))
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return 100 * bp * math.exp(sum(logs) / 4)


def test_bleu_matches_definition():
    hyp, ref = "the cat sat on the red mat today", "the cat sat on the mat today"
    assert corpus_bleu([hyp], [ref]) == pytest.approx(bleu_by_hand(hyp, ref), rel=1e-6)
    assert corpus_bleu([ref], [ref]) == pytest.approx(100.0)
    with pytest.raises(AnLLMError, match="line counts must match"):
        corpus_bleu([hyp], [ref, ref])


def test_translate_through_modes():
    lm = make_lm()
    refs = ["the house is small", "good morning"]
    res = evaluate_bleu(
        lm, refs, sources=["das Haus ist klein.", "Guten Morgen."], modes=("full", "anchor"), max_new_tokens=6
    )
    assert set(res) == {"full", "anchor"}
    for r in res.values():
        assert r.segments == 2 and len(r.hypotheses) == 2
        assert r.bleu == pytest.approx(corpus_bleu(r.hypotheses, refs))
        assert 0 < r.kv_kept_frac <= 1
    assert res["full"].kv_kept_frac == 1.0


def test_cli_bleu_scores_files(tmp_path, capsys):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("the cat sat on the mat today\nit is a fine day for a walk\n")
    hyp.write_text("the cat sat on the red mat today\nit is a fine day for a walk\n")
    assert main(["eval", "bleu", "--ref", str(ref), "--hyp", str(hyp), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["file"]["bleu"] == pytest.approx(corpus_bleu(hyp.read_text().splitlines(), ref.read_text().splitlines()))
    hyp.write_text("only one line\n")
    assert main(["eval", "bleu", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    assert "line counts must match" in capsys.readouterr().err
