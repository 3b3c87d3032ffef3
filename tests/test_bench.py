"""The benchmark measures the right caches: KV entries and bytes per mode, the limit row, the roofline and the CLI."""

import json

import pytest

from anllm.bench import BenchConfig, bench_tokens, builtin_passage, decode_cost, roofline, run_bench
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
        assert list(row) == ["full", "anchor", "streaming:sink=2,window=9", "limit", "hf_generate"]
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
        for r in row.values():
            assert len(r.runs) == 2 and r.prefill_s > 0 and r.decode_tok_s > 0 and r.peak_mem_bytes > 0
            assert r.prefill_s == pytest.approx(
                sorted(x["prefill_s"] for x in r.runs)[0] / 2 + sorted(x["prefill_s"] for x in r.runs)[1] / 2
            )


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
            "--json",
            "--plot",
            str(plot),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out) == ["24", "48"]
    for row in out.values():
        assert list(row) == ["full", "anchor", "limit", "hf_generate"]
        for r in row.values():
            assert {"prefill_s", "decode_tok_s", "kv_entries", "kv_bytes", "peak_mem_bytes"} <= set(r)
    assert plot.is_file() and "plotly" in plot.read_text()[:20000].lower()
    assert main(["bench", "--model", "tiny-random", "--context", "5000"]) == 2
    assert "supports 4096 positions" in capsys.readouterr().err
