"""``custom_generate`` on anllm's default model (SmolLM2-135M-Instruct + its anchor adapter): greedy output equals
``anllm.generate``. Kept apart from tests/test_custom_generate.py so the core run on old transformers stays quick."""

import pytest
import torch

from anllm.config import GenerationConfig
from anllm.generation import encode_prompt, generate
from tests.test_custom_generate import hf_generate, out_cache


@pytest.mark.slow
def test_default_model_greedy_equals_anllm_generate():
    from anllm.models import load_model

    lm = load_model("default")
    note = (
        "Lighthouses guide ships at night. They stand on rocky coasts and islands. Their lamps turn in a fixed "
        "rhythm, so sailors can tell one light from another. Keepers once lived in them with their families. "
        "Most lights are automatic today. "
    )  # longer than the served window, so the anchor cache evicts whatever the answer's length
    ids = torch.tensor([encode_prompt(lm, note + "Tell me about lighthouses. Keep it short.", chat=True)])
    assert ids.shape[1] > lm.anchor.window
    out = hf_generate(lm, ids, anchor_config=lm.anchor, max_new_tokens=32, return_dict_in_generate=True)
    res = generate(lm, ids[0].tolist(), "anchor", GenerationConfig(max_new_tokens=32))
    want = res.tokens + ([lm.tokenizer.eos_token_id] if res.finish_reason == "eos" else [])
    assert out.sequences[0, ids.shape[1] :].tolist() == want
    assert int(out_cache(out).n_kept()[0]) == res.kv_entries < res.kv_full_entries
