"""``model.generate(custom_generate=<this repository>)`` decodes through anllm's cache; a bare PolicyCache refuses
to be used by a model forward that skipped ``prepare()``."""

from pathlib import Path

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from anllm.cache import PolicyCache
from anllm.compat import cache_kwarg
from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import encode_prompt, generate, generate_batch
from tests.conftest import make_lm

ROOT = Path(__file__).resolve().parents[1]  # holds custom_generate/generate.py, the layout transformers loads
pytestmark = pytest.mark.core  # also run against transformers 5.17 (its output names the cache past_key_values)
PROMPT = "The sun rose. Birds sang! Did the town wake? It did. People walked to the market and"


@pytest.fixture(scope="module")
def lm():
    return make_lm()


def hf_generate(lm, input_ids, **kw):
    return lm.model.generate(input_ids, custom_generate=str(ROOT), trust_remote_code=True, tokenizer=lm.tokenizer, **kw)


def prompt_ids(lm, text=PROMPT):
    return torch.tensor([encode_prompt(lm, text, chat=False)])


def anllm_tokens(lm, ids, mode, **gen):
    """What ``anllm.generate`` produces, with the EOS token kept as ``model.generate`` keeps it."""
    res = generate(lm, ids[0].tolist(), mode, GenerationConfig(chat=False, **gen))
    return res.tokens + ([lm.tokenizer.eos_token_id] if res.finish_reason == "eos" else []), res


