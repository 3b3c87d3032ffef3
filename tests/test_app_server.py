"""End-to-end, load and fault tests: the app served on 127.0.0.1 and driven with gradio_client (tiny model)."""

from __future__ import annotations

import gc
import html
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from anllm.app_support import ModelRegistry
from anllm.app_ui import build_demo
from anllm.config import GenerationConfig
from anllm.generation import stream_generate
from tests.app_launch import launch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PROMPT = "Hello there. How are you? I am fine!"


def args(prompt=PROMPT, max_new=24, model="tiny-random", peer="none"):
    return (prompt, model, peer, False, max_new, 0.0, 1.0, 0, 1.0, 0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry():
    reg = ModelRegistry("tiny-random")
    reg.get()
    return reg


@pytest.fixture(scope="module")
def served(registry):
    demo = build_demo(registry, queue_size=24, interval_s=0.005, plot_interval_s=0.05)
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


def visible_text(html_value: str) -> str:
    html_value = re.sub(r'<span class="anllm-placeholder">.*?</span>', "", html_value)
    return html.unescape(re.sub(r"<[^>]+>", "", html_value))


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

    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(one, range(20)))
    assert all(o[6].startswith("✅") for o in outs), [o[6] for o in outs if not o[6].startswith("✅")]
    assert expected and all(visible_text(o[1]) == expected for o in outs)
    assert served[0].handlers.active_streams == 0
    assert time.perf_counter() - t0 < 120


def test_a_full_queue_answers_busy(registry):
    demo = build_demo(registry, queue_size=2, interval_s=0.05)
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
    t1 = time.perf_counter()
    c2 = Client(url, verbose=False)
    out = c2.predict(*args(max_new=8), api_name="/generate")
    waited = time.perf_counter() - t1
    c2.close()
    assert out[6].startswith("✅")
    for _ in range(100):
        if h.active_streams == 0:
            break
        time.sleep(0.05)
    assert h.active_streams == 0
    assert h.completed_streams == done_before + 1  # the cancelled stream never completed; the next one did
    assert waited < 20


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
