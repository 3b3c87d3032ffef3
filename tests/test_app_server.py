"""End-to-end, load and fault tests: the app served on 127.0.0.1 and driven with gradio_client (tiny model)."""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from anllm.config import GenerationConfig
from anllm.generation import stream_generate
from anllm.ui.blocks import build_demo
from anllm.ui.registry import ModelRegistry
from tests.app_launch import launch, visible_text

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PROMPT = "Hello there. How are you? I am fine!"


def args(prompt=PROMPT, max_new=24, model="tiny-random", peer="none"):
    return (prompt, model, peer, False, max_new, 0.0, 1.0, 0, 1.0, 0)


pytest_plugins = ["tests.app_fixtures"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def test_streams_both_modes(client, registry):
    job = client.submit(*args(max_new=80), api_name="/generate")
    updates, shown = [], [None] * 7
    for values in job:  # what a browser shows after each update: unchanged outputs arrive as skips
        shown = [old if is_skip(new) else new for old, new in zip(shown, values)]
        updates.append(tuple(shown))
    final = job.result()
    assert not any(is_skip(v) for v in final)  # the last update carries every value
    assert len(updates) >= 3, "the answer did not stream"
    full_texts = [u[0] for u in updates]
    anchor_texts = [u[1] for u in updates]
    assert len(set(full_texts)) >= 2 and len(set(anchor_texts)) >= 2  # both columns changed while streaming
    assert "generating with the" in " ".join(u[6] for u in updates[:-1])
    assert final[6].startswith("✅")
    # the final numbers are the decode loop's own
    lm = registry.get()
    gen = GenerationConfig(max_new_tokens=80, chat=False, seed=0)
    stats = {row[0]: row for row in final[5]["data"]}
    for mode in ("full", "anchor"):
        ref = list(stream_generate(lm, PROMPT, mode, gen))
        last = ref[-1]
        assert stats[mode][3:6] == [last.step, last.kv_entries, last.kv_full_entries]
        assert stats[mode][8] == last.n_evicted
        column = final[0] if mode == "full" else final[1]
        assert visible_text(column) == "".join(r.text for r in ref)
        assert column.count('<mark class="anllm-anchor"') == sum(r.is_anchor and bool(r.text) for r in ref)
    assert stats["anchor"][8] > 0  # the prompt's sentences were evicted
    assert final[3]["type"] == "plotly" and final[4]["type"] == "plotly"


def test_bad_input_over_the_api(client):
    assert "prompt is empty" in client.predict(*args(prompt="  "), api_name="/generate")[6]
    assert "unknown model" in client.predict(*args(model="not-a-model"), api_name="/generate")[6]
    assert "model supports 4096 positions" in client.predict(*args(prompt="x" * 4100), api_name="/generate")[6]
    with pytest.raises(AppError, match="greater than maximum value"):  # the slider's own bound
        client.predict(*args(max_new=10**6), api_name="/generate")
    assert "unknown model" in client.predict("nope", api_name="/model_info")
    assert "tiny-random" in client.predict("tiny-random", api_name="/model_info")


def test_twenty_concurrent_clients_are_all_served(served, registry):
    url = served[1]
    lm = registry.get()
    expected = "".join(r.text for r in stream_generate(lm, PROMPT, "anchor", GenerationConfig(12, chat=False)))

    def one(i):
        c = Client(url, verbose=False)
        out = c.predict(*args(max_new=12), api_name="/generate")
        c.close()
        return out

    h = served[0].handlers
    done_before = h.completed_streams
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(one, range(20)))
    assert all(o[6].startswith("✅") for o in outs), [o[6] for o in outs if not o[6].startswith("✅")]
    assert expected and all(visible_text(o[1]) == expected for o in outs)
    assert h.active_streams == 0 and h.completed_streams == done_before + 20  # every request ran to its end


def test_a_full_queue_answers_busy(registry):
    demo = build_demo(registry, queue_size=2, interval_s=0.05, max_request_s=None)
    url = launch(demo)
    try:
        c = Client(url, verbose=False, max_workers=12)
        jobs = [c.submit(*args(max_new=300), api_name="/generate") for _ in range(10)]
        busy, ok = 0, 0
        for job in jobs:
            try:
                job.result(timeout=120)
                ok += 1
            except Exception as e:  # noqa: BLE001 - we check what it is
                assert "Queue is full" in str(e), repr(e)
                busy += 1
        assert busy >= 1 and ok >= 1
        assert busy + ok == 10
        c.close()
    finally:
        demo.close()


