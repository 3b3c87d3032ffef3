"""The app's Document and Chat tabs through their handlers (tiny random model, CPU): answers equal to
``anllm generate --cache`` and to :class:`ChatSession`, sizes and cache entries computed independently, the size
limit, escaping, per-session stores with their files cleaned up, Stop and the time limit."""

from __future__ import annotations

import re
import types
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from anllm.chat import ChatSession, compress
from anllm.cli import main
from anllm.config import GenerationConfig
from anllm.generation import forward_chunk
from anllm.memory import FORM_TEMPLATES, leaks
from anllm.plots import chat_memory_figure, first_token_figure
from anllm.ui.blocks import build_demo
from anllm.ui.chat_tab import ChatTab
from anllm.ui.document_tab import ANCHOR_FILE, EXAMPLE_FACTS, DocumentTab, document_example
from anllm.ui.render import MEASURED_RECALL, measured_recall_markdown, public_text
from anllm.ui.sessions import SessionStore
from tests.app_launch import visible_text

pytest_plugins = ["tests.app_fixtures"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = " ".join(f"Item {i} is kept in box {i % 7}. The box {i % 7} is blue!" for i in range(40)) + " That is all."
QUESTION = "Which box holds item 12?"
HOSTILE = "<img src=x onerror=alert(1)> [click](javascript:alert(1)) ![p](http://evil.example/p.png)"


def session(name: str) -> types.SimpleNamespace:
    """A stand-in for the ``gr.Request`` gradio passes (only ``session_hash`` is read)."""
    return types.SimpleNamespace(session_hash=name)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


@pytest.fixture
def docs(registry, tmp_path):
    return DocumentTab(registry, files_dir=tmp_path, interval_s=0.0, plot_interval_s=0.0)


def compressed(docs, text=DOC, who="a"):
    outs = list(docs.compress("tiny-random", text, session(who)))
    return outs[-1]


def ask(docs, question=QUESTION, max_new=12, who="a"):
    outs = list(docs.ask("tiny-random", question, max_new, session(who)))
    if outs[-1][5].startswith("✅"):
        assert not any(is_skip(v) for v in outs[-1])  # the last yield carries every value
    return outs


def generate_cache(capsys, path, question, max_new) -> str:
    argv = ["generate", "--model", "tiny-random", "--cache", str(path), "--prompt", question]
    assert main([*argv, "--max-new-tokens", str(max_new)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


# -- Document tab ---------------------------------------------------------------------------------------------------
def test_compress_reports_progress_then_sizes_measured_independently(docs, registry, tmp_path):
    outs = list(docs.compress("tiny-random", DOC, session("a")))
    progress = [o[0] for o in outs[:-1]]
    assert any("reading it with the anchor cache" in p for p in progress)
    assert any("prefilling it again with a full cache, in one pass" in p for p in progress)
    status, sizes, path, history, full_html, anchor_html, rows, plot = outs[-1]
    assert status.startswith("✅") and history == [] and rows == [] and plot is None
    path = Path(path)
    assert path.name == ANCHOR_FILE and path.is_file() and tmp_path in path.parents
    lm = registry.get()
    with torch.inference_mode():
        anchor, full = compress(lm, DOC, "anchor"), compress(lm, DOC, "full")
        full_path = full.save(tmp_path / "reference-full.kv")
    by_mode = {row[0]: row for row in sizes}
    a, f = anchor.stats(), full.stats()
    assert by_mode["anchor"][1:3] == [a["tokens_seen"], a["kv_entries"]]
    assert by_mode["full"][1:3] == [f["tokens_seen"], f["tokens_seen"]]
    assert by_mode["anchor"][4] == round(path.stat().st_size / 1e6, 3)
    assert by_mode["full"][4] == round(full_path.stat().st_size / 1e6, 3)
    assert a["kv_entries"] < a["tokens_seen"] / 4
    entry = docs.store.get("a")
    assert entry.anchor.file_bytes == path.stat().st_size and entry.full.file_bytes == full_path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == [ANCHOR_FILE]  # the measuring full file is gone


def test_answers_equal_generate_cache_for_the_same_file(docs, registry, capsys):
    path = Path(compressed(docs)[2])
    for question, max_new in ((QUESTION, 12), ("And box 3? Say it.", 7)):
        outs = ask(docs, question, max_new)
        full_html, anchor_html, rows, history, plot, status = outs[-1]
        assert status.startswith("✅"), status
        answer = visible_text(anchor_html)
        assert answer and answer == generate_cache(capsys, path, question, max_new)
        by_mode = {row[0]: row for row in rows}
        # independently: the question's tokens, the document's tokens, and what each cache holds after the answer
        lm = registry.get()
        ref = ChatSession.load(lm, path, gen=GenerationConfig(max_new_tokens=max_new))
        n_doc, n_q = len(ref.ids), len(ref.prompt_ids(question))
        assert ref.reply(question) == answer
        assert by_mode["anchor"][3] == n_q and by_mode["full"][3] == n_doc + n_q
        fed = n_doc + n_q + by_mode["anchor"][7] - 1  # the last token is sampled, not fed
        assert by_mode["anchor"][4] == expected_anchor_entries(lm, ref.ids[:fed])
        assert by_mode["full"][4] == n_doc + n_q + by_mode["full"][7] - 1
        assert by_mode["anchor"][2] is not None and by_mode["anchor"][1] >= by_mode["anchor"][2] > 0
    assert [row[0] for row in history] == [1, 2] and history[1][1] == "And box 3? Say it."
    fig = plot
    assert isinstance(fig, go.Figure) and [len(t.y) for t in fig.data] == [2, 2]


def test_the_size_limit_and_bad_input_give_clear_messages(docs, tmp_path):
    long = "A short sentence. " * (docs.max_chars // 18 + 1)
    outs = list(docs.compress("tiny-random", long, session("a")))
    assert len(outs) == 1 and outs[0][0].startswith("⚠️")
    assert f"the document has {len(long):,} characters; this app reads up to {docs.max_chars:,}" in outs[0][0]
    assert all(is_skip(v) for v in outs[0][1:])
    assert "document is empty" in list(docs.compress("tiny-random", "   ", session("a")))[0][0]
    status = list(docs.compress("tiny-random", "Go. " * 1100, session("a")))[-1][0]  # within the characters
    assert re.search(r"the document is 4,4\d\d tokens long but the model supports 4,096 positions", status), status
    assert "no compressed document in this session" in ask(docs)[-1][5]
    big = tmp_path / "big.txt"
    big.write_text(long, encoding="utf-8")
    text, status = docs.read_upload(str(big))
    assert is_skip(text) and "characters" in status and status.startswith("⚠️")
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "is not UTF-8 text" in docs.read_upload(str(binary))[1]
    hostile = tmp_path / "<img src=x onerror=alert(1)>.txt"
    hostile.write_text(DOC, encoding="utf-8")
    text, status = docs.read_upload(str(hostile))
    assert text == DOC and "&lt;img src=x onerror=alert(1)&gt;.txt" in status and "<img" not in status
    assert len(docs.store) == 0


def test_a_question_is_escaped_and_another_model_is_refused(docs):
    compressed(docs)
    status = ask(docs, HOSTILE, 3)[-1][5]
    assert status.startswith("✅") and public_text(HOSTILE) in status
    assert "<img" not in status and "[click](" not in status.replace("\\[", "")
    refused = list(docs.ask("other-model", QUESTION, 3, session("a")))[-1][5]
    assert "compressed with tiny-random; press Compress again to ask other-model" in refused


def test_sessions_are_separate_bounded_and_their_files_removed(registry, tmp_path, capsys):
    docs = DocumentTab(registry, max_documents=2, files_dir=tmp_path, interval_s=0.0)
    paths = {who: Path(compressed(docs, DOC if who != "b" else DOC.replace("blue", "red"), who)[2]) for who in "ab"}
    assert paths["a"] != paths["b"] and paths["a"].read_bytes() != paths["b"].read_bytes()
    for who in "ab":  # each session answers from its own file
        answer = visible_text(ask(docs, max_new=10, who=who)[-1][1])
        assert answer == generate_cache(capsys, paths[who], QUESTION, 10)
    assert len(docs.store.get("a").history) == 1 and len(docs.store.get("b").history) == 1
    again = Path(compressed(docs, DOC + " More.", "a")[2])  # a new document replaces the session's old one
    assert not paths["a"].parent.exists() and again.is_file()
    compressed(docs, DOC, "c")  # a third session: the least recently used ("b") is dropped, files and all
    assert "b" not in docs.store and not paths["b"].parent.exists() and docs.store.n_evicted == 1
    assert "no compressed document" in ask(docs, who="b")[-1][5]
    docs.forget(session("a"))  # the tab closed
    assert not again.parent.exists() and "a" not in docs.store
    assert len(list(docs.root().iterdir())) == 1  # only "c"'s folder is left


def test_stopping_or_timing_out_a_compress_keeps_nothing(registry, tmp_path):
    docs = DocumentTab(registry, files_dir=tmp_path, interval_s=0.0)
    run = docs.compress("tiny-random", DOC * 2, session("a"))
    assert "tokenizing" in next(run)[0] and "reading it" in next(run)[0]
    run.close()  # Stop / the tab closed: the worker stops after its chunk and the folder goes
    assert list(docs.root().iterdir()) == [] and len(docs.store) == 0
    docs.max_request_s = 1e-6
    status = list(docs.compress("tiny-random", DOC, session("a")))[-1][0]
    assert status.startswith("⚠️") and "time limit (1e-06 s a request)" in status
    assert list(docs.root().iterdir()) == [] and len(docs.store) == 0
    assert not any(m._forward_pre_hooks for m in registry.get().model.modules())  # hooks removed


def test_the_example_is_held_out_fixed_and_answers_like_any_document(docs, registry):
    text, qa = document_example()
    assert (text, qa) == document_example() and len(qa) == EXAMPLE_FACTS == 3
    forms = [re.sub(r"\\\{\w+\\\}", ".+", re.escape(q)) for t in FORM_TEMPLATES for q in t.questions]
    for question, answer in qa:
        assert any(re.fullmatch(f, question) for f in forms), question  # a held-out form's question
        assert answer in text and not leaks(answer, question)
    assert len(text) <= docs.max_chars
    status = compressed(docs, text)[0]
    assert status.startswith("✅")
    assert ask(docs, qa[0][0], max_new=4)[-1][5].startswith("✅")


def test_the_document_tab_states_the_measured_recall_and_offers_the_example(registry, tmp_path):
    demo = build_demo(registry, max_documents=2)
    text, qa = document_example()
    notes = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "doc-example-note"]
    assert len(notes) == 1 and measured_recall_markdown() in notes[0]
    assert all(public_text(q) in notes[0] and public_text(a) in notes[0] for q, a in qa)
    anchor = MEASURED_RECALL[0][2]
    assert f"{anchor[0]} % [{anchor[1]}, {anchor[2]}]" in notes[0] and "docs/memory.md" in notes[0]
    buttons = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "doc-example"]
    assert len(buttons) == 1
    (fn,) = [d.fn for d in demo.fns.values() if d.targets and d.targets[0][0] == buttons[0]._id]
    assert fn() == (text, qa[0][0])
    demo.close()


def test_session_store_bounds_and_drops():
    dropped = []
    store = SessionStore(2, on_drop=dropped.append)
    store.put("a", 1)
    store.put("b", 2)
    assert store.get("a") == 1  # "a" is now the most recent
    store.put("c", 3)
    assert dropped == [2] and "b" not in store and len(store) == 2
    store.put("a", 4)
    assert dropped == [2, 1] and store.get("a") == 4
    store.pop("a")
    store.pop("nothing")
    assert dropped == [2, 1, 4] and list(store._values) == ["c"]


# -- Chat tab -------------------------------------------------------------------------------------------------------
TURNS = [f"Turn {i}. Tell me about box {i % 5}, please. Is it blue?" for i in range(12)]


@pytest.fixture
def chats(registry):
    return ChatTab(registry, interval_s=0.0)


def send(chats, message, max_new=6, who="a"):
    outs = list(chats.send("tiny-random", message, max_new, 0.0, session(who)))
    return outs[-1]


def expected_anchor_entries(lm, ids: list[int]) -> int:
    """Anchors + the open sentence (tiny-random: no sinks, no window), counted on the token ids alone."""
    anchors = [i for i, t in enumerate(ids) if t in set(lm.anchor_ids)]
    return len(anchors) + len(ids) - (anchors[-1] + 1 if anchors else 0)


def test_chat_equals_a_chat_session_and_its_cache_stays_bounded(chats, registry):
    lm = registry.get()
    ref = ChatSession(lm, "anchor", gen=GenerationConfig(max_new_tokens=6, seed=None))
    for i, message in enumerate(TURNS):
        messages, box, plot, stats, status = send(chats, message)
        answer = ref.reply(message)
        assert status.startswith("✅") and box == ""
        assert messages[-2:] == [
            {"role": "user", "content": public_text(message)},
            {"role": "assistant", "content": public_text(answer)},
        ]
        s = chats.entry(session("a")).session
        assert s.ids == ref.ids and len(s.turns) == i + 1
        assert s.stats()["kv_entries"] == expected_anchor_entries(lm, s.ids)  # anchors + open sentence, exactly
    assert len(messages) == 24
    trace = {t.name.split(" ")[0]: list(t.y) for t in plot.data}
    assert trace["anchor"] == [t.kv_entries for t in ref.turns]
    assert trace["full"] == [t.tokens_seen for t in ref.turns] == [t.tokens_seen for t in s.turns]
    # flat: over the last eleven turns the cache grew far less than the tokens seen
    assert s.turns[-1].kv_entries < s.turns[-1].tokens_seen / 4
    assert s.turns[-1].kv_entries - s.turns[0].kv_entries < (s.turns[-1].tokens_seen - s.turns[0].tokens_seen) / 4
    assert f"{s.stats()['kv_entries']:,} KV entries" in stats
    probe = lm.tokenizer("One more. And", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        got = forward_chunk(lm.model, s.checkpoint()[0], torch.tensor([probe]))  # (1, P, V), on copies
        want = forward_chunk(lm.model, ref.checkpoint()[0], torch.tensor([probe]))
    assert torch.equal(got, want)


def test_chat_escapes_resets_and_keeps_sessions_apart(chats, registry):
    messages = send(chats, HOSTILE, who="a")[0]
    assert messages[0]["content"] == public_text(HOSTILE) and "<img" not in messages[0]["content"]
    send(chats, "Second. Turn", who="a")
    assert len(send(chats, "Only one. Turn", who="b")[0]) == 2
    assert len(chats.entry(session("a")).session.turns) == 2
    messages, plot, stats, status = chats.reset(session("a"))
    assert messages == [] and plot is None and "new conversation" in status
    s = chats.entry(session("a")).session
    assert s.turns == [] and s.ids == [] and s.cache.meta is None
    ref = ChatSession(registry.get(), "anchor", gen=GenerationConfig(max_new_tokens=6))
    assert send(chats, TURNS[0], who="a")[0][-1]["content"] == public_text(ref.reply(TURNS[0]))
    assert s.ids == ref.ids and len(chats.entry(session("b")).session.turns) == 1
    assert "message is empty" in send(chats, "  ")[4]


def test_a_chat_turn_over_the_time_limit_is_rolled_back_and_stop_keeps_the_answer(registry):
    chats = ChatTab(registry, interval_s=0.0, max_request_s=1e-6)
    messages, box, plot, stats, status = send(chats, TURNS[0], max_new=50)
    assert "time limit" in status and "the turn was not kept" in status and box == TURNS[0]
    s = chats.entry(session("a")).session
    assert s.turns == [] and s.ids == [] and s.cache.meta is None and messages == []
    chats.max_request_s = None
    ref = ChatSession(registry.get(), "anchor", gen=GenerationConfig(max_new_tokens=6))
    send(chats, TURNS[0])
    ref.reply(TURNS[0])
    assert chats.entry(session("a")).session is s and s.ids == ref.ids  # the failed turn left no trace
    run = chats.send("tiny-random", TURNS[1], 200, 0.0, session("a"))
    for values in run:
        if values[4].startswith("⏳") and not values[4].endswith(" 0 tokens"):
            break
    run.close()  # Stop: the answer so far is kept, as in `anllm chat`
    entry = chats.entry(session("a"))
    assert len(entry.session.turns) == 2 and entry.session.turns[-1].answer_tokens < 200
    assert entry.shown[-1] == {"role": "assistant", "content": entry.session.messages[-1]["content"]}
    assert int(entry.session.cache.n_seen[0]) == len(entry.session.ids)


def test_memory_and_first_token_figures():
    turns = [types.SimpleNamespace(turn=i + 1, kv_entries=10 + i, tokens_seen=40 * (i + 1)) for i in range(5)]
    fig = chat_memory_figure(turns)
    assert [list(t.y) for t in fig.data] == [[40, 80, 120, 160, 200], [10, 11, 12, 13, 14]]
    assert fig.layout.xaxis.title.text == "turn" and fig.layout.yaxis.title.text == "KV entries per layer"
    fig = first_token_figure([0.1, None], [2.0, 3.0])
    assert [list(t.y) for t in fig.data] == [[2.0, 3.0], [0.1, None]] and fig.layout.barmode == "group"
