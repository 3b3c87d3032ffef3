import pytest
import torch

from anllm.anchors import add_ac_token, ep_anchor_ids, insert_ac, is_anchor, split_sentences
from anllm.config import PRESETS, AnchorConfig, AnLLMError, preset_for
from anllm.models import tiny_model, tiny_tokenizer
from anllm.resources import KJV_GENESIS, read_resource
from tests.conftest import make_lm
from tests.sentence_cases import CASES, HELDOUT

pytestmark = pytest.mark.core

SPLIT_CASES = [
    ("The cat sat. The dog ran!", ["The cat sat.", " The dog ran!"]),
    ("Is it? Yes. No", ["Is it?", " Yes.", " No"]),
    ("Dr. Smith paid 3.50 dollars. Then he left.", ["Dr. Smith paid 3.50 dollars.", " Then he left."]),
    ('He said "Stop." Then silence.', ['He said "Stop."', " Then silence."]),
    ("J. R. R. Tolkien wrote books. E.g. this one.", ["J. R. R. Tolkien wrote books.", " E.g. this one."]),
    ("A heading\n\nA paragraph here.", ["A heading", "\n\nA paragraph here."]),
    ("lowercase after. period stays", ["lowercase after. period stays"]),
]


@pytest.mark.parametrize("text,want", SPLIT_CASES)
def test_split_sentences(text, want):
    got = split_sentences(text)
    assert got == want
    assert "".join(got) == text


@pytest.mark.parametrize("text,want", SPLIT_CASES)
def test_insert_ac_marks_every_sentence(text, want):
    marked = insert_ac(text)
    assert marked.count("<AC>") == len(want)
    assert marked.replace(" <AC>", "") == text  # nothing of the user's text is lost
    assert marked.rstrip().endswith("<AC>")
    assert insert_ac(marked) == marked  # idempotent


def test_add_ac_token_initialises_rows_from_dot():
    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    n = model.get_input_embeddings().weight.shape[0]
    ac = add_ac_token(model, tok)
    dot = tok.convert_tokens_to_ids(".")
    assert ac == n and len(tok) == n + 1
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == n + 1 and out.shape[0] == n + 1
    assert torch.equal(emb[ac], emb[dot]) and torch.equal(out[ac], out[dot])
    assert add_ac_token(model, tok) == ac and len(tok) == n + 1  # idempotent
    assert tok("a. <AC>")["input_ids"][-1] == ac


def test_saved_tokenizer_keeps_ac_id(tmp_path):
    from transformers import AutoTokenizer

    lm = make_lm(kind="ac")
    lm.tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.convert_tokens_to_ids("<AC>") == lm.anchor_ids[0]


def test_ep_anchor_ids_of_char_tokenizer():
    tok = tiny_tokenizer()
    ids = ep_anchor_ids(tok, ".!?")
    assert sorted(tok.convert_ids_to_tokens(list(ids))) == ["!", ".", "?"]
    assert tok.convert_ids_to_tokens(list(ep_anchor_ids(tok, "."))) == ["."]
    with pytest.raises(AnLLMError, match="anchor_ids"):
        ep_anchor_ids(tok, "§")


def test_is_anchor():
    ids = torch.tensor([[5, 7, 9, 7]])
    assert is_anchor(ids, (7, 9)).tolist() == [[False, True, True, True]]


def test_presets_match_the_released_checkpoints():
    assert set(PRESETS) == {
        "anllm-ac-7b",
        "anllm-ac-13b",
        "anllm-ac-7b-translation",
        "anllm-ep-7b",
        "anllm-ep-7b-translation",
    }
    assert preset_for("pangjh3/AnLLM-EP-7B-PT").anchor.anchor_ids == (29889,)
    assert preset_for("anllm-ac-13b").hub_id == "pangjh3/AnLLM-AC-13B-PT"
    for p in PRESETS.values():
        assert p.anchor.anchor_ids == ((32001,) if p.anchor.kind == "ac" else (29889,))
        assert p.pad_id == 32000


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"kind": "xx"}, "kind"),
        ({"n_sink": -1}, "n_sink"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"anchor_ids": ()}, "anchor_ids"),
        ({"position_policy": "odd"}, "position_policy"),
    ],
)
def test_anchor_config_validation(kw, field):
    with pytest.raises(AnLLMError, match=field):
        AnchorConfig(**kw)


def test_anchor_kind_reads_the_former_key_mode():
    """``kind`` (EP / AC) was called ``mode``; files and callers using the old key still load the same setting."""
    ac = AnchorConfig(kind="ac")
    assert AnchorConfig.from_dict({"mode": "ac"}) == ac and AnchorConfig().replace(mode="ac") == ac
    assert ac.mode == "ac"  # read-only alias
    assert AnchorConfig.from_dict({"mode": "ac", "kind": "ac", "n_sink": 1}) == ac.replace(n_sink=1)
    with pytest.raises(AnLLMError, match="give kind only"):
        AnchorConfig.from_dict({"mode": "ac", "kind": "ep"})


@pytest.mark.parametrize("gold", CASES, ids=lambda g: g[0][:30])
def test_split_sentences_on_the_labelled_set(gold):
    text = " ".join(gold)
    got = split_sentences(text)
    assert "".join(got) == text and [s.strip() for s in got] == gold
    assert insert_ac(text) == " <AC> ".join(gold) + " <AC>"


def test_split_sentences_held_out_score():
    """The cases written after tuning: 18 of 20 right (pysbd gets 17; docs/training.md)."""
    right = sum([s.strip() for s in split_sentences(" ".join(g))] == g for g in HELDOUT)
    assert right >= 18


class _CountingStr(str):
    """A ``str`` that counts the characters every slice of it copies (the splitter reads the text through slices)."""

    copied = 0

    def __getitem__(self, key):
        out = str.__getitem__(self, key)
        _CountingStr.copied += len(out)
        return out


def test_split_sentences_is_linear():
    """Characters copied per character of text stay flat from 17 kB to 136 kB (a splitter that rescans the text
    before each match copies ~n^2 / sentence-length characters: 100x the text at 136 kB)."""
    text = read_resource(KJV_GENESIS)[:136_000]
    per_char = []
    for t in (text[:17_000], text):
        _CountingStr.copied = 0
        pieces = split_sentences(_CountingStr(t))
        assert "".join(pieces) == t
        per_char.append(_CountingStr.copied / len(t))
    small, big = per_char
    assert big < 1.5 * small and big < 64, per_char
