import pytest
import torch

from anllm.ablations import AblationRow, Variant, by_name, run_variants, with_anchor
from anllm.config import AC_TOKEN, AnLLMError
from anllm.evaluation.ppl import perplexity
from anllm.plots import ablation_figure, budget_figure
from anllm.verify import masked_forward
from tests.conftest import make_lm

TEXT = "The cat sat. A dog ran far! Was it fun? Birds sing in trees. The end is near. Yes."


def test_with_anchor_changes_rule_and_resolves_ids():
    lm = make_lm()
    sinks = with_anchor(lm, n_sink=2, position_policy="compact")
    assert sinks.anchor.n_sink == 2 and sinks.anchor.position_policy == "compact"
    assert sinks.anchor_ids == lm.anchor_ids and sinks.model is lm.model
    assert lm.anchor.n_sink == 0  # the original is untouched
    ac = with_anchor(lm, kind="ac")
    assert ac.anchor_ids == (ac.tokenizer.convert_tokens_to_ids(AC_TOKEN),)
    assert with_anchor(lm) is lm


def test_run_variants_matches_the_masked_forward_and_full_cache():
    lm = make_lm()
    variants = [
        Variant("full", "full", group="ref"),
        Variant("anchor", group="rule"),
        Variant("see", anchor={"anchors_see_anchors": True}, group="rule"),
        Variant("stream", "streaming:sink=1,window=8", group="budget"),
    ]
    rows = by_name(run_variants(lm, TEXT, variants, chunk_size=16))
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    anchor = torch.isin(ids, torch.tensor(lm.anchor_ids))
    for name, rule in (("anchor", {}), ("see", {"anchors_see_anchors": True})):
        with torch.no_grad():
            logits = masked_forward(lm.model, ids, anchor, **rule)[0, :-1]
        nll = -torch.log_softmax(logits.double(), -1).gather(1, ids[0, 1:, None]).mean()
        assert rows[name].nll == pytest.approx(float(nll), rel=1e-6)
    assert rows["anchor"].nll != pytest.approx(rows["see"].nll, rel=1e-6)
    assert rows["full"].kv_kept_mean_frac == 1.0
    assert rows["anchor"].kv_kept_mean_frac < 1.0
    assert rows["stream"].kv_kept_end == 8  # 1 sink + window - 1 recent entries
    assert rows["see"].anchor == {"anchors_see_anchors": True} and rows["anchor"].anchor == {}  # what each ran under
    assert rows["full"].nll == pytest.approx(perplexity(lm, ids[0], "full").nll, rel=1e-9)


def test_ac_variants_leave_the_shared_model_alone():
    lm = make_lm()
    rows = by_name(run_variants(lm, TEXT, [Variant("ep"), Variant("ac", anchor={"kind": "ac"}), Variant("ep2")]))
    # adding <AC> in place would give the LM head a row competing with "." and change every later EP score
    assert rows["ep2"].nll == rows["ep"].nll
    assert AC_TOKEN not in lm.tokenizer.get_vocab()
    assert lm.model.get_output_embeddings().weight.shape[0] == len(lm.tokenizer)
    ac = with_anchor(lm, kind="ac")
    assert ac.model is not lm.model and with_anchor(ac, n_sink=1).model is ac.model


def test_ac_variant_scores_the_text_with_ac_tokens():
    lm = make_lm()
    rows = by_name(run_variants(lm, TEXT, [Variant("ep"), Variant("ac", anchor={"kind": "ac"})]))
    # " <AC>" after each of the 6 sentences: a space and the <AC> token with the character tokenizer
    assert rows["ac"].tokens == rows["ep"].tokens + 2 * 6
    assert rows["ac"].kv_kept_end < rows["ac"].tokens


def test_bad_variants_are_errors():
    lm = make_lm()
    with pytest.raises(AnLLMError):
        run_variants(lm, TEXT, [])
    with pytest.raises(AnLLMError, match="unique"):
        run_variants(lm, TEXT, [Variant("a"), Variant("a", "full")])
    with pytest.raises(AnLLMError):
        run_variants(lm, TEXT, [Variant("x", "nonsense")])


def _row(name, group, ppl, frac):
    return AblationRow(name, group, "anchor", ppl, 1.0, 10, frac, 3, frac, 0.1)


def test_figures_have_titles_axes_and_one_trace_per_group():
    rows = [_row("a", "anchor", 30.0, 0.2), _row("s1", "streaming", 20.0, 0.5), _row("s2", "streaming", 25, 0.3)]
    fig = budget_figure(rows, title="budget", reference=_row("full", "ref", 10.0, 1.0))
    assert fig.layout.title.text == "budget" and len(fig.data) == 2
    assert list(fig.data[1].x) == [30.0, 50.0]  # sorted by KV kept, in percent
    assert "KV entries kept" in fig.layout.xaxis.title.text and "perplexity" in fig.layout.yaxis.title.text
    bars = ablation_figure(rows)
    assert len(bars.data) == 2 and bars.layout.xaxis.title.text == "variant"
    assert "perplexity" in bars.layout.yaxis.title.text
    with pytest.raises(AnLLMError):
        budget_figure([])
    with pytest.raises(AnLLMError):
        ablation_figure([])
