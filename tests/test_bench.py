"""The benchmark measures the right caches: KV entries and bytes per mode, the limit row, the roofline and the CLI."""

import json

import pytest
import torch

from anllm.bench import (
    BenchConfig,
    backbone_forward,
    bench_tokens,
    builtin_passage,
    decode_cost,
    roofline,
    run_bench,
)
from anllm.cli import main
from anllm.config import AnLLMError
from tests.conftest import make_lm
from tests.reference import expected_kept

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def entry_bytes(cfg, elem):
    """K + V bytes of one token over all layers, from the config."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem


def test_bench_rows_hold_the_expected_caches():
    lm = make_lm()
    cfg = BenchConfig(
        contexts=(30, 61),
        modes=("full", "anchor", "streaming:sink=2,window=9", "limit"),
        new_tokens=5,
        repeats=2,
        chunk_size=16,
    )
    text = "It rained. We stayed in, and read! Did you? No, I went out. " * 8
    res = run_bench(lm, cfg, text)
    per = entry_bytes(lm.model.config, 8)  # float64
    for n in (30, 61):
        row = res[str(n)]
        assert list(row) == [
            "full", "anchor", "streaming:sink=2,window=9", "limit", "hf_generate", "onepass", "backbone@16",
            "backbone@one-pass",
        ]  # fmt: skip
        ids = bench_tokens(lm, text, n + 5)
        kept_prefill = expected_kept(ids[:n], set(lm.anchor_ids))
        kept_end = expected_kept(ids, set(lm.anchor_ids))
        assert row["full"].kv_entries == n + 5 and row["full"].kv_bytes == (n + 5) * per
        assert row["anchor"].kv_entries_prefill == len(kept_prefill) and row["anchor"].kv_entries == len(kept_end)
        assert row["anchor"].kv_bytes == len(kept_end) * per and row["anchor"].kv_full_entries == n + 5
        assert row["streaming:sink=2,window=9"].kv_entries == 10  # 2 sinks + window - 1 recent entries
        # the limit: a full cache holding as many entries as the anchor cache after prefill
        assert row["limit"].kv_entries_prefill == len(kept_prefill)
        assert row["limit"].kv_entries == len(kept_prefill) + 5
        assert row["hf_generate"].kv_entries == n + 5
        assert row["onepass"].kv_entries == n and row["onepass"].kv_bytes == n * per
        assert row["backbone@16"].kv_entries == 0 and row["backbone@one-pass"].kv_bytes == 0  # no cache at all
        for mode, r in row.items():
            assert len(r.runs) == 2 and r.prefill_s > 0 and r.peak_mem_bytes > 0
            assert (r.decode_tok_s is None) == (mode in ("onepass", "backbone@16", "backbone@one-pass"))
            assert r.decode_tok_s is None or r.decode_tok_s > 0
            assert r.prefill_s == pytest.approx(
                sorted(x["prefill_s"] for x in r.runs)[0] / 2 + sorted(x["prefill_s"] for x in r.runs)[1] / 2
            )


def test_prefill_is_set_against_the_backbone_limit_and_one_pass():
    """Each mode prefills as the library does (full: one pass; the evicting ones: the model's chunk), and every ratio
    in a row is computed from the references measured in the same run."""
    lm = make_lm(chunk_size=16)
    cfg = BenchConfig(contexts=(40, 12), modes=("full", "anchor", "sepllm", "limit"), new_tokens=3, repeats=3)
    text = "It rained. We stayed in, and read! Did you? No, I went out. " * 8
    res = run_bench(lm, cfg, text)
    row = res["40"]
    assert list(row) == [
        "full", "anchor", "sepllm", "limit", "hf_generate", "onepass", "backbone@16", "backbone@one-pass",
    ]  # fmt: skip
    chunks = {m: r.chunk_size for m, r in row.items()}
    assert chunks == {
        "full": None, "anchor": 16, "sepllm": 16, "limit": None, "hf_generate": None, "onepass": None,
        "backbone@16": 16, "backbone@one-pass": None,
    }  # fmt: skip
    limit_of = {"anchor": "backbone@16", "sepllm": "backbone@16", "backbone@16": "backbone@16"}  # others: one pass
    for mode, r in row.items():
        assert r.prefill_s == pytest.approx(sorted(x["prefill_s"] for x in r.runs)[1])  # median of 3
        assert r.prefill_tok_s == pytest.approx((40 if mode != "limit" else r.kv_entries_prefill) / r.prefill_s)
        if mode == "limit":  # prefills only the anchor cache's entries: not comparable
            assert r.prefill_limit_s is r.prefill_of_limit is r.prefill_vs_onepass is None
            continue
        limit = row[limit_of.get(mode, "backbone@one-pass")]
        assert r.prefill_limit_s == limit.prefill_s
        assert r.prefill_of_limit == pytest.approx(limit.prefill_s / r.prefill_s)
        assert r.prefill_vs_onepass == pytest.approx(row["onepass"].prefill_s / r.prefill_s)
    for ref in ("onepass", "backbone@16", "backbone@one-pass"):
        assert row[ref].prefill_vs_onepass == pytest.approx(row["onepass"].prefill_s / row[ref].prefill_s)
    assert row["onepass"].prefill_vs_onepass == 1.0 and row["backbone@16"].prefill_of_limit == 1.0
    # a context no longer than the chunk is one pass for every mode: a single limit row
    short = res["12"]
    assert [m for m in short if m.startswith("backbone@")] == ["backbone@one-pass"]
    assert short["backbone@one-pass"].chunk_size is None and short["anchor"].chunk_size == 16
    assert all(r.prefill_limit_s == short["backbone@one-pass"].prefill_s for m, r in short.items() if m != "limit")
    # off: no reference rows and no ratios
    plain = run_bench(lm, BenchConfig(contexts=(20,), modes=("anchor",), new_tokens=2, repeats=1, compare_hf=False,
                                      prefill_limit=False), text)["20"]  # fmt: skip
    assert list(plain) == ["anchor"] and plain["anchor"].prefill_of_limit is plain["anchor"].prefill_vs_onepass is None


def test_best_of_repeats():
    lm = make_lm()
    cfg = BenchConfig(contexts=(24,), modes=("full", "anchor"), new_tokens=3, repeats=2, stat="best")
    row = run_bench(lm, cfg, "One. Two, three! Four? " * 10)["24"]
    for r in row.values():
        assert r.prefill_s == min(x["prefill_s"] for x in r.runs)
        if r.decode_tok_s is not None:
            assert r.decode_tok_s == max(x["decode_tok_s"] for x in r.runs)
    assert row["anchor"].prefill_vs_onepass == pytest.approx(row["onepass"].prefill_s / row["anchor"].prefill_s)


def test_backbone_limit_runs_the_model_on_each_chunk_alone():
    """The limit's work: every chunk through the decoder at its true positions, no cache; one pass = the model."""
    lm = make_lm()
    ids = torch.tensor([bench_tokens(lm, "Alpha beta. Gamma delta! " * 6, 50)])
    with torch.no_grad():
        full = lm.model(ids).logits[:, -1]  # (1, V)
        assert (backbone_forward(lm, ids, None) - full).abs().max() < 1e-10
        assert (backbone_forward(lm, ids, 80) - full).abs().max() < 1e-10  # a chunk longer than the context
        tail = lm.model(ids[:, 48:], position_ids=torch.arange(48, 50)[None]).logits[:, -1]  # the last chunk alone
        got = backbone_forward(lm, ids, 16)
        assert (got - tail).abs().max() < 1e-10 and (got - full).abs().max() > 1e-6


def test_roofline_from_counts():
    lm = make_lm()
    cfg = lm.model.config
    n_params = sum(p.numel() for p in lm.model.parameters())
    emb = cfg.vocab_size * cfg.hidden_size  # untied: the input embedding is a lookup, not a matmul
    c = decode_cost(lm.model, 100)
    assert c["bytes"] == n_params * 8 + 100 * entry_bytes(cfg, 8)
    assert c["flops"] == 2 * (n_params - emb) + 4 * cfg.num_hidden_layers * cfg.hidden_size * 100
    r = roofline(lm.model, {"full": 1000, "anchor": 60}, {"bytes_per_s": 1e9, "flops_per_s": 1e18})
    assert r["anchor"]["speedup_bytes"] == pytest.approx(
        decode_cost(lm.model, 1000)["bytes"] / decode_cost(lm.model, 60)["bytes"]
    )
    assert r["anchor"]["speedup_roofline"] == pytest.approx(r["anchor"]["speedup_bytes"])  # memory-bound machine
    assert r["full"]["speedup_flops"] == 1.0


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(contexts=()), "contexts is empty"),
        (dict(modes=("limit", "anchor")), "list 'anchor' before it"),
        (dict(repeats=0), "repeats must be >= 1"),
        (dict(new_tokens=0), "new_tokens must be >= 1"),
        (dict(stat="mean"), "stat must be one of median, best"),
    ],
)
def test_config_errors(kw, words):
    with pytest.raises(AnLLMError, match=None) as e:
        BenchConfig(**kw)
    assert words in str(e.value)


