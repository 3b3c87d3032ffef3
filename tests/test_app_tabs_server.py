"""The Document and Chat tabs served on 127.0.0.1 and driven with gradio_client (tiny random model): named
endpoints, the downloaded cache file answering like the app, per-session state kept apart between two clients."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from anllm.chat import ChatSession
from anllm.cli import main
from anllm.config import GenerationConfig
from anllm.ui.render import public_text
from tests.app_launch import visible_text

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

pytest_plugins = ["tests.app_fixtures"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = " ".join(f"Item {i} is kept in box {i % 7}. The box {i % 7} is blue!" for i in range(30)) + " That is all."
OTHER_DOC = DOC.replace("blue", "green").replace("kept", "found")
QUESTION = "Which box holds item 12?"


@pytest.fixture
def clients(served):
    made = [Client(served[1], verbose=False) for _ in range(2)]
    yield made
    for c in made:
        c.close()


def unload(demo):
    """What gradio does when a browser tab closes: call every ``unload`` function with the tab's request."""
    fns = [f.fn for f in demo.fns.values() if any(t[1] == "unload" for t in f.targets)]
    assert len(fns) == 2  # the Document and the Chat tab each drop their own session

    def close(request):
        for fn in fns:
            fn(request)

    return close


def content(message: dict) -> str:
    """A Chatbot message's text (gradio sends the content as a list of typed parts)."""
    parts = message["content"]
    return parts if isinstance(parts, str) else "".join(p["text"] for p in parts if p["type"] == "text")


def generate_cache(capsys, path, question, max_new) -> str:
    argv = ["generate", "--model", "tiny-random", "--cache", str(path), "--prompt", question]
    assert main([*argv, "--max-new-tokens", str(max_new)]) == 0
    return capsys.readouterr().out[:-1]


def test_the_tabs_have_named_endpoints(served):
    c = Client(served[1], verbose=False)
    api = c.view_api(print_info=False, return_format="dict")["named_endpoints"]
    c.close()
    assert {"/compress", "/ask", "/chat", "/chat_reset"} <= set(api)
    assert [p["label"] for p in api["/compress"]["parameters"]][1:] == ["Document (up to 20,000 characters)"]


def test_a_downloaded_file_answers_like_the_app_and_sessions_stay_apart(served, clients, capsys):
    demo = served[0]
    a, b = clients
    assert "no compressed document" in b.predict("tiny-random", QUESTION, 10, api_name="/ask")[5]
    files = {}
    for client, text in ((a, DOC), (b, OTHER_DOC)):
        status, sizes, path, *_ = client.predict("tiny-random", text, api_name="/compress")
        assert status.startswith("✅"), status
        files[client] = Path(path)  # downloaded by gradio_client through the app's file route
        assert files[client].name == "document-anchor.kv"
        assert round(files[client].stat().st_size / 1e6, 3) == sizes["data"][1][4]  # the anchor row
        served_file = demo.documents.store.get(client.session_hash).path
        assert files[client].read_bytes() == served_file.read_bytes()
    assert files[a].read_bytes() != files[b].read_bytes() and len(demo.documents.store) == 2
    for client in (a, b):
        full_html, anchor_html, rows, history, plot, status = client.predict(
            "tiny-random", QUESTION, 10, api_name="/ask"
        )
        assert status.startswith("✅"), status
        assert visible_text(anchor_html) == generate_cache(capsys, files[client], QUESTION, 10)
        assert [row[0] for row in rows["data"]] == ["full", "anchor"] and len(history["data"]) == 1
    answer_a = visible_text(a.predict("tiny-random", "And box 3?", 8, api_name="/ask")[1])
    assert answer_a == generate_cache(capsys, files[a], "And box 3?", 8)
    assert len(b.predict("tiny-random", "And box 3?", 8, api_name="/ask")[3]["data"]) == 2  # b's own history
    folder = demo.documents.store.get(a.session_hash).folder
    unload(demo)(types.SimpleNamespace(session_hash=a.session_hash))  # a's tab closes
    assert not folder.exists() and a.session_hash not in demo.documents.store
    assert demo.documents.store.get(b.session_hash).path.is_file()


def test_the_size_limit_over_the_api(clients):
    status = clients[0].predict("tiny-random", "Words. " * 3000, api_name="/compress")[0]
    assert status.startswith("⚠️") and "this app reads up to 20,000" in status


def test_chat_over_the_api_keeps_one_cache_per_client(served, clients, registry):
    demo = served[0]
    a, b = clients
    lm = registry.get()
    ref = ChatSession(lm, "anchor", gen=GenerationConfig(max_new_tokens=6))
    turns = [f"Turn {i}. Is box {i} blue? Tell me." for i in range(4)]
    for i, message in enumerate(turns):
        messages, box, plot, stats, status = a.predict("tiny-random", message, 6, 0.0, api_name="/chat")
        assert status.startswith("✅") and box == "" and len(messages) == 2 * (i + 1)
        assert content(messages[-1]) == public_text(ref.reply(message))
    assert plot["type"] == "plotly" and f"{ref.stats()['kv_entries']:,} KV entries" in stats
    messages = b.predict("tiny-random", "<b>bold</b> [x](javascript:y)", 6, 0.0, api_name="/chat")[0]
    assert len(messages) == 2 and content(messages[0]) == public_text("<b>bold</b> [x](javascript:y)")
    session_a, session_b = (demo.chats.store.get(c.session_hash).session for c in (a, b))
    assert session_a.ids == ref.ids and len(session_a.turns) == 4 and len(session_b.turns) == 1
    messages, plot, stats, status = a.predict(api_name="/chat_reset")
    assert messages == [] and "new conversation" in status
    assert len(b.predict("tiny-random", "Again. Yes", 6, 0.0, api_name="/chat")[0]) == 4  # b's is untouched
    unload(demo)(types.SimpleNamespace(session_hash=b.session_hash))
    assert b.session_hash not in demo.chats.store and a.session_hash in demo.chats.store
