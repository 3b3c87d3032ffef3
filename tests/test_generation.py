import pytest
import torch

from anllm.compat import check_supported
from anllm.config import DEFAULT_CHUNK_SIZE, AnLLMError, GenerationConfig
from anllm.generation import (
    encode_prompt,
    generate,
    generate_batch,
    make_cache,
    prefill,
    prefill_chunk_size,
    sample_next,
    stream_generate,
)
from anllm.verify import masked_forward
from tests.conftest import ARCHS, make_lm
from tests.reference import expected_kept

pytestmark = pytest.mark.core
PROMPT = "The sun rose. Birds sang! Did the town wake? It did. People walked to the market and"


def gen(**kw):
    return GenerationConfig(chat=False, **{"max_new_tokens": 12, "stop_on_eos": False, **kw})


def test_stream_stats_follow_the_cache_rule():
    lm = make_lm()
    ids = encode_prompt(lm, PROMPT, chat=False)
    steps = list(stream_generate(lm, PROMPT, "anchor", gen()))
    assert [r.step for r in steps] == list(range(1, 13)) and steps[-1].finish_reason == "length"
    first = steps[0]
    assert first.prompt_tokens == len(ids)
    assert first.kv_entries == len(expected_kept(ids, set(lm.anchor_ids)))
    tokens = ids[:]
    for r in steps:
        # entries fed so far: the prompt plus every generated token except the one just produced
        assert r.kv_full_entries == len(tokens)
        assert r.kv_entries == len(expected_kept(tokens, set(lm.anchor_ids)))
        assert r.n_evicted == r.kv_full_entries - r.kv_entries
        assert r.is_anchor == (r.token in lm.anchor_ids)
        assert r.tokens_per_s > 0 and r.elapsed_s >= r.prefill_s > 0
        tokens.append(r.token)
    full = list(stream_generate(lm, PROMPT, "full", gen()))
    assert all(r.kv_entries == r.kv_full_entries and r.n_evicted == 0 for r in full)


def test_greedy_is_deterministic_and_sampling_is_seeded():
    lm = make_lm()
    a, b = generate(lm, PROMPT, "anchor", gen()), generate(lm, PROMPT, "anchor", gen())
    assert a.tokens == b.tokens
    s1 = generate(lm, PROMPT, "anchor", gen(temperature=1.0, seed=3))
    s2 = generate(lm, PROMPT, "anchor", gen(temperature=1.0, seed=3))
    s3 = generate(lm, PROMPT, "anchor", gen(temperature=1.0, seed=4))
    assert s1.tokens == s2.tokens and s1.tokens != s3.tokens
    assert generate(lm, PROMPT, "anchor", gen(temperature=0.7, top_k=1, seed=1)).tokens == a.tokens


def test_sampling_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    top_p = sample_next(logits, GenerationConfig(temperature=1.0, top_p=0.6), None, g)
    assert set(top_p.tolist()) == {0, 1}  # smallest prefix reaching 0.6 is {0.5, 0.3}
    top_k = sample_next(logits, GenerationConfig(temperature=1.0, top_k=3), None, g)
    assert set(top_k.tolist()) == {0, 1, 2}
    hist = torch.tensor([[0]])
    pen = sample_next(torch.tensor([[2.0, 1.5, -1.0]]), GenerationConfig(repetition_penalty=2.0), hist)
    assert pen.tolist() == [1]  # 2.0 / 2 = 1.0 < 1.5
    neg = sample_next(torch.tensor([[-1.0, -1.5]]), GenerationConfig(repetition_penalty=2.0), hist)
    assert neg.tolist() == [1]  # -1.0 * 2 = -2.0 < -1.5