def test_a_client_that_disconnects_frees_its_slot(served):
    demo, url = served
    h = demo.handlers
    done_before = h.completed_streams
    c1 = Client(url, verbose=False)
    long_job = c1.submit(*args(max_new=1024), api_name="/generate")
    t0 = time.perf_counter()
    while h.active_streams == 0 and time.perf_counter() - t0 < 30:  # wait until it streams
        time.sleep(0.02)
    while not long_job.outputs() and time.perf_counter() - t0 < 30:
        time.sleep(0.02)
    assert h.active_streams == 1 and long_job.outputs()
    long_job.cancel()
    c1.close()  # the browser tab goes away
    c2 = Client(url, verbose=False)
    out = c2.predict(*args(max_new=8), api_name="/generate")  # the slot is free: this one is served
    c2.close()
    assert out[6].startswith("✅")
    for _ in range(100):
        if h.active_streams == 0:
            break
        time.sleep(0.05)
    assert h.active_streams == 0
    assert h.completed_streams == done_before + 1  # the cancelled stream never completed; the next one did


def test_a_raw_stream_that_drops_frees_its_slot(served, client):
    """A browser tab closing mid-stream: the SSE connection just goes away, with no cancel request."""
    import httpx

    demo, url = served
    h = demo.handlers
    done_before = h.completed_streams
    fn_index = next(i for i, f in demo.fns.items() if f.api_name == "generate")
    session = uuid.uuid4().hex
    with httpx.Client(base_url=url, timeout=30) as http:
        joined = http.post(
            "gradio_api/queue/join",
            json={"data": list(args(max_new=1024)), "fn_index": fn_index, "session_hash": session},
        )
        assert joined.status_code == 200
        updates = 0
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["msg"] == "process_generating":
                    updates += 1
                    if updates == 3:
                        break  # leave while it is still generating
    assert updates == 3 and h.active_streams == 1
    t0 = time.perf_counter()
    while h.active_streams and time.perf_counter() - t0 < 20:
        time.sleep(0.05)
    assert h.active_streams == 0, "the dropped stream kept generating"
    out = client.predict(*args(max_new=8), api_name="/generate")
    assert out[6].startswith("✅") and h.completed_streams == done_before + 1


def test_no_thread_or_memory_leak_over_50_requests(client, served):
    def burst(n):
        for _ in range(n):
            out = client.predict(*args(max_new=6), api_name="/generate")
            assert out[6].startswith("✅")

    burst(10)  # warm-up: thread pools, caches
    gc.collect()
    threads0, rss0 = threading.active_count(), rss_mb()
    burst(50)
    gc.collect()
    threads1, rss1 = threading.active_count(), rss_mb()
    assert threads1 <= threads0 + 2, (threads0, threads1)
    assert rss1 - rss0 < 40, f"RSS grew {rss1 - rss0:.1f} MB over 50 requests"
    assert served[0].handlers.active_streams == 0


# -- issue 19: a public Space --------------------------------------------------------------------------------------
def tiny_as(name_log: list, **anchor_changes):
    """A loader that loads tiny-random under any name (so several "models" are cheap) and logs each load."""
    from anllm.models import load_model

    def loader(name, **kw):
        name_log.append(name)
        lm = load_model("tiny-random", **kw)
        lm.name = name
        if anchor_changes:
            lm.anchor = lm.anchor.replace(**anchor_changes)
        return lm

    return loader


@pytest.fixture(scope="module")
def space(registry):
    """The app as on a public Space: a resident default that looks served (1 sink, 16-token window) with an
    adapter note naming a path under the checkout, other models allowed by the host, a short time limit."""
    from anllm.ui.render import _PACKAGE_ROOT

    loads: list[str] = []
    base = tiny_as(loads, n_sink=1, window=16)

    def loader(name, **kw):
        lm = base(name, **kw)
        lm.notes = [f"anchor adapter applied from {_PACKAGE_ROOT}anllm/adapters/smollm2-135m-anchor"]
        return lm

    reg = ModelRegistry("served", loader=loader, allowed=("served", "other-a", "other-b"))
    demo = build_demo(reg, queue_size=8, interval_s=0.01, plot_interval_s=0.05, max_request_s=0.3)
    url = launch(demo)
    yield demo, url, reg, loads
    demo.close()


HOSTILE = [
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;", "<img"),
    ("<script>alert(1)</script>", "&lt;script&gt;", "<script"),
    ("![pixel](http://evil.example/p.png)", "!\\[pixel]", "[pixel]("),
    ("[click](javascript:alert(1))", "\\[click]", "[click]("),
]


@pytest.mark.parametrize("typed,shown,never", HOSTILE)
def test_a_typed_model_name_is_escaped(client, typed, shown, never):
    for status in (
        client.predict(typed, api_name="/model_info"),
        client.predict(*args(model=typed), api_name="/generate")[6],
    ):
        assert status.startswith("⚠️") and shown in status and never not in status.replace("\\[", ""), status


def test_the_model_panel_shows_no_server_paths(space):
    from anllm.ui.render import _PACKAGE_ROOT

    c = Client(space[1], verbose=False)
    info = c.predict("served", api_name="/model_info")
    c.close()
    assert "anllm/adapters/smollm2-135m-anchor" in info.replace("\\", "")
    assert _PACKAGE_ROOT not in info and _PACKAGE_ROOT.rstrip("/") not in info


