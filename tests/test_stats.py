"""RunStats: the one definition of per-run ratios, and the numbers every layer reads from it."""

import dataclasses

import pytest

from anllm.chat import ChatSession
from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import encode_prompt, generate, make_cache, stream_generate
from anllm.stats import RunStats, decode_rate
from anllm.ui.render import stats_row
from anllm.ui.runtime import ModeRun
from tests.conftest import make_lm
from tests.reference import expected_kept

pytestmark = pytest.mark.core
PROMPT = "The sun rose. Birds sang! Did the town wake? It did. People walked to the market and"


def gen(**kw):
    return GenerationConfig(chat=False, **{"max_new_tokens": 10, "stop_on_eos": False, **kw})


def test_ratios_from_hand_computed_numbers():
    s = RunStats(6, 100, kv_bytes=4096, new_tokens=8, prefill_s=0.5, elapsed_s=2.5)
    assert s.kv_kept_frac == pytest.approx(0.06) and s.kv_reduction == pytest.approx(0.94)  # C⇓ = 1 - 6/100
    assert s.tokens_per_s == pytest.approx(4.0)  # 8 tokens in the 2 s after the first one
    assert RunStats(0, 0).kv_kept_frac == 0.0 and RunStats(0, 0).tokens_per_s == 0.0
    assert decode_rate(3, 1.0, 1.0) == pytest.approx(3e9)  # no time yet: bounded, not a division by zero
    d = s.to_dict()
    assert d["kv_reduction"] == pytest.approx(0.94) and d["kv_entries"] == 6 and d["elapsed_s"] == 2.5


def test_frozen_and_validated():
    s = RunStats(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kv_entries = 3
    with pytest.raises(AnLLMError, match="kv_entries=-1"):
        RunStats(-1, 2)


def test_generation_numbers_come_from_one_stats_object():
    lm = make_lm()
    ids = encode_prompt(lm, PROMPT, chat=False)
    steps = list(stream_generate(lm, PROMPT, "anchor", gen()))
    seen = ids[:]
    for r in steps:
        s = r.stats
        assert s.tokens_per_s == r.tokens_per_s  # the stream's own number is the stats object's, bit for bit
        assert (s.new_tokens, s.prompt_tokens, s.kv_bytes, s.n_evicted) == (r.step, len(ids), r.kv_bytes, r.n_evicted)
        kept = len(expected_kept(seen, set(lm.anchor_ids)))  # independent of the cache
        assert s.kv_kept_frac == pytest.approx(kept / len(seen)) and s.kv_reduction == pytest.approx(
            1 - kept / len(seen)
        )
        seen.append(r.token)
    res = generate(lm, PROMPT, "anchor", gen())
    assert res.stats == dataclasses.replace(steps[-1].stats, prefill_s=res.prefill_s, elapsed_s=res.elapsed_s)
    assert res.kv_reduction == res.stats.kv_reduction and res.stats.tokens_per_s == res.tokens_per_s


def test_the_app_row_and_the_chat_line_read_the_stats():
    lm = make_lm()
    run = ModeRun("anchor", list(stream_generate(lm, PROMPT, "anchor", gen())))
    row, s = stats_row(run), run.last.stats
    assert row[3:7] == [s.new_tokens, s.kv_entries, s.kv_full_entries, round(s.kv_bytes / 1e6, 4)]
    assert row[7] == f"{s.kv_reduction:.1%}" and row[2] == round(s.tokens_per_s, 1)
    session = ChatSession(lm, "anchor", gen=gen(max_new_tokens=4), chat=False)
    assert session.stats()["kv_kept_frac"] == 0.0 and RunStats.of_cache(make_cache(lm)) == RunStats(0, 0)
    list(session.ask("Hello there. How are you?"))
    st = session.stats()
    assert st["kv_kept_frac"] == pytest.approx(st["kv_entries"] / st["tokens_seen"]) and 0 < st["kv_kept_frac"] < 1
    assert RunStats.of_cache(session.cache).kv_entries == st["kv_entries"]