def test_stop_string_and_eos():
    lm = make_lm()
    base = generate(lm, PROMPT, "anchor", gen(max_new_tokens=20))
    stop = base.text[5:7]
    cut = generate(lm, PROMPT, "anchor", gen(max_new_tokens=20, stop_strings=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == base.text[: base.text.find(stop)]
    lm.model.generation_config.eos_token_id = base.tokens[3]
    stopped = generate(lm, PROMPT, "anchor", gen(max_new_tokens=20, stop_on_eos=True))
    first = base.tokens.index(base.tokens[3])
    assert stopped.finish_reason == "eos" and stopped.tokens == base.tokens[:first]


def test_ac_mode_inserts_and_hides_ac():
    lm = make_lm(kind="ac")
    ids = encode_prompt(lm, "One. Two. Three", chat=False)
    assert ids.count(lm.anchor_ids[0]) == 3
    steps = list(stream_generate(lm, "One. Two. Three", "anchor", gen(max_new_tokens=30)))
    assert "<AC>" not in "".join(r.text for r in steps)
    assert steps[0].kv_entries == len(expected_kept(ids, set(lm.anchor_ids)))


def test_batched_anchor_decoding_equals_one_row_at_a_time():
    lm = make_lm()
    lm.tokenizer.padding_side = "left"
    prompts = [PROMPT, "Short. One", "no anchors here at all"]
    batched = generate_batch(lm, prompts, "anchor", gen())
    single = [generate_batch(lm, [p], "anchor", gen())[0] for p in prompts]
    assert batched == single


def test_chunked_prefill_never_builds_a_full_mask():
    lm = make_lm()
    lm.anchor = lm.anchor.replace(chunk_size=32)
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    T = ids.shape[1]
    cache = make_cache(lm, "anchor")
    shapes = []
    prepare = cache.prepare
    cache.prepare = lambda *a, **k: (lambda r: (shapes.append(tuple(r[0].shape)), r)[1])(prepare(*a, **k))
    with torch.no_grad():
        last = prefill(lm.model, cache, ids, chunk_size=32)
        anchor = torch.isin(ids, torch.tensor(lm.anchor_ids))
        ref = masked_forward(lm.model, ids, anchor)[:, -1]
    assert T > 600 and max(s[2] for s in shapes) == 32 and max(s[3] for s in shapes) < 100
    assert (last - ref).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_computes_only_the_logits_it_returns(arch):
    """Chunks where no row ends skip the LM head (zero positions); the result still equals one masked pass."""
    lm = make_lm(arch)
    text = " ".join(f"Line {i} ends here." for i in range(8))
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])  # (1, T)
    T = ids.shape[1]
    rows = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(a[0].shape[1]))
    try:
        with torch.no_grad():
            last = prefill(lm.model, make_cache(lm, "anchor"), ids, chunk_size=16)  # (1, V)
    finally:
        hook.remove()
    with torch.no_grad():
        ref = masked_forward(lm.model, ids, torch.isin(ids, torch.tensor(lm.anchor_ids)))[:, -1]
    assert rows == [0] * (-(-T // 16) - 1) + [1]  # one LM-head row in all: the last token's
    assert (last - ref).abs().max() < 1e-6
    # a padded batch: the LM head sees exactly the rows' last real positions, in the chunks that hold them
    for side in ("left", "right"):
        lm.tokenizer.padding_side = side
        enc = lm.tokenizer(["One. Two. Three four", "Short"], padding=True, return_tensors="pt")
        T = enc["input_ids"].shape[1]
        lasts = [int(x) for x in (enc["attention_mask"] * torch.arange(T)).argmax(-1)]
        rows.clear()
        hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(a[0].shape[1]))
        try:
            with torch.no_grad():
                prefill(lm.model, make_cache(lm, "anchor"), enc["input_ids"], enc["attention_mask"], chunk_size=4)
        finally:
            hook.remove()
        assert rows == [len({t for t in lasts if s <= t < s + 4}) for s in range(0, T, 4)]


def test_prefill_chunk_size_per_policy():
    """The full cache prefills in one pass (nothing to evict, the model's causal kernel); every evicting policy in the
    model's chunk (``--chunk-size``), 256 by default."""
    lm = make_lm(chunk_size=48)
    assert prefill_chunk_size(lm, lm.policy("full")) is None
    for mode in ("anchor", "anchor:sink=2", "streaming", "sepllm"):
        assert prefill_chunk_size(lm, lm.policy(mode)) == 48
        assert prefill_chunk_size(make_lm(), lm.policy(mode)) == DEFAULT_CHUNK_SIZE == 256


def test_bad_input_is_a_clear_error():
    lm = make_lm()
    for bad in ("", "   "):
        with pytest.raises(AnLLMError, match="prompt is empty"):
            list(stream_generate(lm, bad, "anchor", gen()))
    with pytest.raises(AnLLMError, match="unknown cache policy"):
        list(stream_generate(lm, PROMPT, "nope", gen()))
    lm.model.config.max_position_embeddings = 40
    with pytest.raises(AnLLMError, match="supports 40 positions"):
        list(stream_generate(lm, PROMPT * 2, "anchor", gen()))
    # past the positions, max_new_tokens is refused (not clamped), naming what fits; exactly what fits runs
    with pytest.raises(AnLLMError, match=r"max new tokens 100 \+ the prompt's 22 tokens .* at most 18 new tokens"):
        generate(lm, "Hi. there, how are you", "anchor", gen(max_new_tokens=100))
    with pytest.raises(AnLLMError, match="at most 18 new tokens"):
        generate_batch(lm, ["Hi. there, how are you"], "anchor", gen(max_new_tokens=19))
    near = generate(lm, "Hi. there, how are you", "anchor", gen(max_new_tokens=18, stop_on_eos=False))
    assert near.prompt_tokens + len(near.tokens) == 40 and near.finish_reason == "length"
    for kw in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"repetition_penalty": 0}, {"max_new_tokens": -1}):
        with pytest.raises(AnLLMError, match=next(iter(kw))):
            GenerationConfig(**kw)