def out_cache(out):
    """The cache of a ``return_dict_in_generate`` output: ``cache`` (transformers 5.24) or ``past_key_values``."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


class Collector(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("mode", ["anchor", "full", "streaming:sink=2,window=8"])
def test_greedy_equals_anllm_generate(lm, mode):
    ids = prompt_ids(lm)
    out = hf_generate(lm, ids, policy=mode, max_new_tokens=24, return_dict_in_generate=True)
    want, res = anllm_tokens(lm, ids, mode, max_new_tokens=24)
    assert out.sequences[0, : ids.shape[1]].tolist() == ids[0].tolist()
    assert out.sequences[0, ids.shape[1] :].tolist() == want
    cache = out_cache(out)
    assert isinstance(cache, PolicyCache)
    assert int(cache.n_kept()[0]) == res.kv_entries and int(cache.n_seen[0]) == res.kv_full_entries
    if mode == "full":
        assert res.kv_entries == res.kv_full_entries
    else:
        assert res.kv_entries < res.kv_full_entries / 2  # the cache really dropped entries


def test_anchor_settings_reach_the_cache(lm):
    ids = prompt_ids(lm)
    want, res = anllm_tokens(make_lm(window=6), ids, "anchor", max_new_tokens=8)  # same weights, a local window
    out = hf_generate(lm, ids, anchor_config={"window": 6}, max_new_tokens=8, return_dict_in_generate=True)
    assert out.sequences[0, ids.shape[1] :].tolist() == want
    assert int(out_cache(out).n_kept()[0]) == res.kv_entries
    plain = hf_generate(lm, ids, max_new_tokens=8, return_dict_in_generate=True)
    assert int(out_cache(plain).n_kept()[0]) < res.kv_entries  # the window keeps recent entries on top
    with pytest.raises(AnLLMError, match="unknown anchor setting"):
        hf_generate(lm, ids, anchor_config={"windw": 6}, max_new_tokens=2)


def test_the_former_argument_name_anchor_mode_still_picks_the_policy(lm):
    ids = prompt_ids(lm)
    want, res = anllm_tokens(lm, ids, "streaming:sink=2,window=8", max_new_tokens=6)
    with pytest.warns(DeprecationWarning, match="anchor_mode= will be removed"):
        out = hf_generate(
            lm, ids, anchor_mode="streaming:sink=2,window=8", max_new_tokens=6, return_dict_in_generate=True
        )
    assert out.sequences[0, ids.shape[1] :].tolist() == want and out_cache(out).policy == lm.policy(
        "streaming:sink=2,window=8"
    )
    assert int(out_cache(out).n_kept()[0]) == res.kv_entries


def test_batch_with_left_padding_equals_generate_batch(lm):
    prompts = [PROMPT, "Rain fell. The river rose and"]
    gen = GenerationConfig(chat=False, max_new_tokens=10)
    want = generate_batch(lm, prompts, "anchor", gen)
    seqs = [encode_prompt(lm, p, chat=False) for p in prompts]
    T, pad = max(map(len, seqs)), lm.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    out = hf_generate(lm, input_ids, attention_mask=mask, max_new_tokens=10, pad_token_id=pad)
    for row, w in zip(out[:, T:].tolist(), want):
        assert row[: len(w)] == w and all(t == pad for t in row[len(w) :])


def test_streamer_receives_the_prompt_then_each_token(lm):
    ids, streamer = prompt_ids(lm), Collector()
    out = hf_generate(lm, ids, max_new_tokens=7, streamer=streamer)
    assert streamer.puts[0] == ids.tolist()
    assert [p for put in streamer.puts[1:] for p in put] == out[0, ids.shape[1] :].tolist()
    assert len(streamer.puts) == 1 + out.shape[1] - ids.shape[1] and streamer.ended == 1


def test_sampling_is_reproducible_with_a_seed(lm):
    ids = prompt_ids(lm)

    def sample(seed, **kw):
        torch.manual_seed(seed)
        return hf_generate(lm, ids, do_sample=True, temperature=1.5, max_new_tokens=16, **kw)[0].tolist()

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    greedy = hf_generate(lm, ids, max_new_tokens=16)[0].tolist()
    assert sample(5, top_k=1) == greedy  # the sampling config reaches transformers' logits warpers


def test_stop_strings_stop(lm):
    ids = prompt_ids(lm)
    T = ids.shape[1]
    full = hf_generate(lm, ids, max_new_tokens=20)[0, T:].tolist()
    stop = lm.tokenizer.decode(full[5:7])  # two characters the greedy output reaches at its 7th token
    end = next(i for i in range(1, len(full) + 1) if stop in lm.tokenizer.decode(full[:i]))
    out = hf_generate(lm, ids, max_new_tokens=20, stop_strings=[stop])[0, T:].tolist()
    assert out == full[:end] and end < len(full)


def test_max_new_tokens_and_eos(lm):
    ids = prompt_ids(lm)
    T = ids.shape[1]
    out = hf_generate(lm, ids, max_new_tokens=5)
    assert out.shape == (1, T + 5)
    first = int(out[0, T])
    stopped = hf_generate(lm, ids, max_new_tokens=5, eos_token_id=first)
    assert stopped[0, T:].tolist() == [first]  # the first generated token made the EOS: one token, then stop


def test_clear_errors(lm):
    ids = prompt_ids(lm)
    with pytest.raises(AnLLMError, match="tokenizer="):
        lm.model.generate(ids, custom_generate=str(ROOT), trust_remote_code=True, max_new_tokens=2)
    with pytest.raises(AnLLMError, match="num_beams"):
        hf_generate(lm, ids, num_beams=2, max_new_tokens=2)
    with pytest.raises(AnLLMError, match="drop past_key_values"):
        hf_generate(lm, ids, past_key_values=PolicyCache(lm.model.config), max_new_tokens=2)


# -- the guard ---------------------------------------------------------------------------------------------------
def test_plain_generate_with_a_policy_cache_says_how_to_use_it(lm):
    cache = PolicyCache(lm.model.config, lm.policy("anchor"), lm.anchor_ids)
    with pytest.raises(AnLLMError, match="without prepare") as err:
        lm.model.generate(prompt_ids(lm), past_key_values=cache, max_new_tokens=3)
    for hint in ("custom_generate", "anllm.generate", "prepare", "evict"):
        assert hint in str(err.value)


def test_a_forward_must_feed_the_prepared_chunk(lm):
    cache = PolicyCache(lm.model.config, lm.policy("anchor"), lm.anchor_ids)
    ids = prompt_ids(lm)
    mask, pos = cache.prepare(ids[:, :10], dtype=lm.model.dtype)
    with pytest.raises(AnLLMError, match="got 12 tokens but prepare\\(\\) registered 10"):
        lm.model(input_ids=ids[:, :12], use_cache=True, **{cache_kwarg(lm.model): cache})
    cache = PolicyCache(lm.model.config, lm.policy("anchor"), lm.anchor_ids)
    mask, pos = cache.prepare(ids[:, :10], dtype=lm.model.dtype)
    lm.model(
        input_ids=ids[:, :10], attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kwarg(lm.model): cache}
    )
    cache.evict()
    assert int(cache.n_seen[0]) == 10
    with pytest.raises(AnLLMError, match="without prepare"):  # evict() consumed the chunk: the next needs prepare()
        lm.model(input_ids=ids[:, 10:11], use_cache=True, **{cache_kwarg(lm.model): cache})