def test_the_default_model_stays_resident(space):
    demo, url, reg, loads = space
    c = Client(url, verbose=False)
    for name in ("served", "other-a", "other-b", "other-a", "served"):
        assert c.predict(name, api_name="/model_info").startswith(f"**{name}**")
    out = c.predict(*args(model="served", max_new=4), api_name="/generate")
    c.close()
    assert loads.count("served") == 1, loads  # visitors switching models never pushed the default out
    assert "served" in reg.loaded() and len(reg.loaded()) == 2
    assert "time limit" in out[6] or out[6].startswith("✅")


def test_only_allowed_models_can_be_loaded(space):
    from anllm.config import AnLLMError

    demo, url, reg, loads = space
    c = Client(url, verbose=False)
    n = len(loads)
    for name in ("tiny-random", "smollm2-135m", "/etc", "org/some-model"):
        for api, values in (("/model_info", (name,)), ("/generate", args(model=name))):
            with pytest.raises(AppError, match="is not in the list of choices"):  # the picker refuses it
                c.predict(*values, api_name=api)
        with pytest.raises(AnLLMError, match="this app serves only served, other-a, other-b; model"):
            reg.get(name)  # and so does the registry, for any other caller
    c.close()
    assert len(loads) == n  # nothing was loaded for them
    config = next(comp for comp in demo.config["components"] if comp.get("props", {}).get("elem_id") == "model")
    assert [ch[0] for ch in config["props"]["choices"]] == ["served", "other-a", "other-b"]
    assert config["props"]["allow_custom_value"] is False


def test_the_allowlist_comes_from_the_environment(monkeypatch):
    from anllm.ui.registry import allowed_models_from_env

    monkeypatch.delenv("ANLLM_ALLOWED_MODELS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert allowed_models_from_env("default") is None  # a local demo: any model
    monkeypatch.setenv("SPACE_ID", "someone/anllm")
    assert allowed_models_from_env("default") == ("default",)  # on a Space: on by default
    monkeypatch.setenv("ANLLM_ALLOWED_MODELS", "smollm2-135m, tiny-random")
    assert allowed_models_from_env("default") == ("default", "smollm2-135m", "tiny-random")
    monkeypatch.setenv("ANLLM_ALLOWED_MODELS", "*")
    assert allowed_models_from_env("default") is None  # the host opts out


def test_analytics_are_off_unless_the_host_turns_them_on(monkeypatch, registry):
    import gradio.analytics
    import httpx

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    demo = build_demo(registry)
    url = launch(demo)
    try:
        assert httpx.get(url + "config", timeout=30).json()["analytics_enabled"] is False
    finally:
        demo.close()
    monkeypatch.setattr(gradio.analytics, "version_check", lambda: None)  # no network from the test
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    assert build_demo(registry).analytics_enabled is True


def test_a_request_over_the_time_limit_stops_cleanly(space):
    demo, url, reg, loads = space
    h = demo.handlers
    c = Client(url, verbose=False)
    done = h.completed_streams
    out = c.predict(*args(model="served", max_new=1024), api_name="/generate")  # far more than 0.3 s of work
    assert out[6].startswith("⚠️") and "stopped at this server's time limit (0.3 s a request" in out[6], out[6]
    stats = {row[0]: row for row in out[5]["data"]}
    assert stats["full"][3] < 1024 and stats["full"][9] in ("stopped", "length", "eos")
    assert h.active_streams == 0 and h.completed_streams == done + 1
    h.max_request_s = None  # the next request must not race a 0.3 s clock on a loaded machine
    try:
        ok = c.predict(*args(model="served", max_new=2), api_name="/generate")  # the queue moved on
    finally:
        h.max_request_s = 0.3
    c.close()
    assert "time limit" not in ok[6] and ok[6].startswith("✅"), ok[6]


def test_the_time_limit_stops_a_long_prefill(registry):
    from anllm.ui.generate_tab import GenerateTab

    h = GenerateTab(registry, max_request_s=1e-6)
    outs = list(h.generate("word " * 300, None, "none", False, 8, 0.0, 1.0, 0, 1.0, 0))
    assert "time limit" in outs[-1][6] and "✅" not in outs[-1][6]
    stats = {row[0]: row for row in outs[-1][5]}
    assert stats["full"][3] == 0 and stats["anchor"][3] == 0  # cut off inside the prompt's forward pass
    assert not any(m._forward_pre_hooks for m in registry.get().model.modules())  # hooks removed


def test_the_mask_explorer_starts_from_the_served_setting(space):
    c = Client(space[1], verbose=False)
    kind, sink, window, see = c.predict("served", api_name="/explorer_setting")
    c.close()
    assert (kind, sink, window, see) == ("EP", 1, 16, False)