def test_generation_with_no_anchor_is_finite():
    lm = make_lm()
    r = generate(lm, "no anchor anywhere in this prompt", "anchor", gen())
    assert r.n_evicted == 0 or any(t in lm.anchor_ids for t in r.tokens)
    ids = torch.tensor([lm.tokenizer("no anchor anywhere")["input_ids"]])
    cache = make_cache(lm, "anchor")
    with torch.no_grad():
        assert torch.isfinite(prefill(lm.model, cache, ids)).all()


def test_unsupported_architecture_and_backend():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(AnLLMError, match="gpt2.*not supported"):
        check_supported(gpt2)
    lm = make_lm()
    lm.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AnLLMError, match="flash_attention_2.*ignores custom 4D"):
        check_supported(lm.model)


def test_compact_positions_change_decoding_after_eviction():
    from anllm.generation import decode_step

    lm = make_lm()
    ids = torch.tensor([encode_prompt(lm, PROMPT, chat=False)])
    logits = {}
    for policy in ("true", "compact"):
        lm.anchor = lm.anchor.replace(position_policy=policy)
        cache = make_cache(lm, "anchor")
        with torch.no_grad():
            first = prefill(lm.model, cache, ids)  # one chunk from an empty cache: same positions either way
            logits[policy] = (first, decode_step(lm.model, cache, first.argmax(-1)))
    assert torch.equal(logits["true"][0], logits["compact"][0])
    assert (logits["true"][1] - logits["compact"][1]).abs().max() > 1e-6  # position 85 vs position 7
    assert torch.isfinite(logits["compact"][1]).all()


def test_batch_honours_stop_strings_like_the_single_path():
    lm = make_lm()
    lm.tokenizer.padding_side = "left"
    prompts = [PROMPT, "Short. One"]
    free = generate_batch(lm, prompts, "anchor", gen(max_new_tokens=20))
    text, other = (lm.tokenizer.decode(ids, skip_special_tokens=True) for ids in free)
    stop = text[12:14]  # a stop string the first row meets some tokens in, and the second never
    assert len(stop) == 2 and stop not in text[:12] and stop not in other
    batched = generate_batch(lm, prompts, "anchor", gen(max_new_tokens=20, stop_strings=(stop,)))
    single = generate(lm, PROMPT, "anchor", gen(max_new_tokens=20, stop_strings=(stop,)))
    assert single.finish_reason == "stop" and batched[0] == single.tokens and len(batched[0]) < len(free[0])
    assert lm.tokenizer.decode(batched[0], skip_special_tokens=True) == single.text + stop
    assert batched[1] == free[1]  # the row without the stop string runs to max_new_tokens


def test_batch_checks_the_prompt_against_the_models_positions():
    lm = make_lm()
    lm.tokenizer.padding_side = "left"
    lm.model.config.max_position_embeddings = 40
    with pytest.raises(AnLLMError, match="supports 40 positions"):
        generate_batch(lm, ["Hi", PROMPT * 2], "anchor", gen())
    room = 40 - len(encode_prompt(lm, "Hi. there, how are you", chat=False))
    with pytest.raises(AnLLMError, match=f"ask for at most {room} new tokens"):  # refused, never clamped
        generate_batch(lm, ["Hi. there, how are you", "Hi"], "anchor", gen(max_new_tokens=100))
    near = generate_batch(lm, ["Hi. there, how are you", "Hi"], "anchor", gen(max_new_tokens=room, stop_on_eos=False))
    assert len(near[0]) == room


def test_batch_repetition_penalty_skips_padding():
    """A padded row decodes as it does alone, even when the pad id is the token it picks next."""
    lm = make_lm()
    lm.tokenizer.padding_side = "left"
    short = "Short. One"
    g = gen(repetition_penalty=5.0, max_new_tokens=6)
    alone = generate_batch(lm, [short], "anchor", g)[0]
    assert alone[0] not in encode_prompt(lm, short, chat=False)
    lm.tokenizer.pad_token_id = alone[0]  # penalising padding would now change this row's first token
    assert generate_batch(lm, [PROMPT, short], "anchor", g)[1] == alone