def test_context_longer_than_model_and_text():
    lm = make_lm()
    with pytest.raises(AnLLMError, match="supports 4096 positions"):
        run_bench(lm, BenchConfig(contexts=(4090,), new_tokens=8, warmup=False), "x. " * 5000)
    with pytest.raises(AnLLMError, match="longer --text-file"):
        run_bench(lm, BenchConfig(contexts=(100,), warmup=False), "Short. Text.")
    with pytest.raises(AnLLMError, match="budget must be >= 1"):
        run_bench(lm, BenchConfig(contexts=(20,), modes=("streaming:budget=0",), warmup=False), "A b. " * 20)


def test_builtin_passage_is_long_enough():
    text = builtin_passage()
    assert text.startswith("In the beginning God created the heaven and the earth.")
    assert len(text.split()) > 25000  # > 32k tokens for any English BPE of ~1.3 tokens per word


def test_cli_bench_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "b.html"
    rc = main(
        [
            "bench",
            "--model",
            "tiny-random",
            "--context",
            "24,48",
            "--new-tokens",
            "3",
            "--repeats",
            "1",
            "--modes",
            "full,anchor,limit",
            "--chunk-size",
            "16",
            "--stat",
            "best",
            "--json",
            "--plot",
            str(plot),
        ]
    )
    assert rc == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out.strip().splitlines()[-1])
    assert list(out) == ["24", "48"]
    for row in out.values():
        assert list(row)[:5] == ["full", "anchor", "limit", "hf_generate", "onepass"]
        for r in row.values():
            assert {"prefill_s", "decode_tok_s", "kv_entries", "kv_bytes", "peak_mem_bytes"} <= set(r)
            assert {"chunk_size", "prefill_limit_s", "prefill_of_limit", "prefill_vs_onepass"} <= set(r)
    assert list(out["48"])[5:] == ["backbone@16", "backbone@one-pass"]  # --chunk-size: the anchor mode's chunk
    assert out["48"]["anchor"]["chunk_size"] == 16 and out["48"]["full"]["chunk_size"] is None
    a = out["48"]["anchor"]
    assert a["prefill_of_limit"] == pytest.approx(out["48"]["backbone@16"]["prefill_s"] / a["prefill_s"])
    page = plot.read_text()
    assert plot.is_file() and "plotly" in page[:20000].lower()
    lines = {ln.split()[0]: ln for ln in cap.err.splitlines() if ln.startswith("  ") and "prefill" in ln}
    assert "decode x" in lines["anchor"] and "prefill x" in lines["anchor"]
    assert "decode x" in lines["limit"] and "prefill x" not in lines["limit"]  # it prefills part of the context
    assert "fraction of the backbone limit" in page and "speed-up over one-pass full prefill" in page
    assert "of limit" in cap.err and "x 1.00 one-pass" in cap.err
    assert main(["bench", "--model", "tiny-random", "--context", "5000"]) == 2
    assert "supports 4096 positions" in capsys.readouterr().err
