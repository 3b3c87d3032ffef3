"""ChatSession: one cache across turns, only new tokens fed, exact against one masked pass over the conversation,
bounded memory in anchor mode; the ``anllm chat`` REPL."""

import io

import pytest
import torch

from anllm.chat import ChatSession, compress
from anllm.cli import main
from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import forward_chunk
from tests.conftest import make_lm
from tests.test_cache_io import SPECS, reference_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a hand-set template for the character tokenizer: "<s>" is its BOS, one token
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
TURNS = ["Hello there. How are you?", "Tell me a story! Keep it short.", "Why? Say more"]
GEN = GenerationConfig(max_new_tokens=7, stop_on_eos=False)


def chat_lm(anchors="ep", **kw):
    lm = make_lm("llama", anchors, **kw)
    lm.tokenizer.chat_template = TEMPLATE
    return lm


def shown_ids(lm, session):
    """``session.ids`` without the answer tokens that detokenising hides (EOS, ``<AC>``)."""
    hidden = {lm.tokenizer.eos_token_id, lm.tokenizer.get_vocab().get("<AC>")}
    answer = {i for start, end in session.answer_spans for i in range(start, end)}
    return [t for i, t in enumerate(session.ids) if not (i in answer and t in hidden)]


@pytest.mark.parametrize("anchors", ["ep", "ac"])
@pytest.mark.parametrize("mode", ["anchor", "full", "streaming"])
def test_chat_is_exact_against_one_masked_pass_over_the_conversation(anchors, mode):
    lm = chat_lm(anchors)
    session = ChatSession(lm, SPECS.get(mode, mode), gen=GEN)
    with torch.no_grad():
        answers = [session.reply(t) for t in TURNS]
        # each turn fed only its suffix: the tokens seen are the rendered conversation, once (answers' EOS/<AC>
        # tokens are in the cache but not in the text, which holds what the user saw)
        assert lm.tokenizer(session.text, add_special_tokens=False)["input_ids"] == shown_ids(lm, session)
        assert int(session.cache.n_seen[0]) == len(session.ids)
        assert session.text.count(TURNS[0].split(".")[0]) == 1 and all(a for a in answers)
        probe = lm.tokenizer("\n<s>user: Next. One more", add_special_tokens=False)["input_ids"]
        got = forward_chunk(lm.model, session.cache, torch.tensor([probe]))  # (1, P, V)
        ref = reference_logits(lm, session.cache.policy, torch.tensor([session.ids + probe]))  # (1, T, V)
    assert (got - ref[:, len(session.ids) :]).abs().max() <= 1e-4
    for start, end in session.answer_spans:  # every greedy answer token is the reference's argmax
        assert ref[0, start - 1 : end - 1].argmax(-1).tolist() == session.ids[start:end]
    if mode != "full":
        assert int(session.cache.n_evicted[0]) > 0


def test_anchor_chat_memory_stays_bounded():
    lm = chat_lm(max_segment=12)
    session = ChatSession(lm, "anchor", gen=GenerationConfig(max_new_tokens=10, stop_on_eos=False))
    with torch.no_grad():
        for i in range(15):
            session.reply(f"Turn {i}. A short line of text, then a question? Yes")
            s = session.stats()
            # anchors + the open segment (a forced anchor every 12 tokens bounds it)
            assert s["kv_entries"] <= int(session.cache.n_seg[0]) + 12
    assert s["tokens_seen"] > 900 and s["kv_entries"] < s["tokens_seen"] / 4
    assert [t.turn for t in session.turns] == list(range(1, 16))
    assert session.turns[-1].kv_entries == s["kv_entries"] and session.turns[-1].answer_tokens == 10


def test_a_document_then_questions_save_load_and_reset(tmp_path):
    lm = chat_lm()
    with torch.no_grad():
        session = compress(lm, "The box is red. The key is under the mat. Nothing else.", "anchor")
        session.gen = GEN
        session.save(tmp_path / "doc.kv")
        first = session.reply("Where is the key?")
        loaded = ChatSession.load(lm, tmp_path / "doc.kv", gen=GEN)
        assert loaded.text == session.text[: len(loaded.text)] and loaded.stats()["turns"] == 0
        assert loaded.reply("Where is the key?") == first and loaded.ids == session.ids
        loaded.reply("And the box?")
        loaded.reset()  # back to the document, not to an empty cache
        assert loaded.reply("Where is the key?") == first
        # the document is the opening of the first user message
        assert session.messages[0]["content"].startswith("The box is red.") and "Where is the key?" in session.text


@pytest.mark.parametrize("mode", ["anchor", "full"])
def test_reading_in_one_pass_or_in_chunks_gives_the_same_cache(mode):
    lm = chat_lm(chunk_size=16)
    text = "The box is red. The key is under the mat! Is it? " * 6
    seen = []
    with torch.no_grad():
        chunked = compress(lm, text, mode, on_chunk=lambda done, total: seen.append((done, total)))
        one = compress(lm, text, mode, chunk_size=0, on_chunk=lambda done, total: seen.append((done, total)))
    n = len(chunked.ids)
    assert seen == [(min(d, n), n) for d in range(16, n + 16, 16)] + [(n, n)]  # per chunk, then once
    assert one.ids == chunked.ids and torch.equal(one.cache.meta.token, chunked.cache.meta.token)
    for a, b in zip(one.cache.layers, chunked.cache.layers):
        assert (a.keys - b.keys).abs().max() <= 1e-9 and (a.values - b.values).abs().max() <= 1e-9
    assert one.reply("Where?") == chunked.reply("Where?")


def test_stopping_early_keeps_the_partial_answer_consistent():
    lm = chat_lm()
    session = ChatSession(lm, "anchor", gen=GEN)
    with torch.no_grad():
        stream = session.ask(TURNS[0])
        next(stream), next(stream)
        stream.close()
        session.reply(TURNS[1])
    assert session.turns[0].answer_tokens == 2
    assert int(session.cache.n_seen[0]) == len(session.ids)
    assert lm.tokenizer(session.text, add_special_tokens=False)["input_ids"] == shown_ids(lm, session)


def test_a_template_that_rewrites_earlier_turns_is_refused():
    lm = chat_lm()
    lm.tokenizer.chat_template = "{{ messages | length }}|" + TEMPLATE  # the count at the top changes every turn
    session = ChatSession(lm, "anchor", gen=GEN)
    with torch.no_grad():
        session.reply(TURNS[0])
        with pytest.raises(AnLLMError, match="renders the earlier turns differently"):
            session.reply(TURNS[1])


def test_chat_repl(tmp_path, capsys, monkeypatch):
    kv = tmp_path / "chat.kv"
    lines = f"Hello. Who are you?\n/stats\n/save {kv}\nAnd then?\n/reset\n/stats\n/nonsense\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code = main(["chat", "--model", "tiny-random", "--mode", "anchor", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 0 and kv.is_file()
    assert err.count("entries /") >= 3 and "turn 2:" in err and "turns=0 tokens_seen=0" in err
    assert "commands: /reset" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("More?\n"))
    assert main(["chat", "--model", "tiny-random", "--cache", str(kv), "--max-new-tokens", "2"]) == 0
    assert "turn 1:" in capsys.readouterr().err
