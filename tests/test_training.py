"""Training on tiny models: loss goes down, labels and <AC> rows, exact resume, losses, eval, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F

from anllm.config import AC_TOKEN, AnchorConfig, AnLLMError
from anllm.train.config import TrainConfig
from anllm.train.loop import SampleOrder, lr_lambda, prepare_model, process_slice, train
from anllm.train.losses import anchor_attention, token_kl, token_nll

PROSE = [
    "The cat sat on the mat. It was warm! Was it happy? The dog ran to the park.",
    "My friend read a book. The old man saw a bird. Our teacher ate an apple.",
    "A girl found a key. The key was old. She opened the door and went in.",
    "Rain fell all day. The river rose. Nobody went out until the evening came.",
]
ALPACA = [
    {"instruction": "Repeat the word.", "input": "cat", "output": "cat cat."},
    {"instruction": "Say hello.", "input": "", "output": "Hello there. Nice day!"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Count to three.", "input": "", "output": "One, two, three."},
]


@pytest.fixture
def data(tmp_path):
    (tmp_path / "pt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PROSE))
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    (tmp_path / "heldout.txt").write_text("The bird sat on the key. It was old. The girl ran to the river.")
    return tmp_path


def cfg_for(data, mode="pretrain", **kw) -> TrainConfig:
    base = dict(
        model="tiny-random",
        objective=mode,
        train_files=[str(data / ("sft.jsonl" if mode == "sft" else "pt.jsonl"))],
        output_dir=str(data / f"out-{mode}-{kw.get('anchors', 'ep')}-{kw.get('finetune', 'full')}"),
        block_size=512 if mode == "sft" else 128,
        batch_size=2,
        max_steps=30,
        lr=3e-3,
        lr_scheduler="constant",
        save_every=0,
        progress=False,
        seed=3,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("mode", ["pretrain", "sft"])
@pytest.mark.parametrize("anchors", ["ep", "ac"])
def test_loss_decreases(data, mode, anchors):
    res = train(cfg_for(data, mode, anchors=anchors))
    losses = [res.losses[s] for s in sorted(res.losses)]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3


def test_ac_rows_from_dot_and_tokenizer_reloads(data):
    from transformers import AutoTokenizer

    from anllm.train.loop import prepare_model

    cfg = cfg_for(data, anchors="ac", max_steps=2, save_every=1)
    model, lm, _ = prepare_model(cfg)
    ac, dot = lm.tokenizer.convert_tokens_to_ids(AC_TOKEN), lm.tokenizer.convert_tokens_to_ids(".")
    assert lm.anchor_ids == (ac,) and ac == len(lm.tokenizer) - 1
    assert torch.equal(model.get_input_embeddings().weight[ac], model.get_input_embeddings().weight[dot])
    assert torch.equal(model.get_output_embeddings().weight[ac], model.get_output_embeddings().weight[dot])

    res = train(cfg)
    for path in (res.output_dir / "checkpoints" / "step-0000001" / "tokenizer", res.final_dir):
        reloaded = AutoTokenizer.from_pretrained(path)
        assert reloaded.get_vocab() == lm.tokenizer.get_vocab()
        text = "Hi. <AC> Bye! <AC>"
        assert reloaded(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
        assert reloaded(text)["input_ids"].count(ac) == 2


@pytest.mark.parametrize(
    "kw",
    [dict(anchors="ac"), dict(finetune="lora", loss="lm+kl", lora_r=4, lr=1e-2, lr_scheduler="cosine", warmup_steps=3)],
    ids=["full-ac-lm", "lora-ep-lm+kl"],
)
def test_kill_after_checkpoint_and_resume_matches_unbroken_run(data, kw):
    unbroken = train(cfg_for(data, max_steps=12, save_every=4, output_dir=str(data / "a"), **kw))

    class Killed(Exception):
        pass

    def kill_at_7(step, _):
        if step == 7:  # after the step-4 checkpoint, before the next one
            raise Killed

    cfg = cfg_for(data, max_steps=12, save_every=4, output_dir=str(data / "b"), **kw)
    with pytest.raises(Killed):
        train(cfg, on_step_end=kill_at_7)
    with pytest.raises(AnLLMError, match="--resume"):
        train(cfg)  # refuses to start over on top of checkpoints
    resumed = train(cfg, resume=True)
    assert resumed.start_step == 4
    for step in range(5, 13):
        assert resumed.losses[step] == pytest.approx(unbroken.losses[step], rel=1e-5, abs=1e-6), step
    from safetensors.torch import load_file

    pa = load_file(str(data / "a" / "checkpoints" / "step-0000012" / "trainable.safetensors"))
    pb = load_file(str(data / "b" / "checkpoints" / "step-0000012" / "trainable.safetensors"))
    assert pa.keys() == pb.keys() and all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
    steps = [json.loads(line)["step"] for line in (data / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the killed run's steps 5-7 were trimmed, then recomputed once


def test_resume_needs_a_checkpoint(data):
    with pytest.raises(AnLLMError, match="no complete checkpoint"):
        train(cfg_for(data, output_dir=str(data / "none")), resume=True)


def test_gradient_accumulation_equals_one_big_batch(data):
    big = train(cfg_for(data, batch_size=4, grad_accum=1, max_steps=6, output_dir=str(data / "big")))
    acc = train(cfg_for(data, batch_size=1, grad_accum=4, max_steps=6, output_dir=str(data / "acc")))
    for step in big.losses:
        assert acc.losses[step] == pytest.approx(big.losses[step], rel=1e-5)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_kl_is_zero_without_anchors_at_init(data, finetune):
    (data / "plain.jsonl").write_text(json.dumps({"text": "no sentence end here, only commas, and words"}) + "\n")
    cfg = cfg_for(data, finetune=finetune, loss="kl", max_steps=1, train_files=[str(data / "plain.jsonl")])
    res = train(cfg)  # no anchor: AnSAN == causal, and the student starts as the teacher (LoRA B = 0 / a copy)
    assert res.losses[1] == pytest.approx(0.0, abs=1e-6)
    cfg = cfg_for(data, finetune=finetune, loss="kl", max_steps=1, output_dir=str(data / "kl2"))
    assert train(cfg).losses[1] > 1e-4  # with anchors the masked student differs from the full teacher


def test_lora_with_ac_trains_the_ac_row(data):
    from safetensors.torch import load_file

    from anllm.train.loop import prepare_model

    cfg = cfg_for(data, finetune="lora", anchors="ac", lora_r=4, max_steps=3)
    _, lm, _ = prepare_model(cfg)
    dot_row = lm.model.get_input_embeddings().weight[lm.tokenizer.convert_tokens_to_ids(".")].detach().clone()
    res = train(cfg)
    params = load_file(str(res.output_dir / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    token_rows = [params[k] for k in params if "trainable_tokens" in k]
    assert len(token_rows) == 1 and token_rows[0].shape == (1, dot_row.shape[0])
    assert not torch.allclose(token_rows[0][0], dot_row)  # the <AC> row started as "." and has learned
    assert any("lora_A" in k for k in params)


def test_token_kl_matches_torch_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, -100, 3, 4], [5, -100, -100, 6, 7]])
    keep = labels[:, 1:] != -100
    ref = F.kl_div(
        F.log_softmax(s[:, :-1][keep] / 2, -1), F.log_softmax(t[:, :-1][keep] / 2, -1), log_target=True, reduction="sum"
    )
    assert token_kl(s, t, labels, temperature=2.0) == pytest.approx(float(ref) * 4, rel=1e-5)


def test_eval_anchor_ppl_equals_anchor_cache_decoding(data):
    from anllm.generation import forward_chunk, make_cache
    from anllm.train.loop import evaluate_perplexity
    from tests.conftest import make_lm

    lm = make_lm(dtype=torch.float64)
    ids = lm.tokenizer("It is late. We go home! Is it dark? Yes it is.")["input_ids"]
    got = evaluate_perplexity(lm.model, [ids], lm.anchor_ids, {}, "cpu")
    cache = make_cache(lm, "anchor")
    with torch.no_grad():
        logits = torch.cat([forward_chunk(lm.model, cache, torch.tensor([[t]])) for t in ids], 1)
    nll = F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]), reduction="mean")
    assert got["ppl_anchor"] == pytest.approx(float(nll.exp()), rel=1e-9)
    full = F.cross_entropy(lm.model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]))
    assert got["ppl_full"] == pytest.approx(float(full.exp()), rel=1e-9)


def test_eval_logged_and_anchor_ppl_improves(data):
    res = train(cfg_for(data, eval_file=str(data / "heldout.txt"), eval_every=15, max_steps=30))
    assert [e["step"] for e in res.evals] == [0, 15, 30]
    assert res.evals[-1]["eval_ppl_anchor"] < res.evals[0]["eval_ppl_anchor"]
    lines = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert len(train_lines) == 30 and all(x["lr"] > 0 and x["tokens_per_s"] > 0 for x in train_lines)


def test_sample_order_and_process_slices():
    order = SampleOrder(5, seed=1)
    stream = [order[p] for p in range(15)]
    assert all(sorted(stream[i : i + 5]) == list(range(5)) for i in (0, 5, 10))
    indices = list(range(8))  # global batch 8 = 2 micro x 2 ranks x 2 rows
    parts = [process_slice(indices, m, r, 2, 2) for m in range(2) for r in range(2)]
    assert sorted(i for p in parts for i in p) == indices


def test_lr_schedule_shapes():
    cfg = TrainConfig.from_dict(dict(lr_scheduler="cosine", warmup_steps=4, min_lr_ratio=0.1))
    f = lr_lambda(cfg, 20)
    warm = [f(s) for s in range(4)]
    assert warm == sorted(warm) and warm[-1] < 1 and f(4) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.1) and all(f(s) >= f(s + 1) for s in range(4, 20))


def test_stale_temporary_checkpoint_is_ignored(data):
    from anllm.train.checkpoint import latest_checkpoint

    res = train(cfg_for(data, max_steps=4, save_every=2, output_dir=str(data / "c")))
    root = res.output_dir / "checkpoints"
    (root / ".step-0000006.tmp").mkdir()  # a save killed half-way
    (root / "step-0000008").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(res.output_dir) == root / "step-0000004"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000002", "step-0000004", "step-0000008"]


def test_cli_train_and_errors(data, capsys):
    from anllm.cli import main

    cfg = data / "cfg.yaml"
    cfg.write_text(f"model: tiny-random\ntrain_files: [{data / 'pt.jsonl'}]\nmax_steps: 2\nprogress: false\n")
    assert main(["train", "--config", str(cfg), "--set", f"output_dir={data / 'cli'}"]) == 0
    assert (data / "cli" / "final" / "model.safetensors").is_file()
    assert main(["train", "--config", str(cfg), "--set", "nonsense=1"]) == 2
    assert "unknown training setting 'nonsense'" in capsys.readouterr().err


@pytest.mark.gpu
def test_flex_attention_matches_dense_on_gpu(data):
    from anllm.train.data import build_examples, collate
    from anllm.train.loop import prepare_model
    from anllm.train.losses import micro_batch_loss

    cfg = cfg_for(data, precision="fp32")
    model, lm, _ = prepare_model(cfg)
    model = model.cuda()
    examples, _ = build_examples(cfg, lm.tokenizer)
    batch = {k: v.cuda() for k, v in collate(examples, lm.tokenizer.pad_token_id).items()}
    dense, _ = micro_batch_loss(model, batch, lm.anchor_ids, cfg, path="dense")
    model.config._attn_implementation = "flex_attention"
    flex, _ = micro_batch_loss(model, batch, lm.anchor_ids, cfg, path="flex")
    assert float(flex) == pytest.approx(float(dense), rel=1e-3)


def test_objective_key_and_its_former_name(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model: tiny-random\nmode: sft\n")
    assert TrainConfig.load(old).data.objective == "sft"  # a config written before the rename
    assert TrainConfig.load(None, ["mode=sft"]).data.objective == "sft"
    assert TrainConfig.load(None, ["objective=sft"]).data.objective == "sft"
    assert "objective" in TrainConfig().flat() and "mode" not in TrainConfig().flat()
    with pytest.raises(AnLLMError, match="data.objective is given twice"):
        TrainConfig.from_dict({"mode": "sft", "objective": "sft"})
    with pytest.raises(AnLLMError, match="TrainConfig.objective must be one of pretrain, sft"):
        TrainConfig.from_dict({"objective": "finetune"})


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"kl_weight": -1}, "TrainConfig.kl_weight must be >= 0"),
        ({"kl_temperature": 0}, "TrainConfig.kl_temperature must be > 0"),
        ({"weight_decay": -0.1}, "TrainConfig.weight_decay must be >= 0"),
        ({"max_grad_norm": -1}, "TrainConfig.max_grad_norm must be >= 0"),
    ],
)
def test_validation_messages_name_the_setting(setting, message):
    with pytest.raises(AnLLMError, match=message):
        TrainConfig.from_dict(setting)


def test_shipped_configs_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).parents[1] / "configs"
    train_cfgs = sorted(root.glob("*.yaml"))
    assert len(train_cfgs) >= 5
    for path in train_cfgs:
        TrainConfig.load(path)  # raises on an unknown key or a bad value
    kinds = {load_config_from_file(str(p)).distributed_type.value for p in (root / "accelerate").glob("*.yaml")}
    assert kinds == {"FSDP", "DEEPSPEED"}
    ds = json.loads((root / "deepspeed" / "zero3-offload.json").read_text())
    paper = TrainConfig.load(root / "paper-cpt-ep-7b.yaml")
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_accumulation_steps"] == paper.optim.grad_accum
    assert ds["train_micro_batch_size_per_gpu"] == paper.optim.batch_size


def test_final_lora_adapter_reloads_with_peft(data):
    from peft import PeftModel
    from safetensors.torch import load_file

    from anllm.models import load_model

    res = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=3))
    trained = load_file(str(res.output_dir / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    assert sorted(p.name for p in res.final_dir.glob("adapter_*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    peft_model = PeftModel.from_pretrained(load_model("tiny-random").model, str(res.final_dir))
    reloaded = dict(peft_model.named_parameters())
    assert set(trained) <= set(reloaded)
    assert all(torch.equal(reloaded[k], v) for k, v in trained.items())
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # B moved away from its zero init


def test_export_adapter_in_bfloat16_merges_the_rounded_delta(data):
    """``export_adapter`` writes what ``--model default`` loads; in bfloat16 the merged weight change is exactly
    scale * B @ A of the rounded factors, computed here by hand."""
    from safetensors.torch import load_file

    from anllm.models import _apply_adapter, export_adapter, load_model

    res = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=3, lr=1e-2))
    ship = export_adapter(res.final_dir, data / "ship", AnchorConfig(n_sink=1, window=16), dtype=torch.bfloat16,
                          base="org/base")  # fmt: skip
    src, out = (
        load_file(str(res.final_dir / "adapter_model.safetensors")),
        load_file(str(ship / "adapter_model.safetensors")),
    )
    assert set(out) == set(src) and all(
        v.dtype == torch.bfloat16 and torch.equal(v, src[k].bfloat16()) for k, v in out.items()
    )
    assert (ship / "adapter_model.safetensors").stat().st_size < 0.6 * (
        res.final_dir / "adapter_model.safetensors"
    ).stat().st_size
    assert json.loads((ship / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"
    assert json.loads((ship / "anchor.json").read_text()) == {"kind": "ep", "n_sink": 1, "window": 16}
    base = load_model("tiny-random").model
    merged, anchor = _apply_adapter(load_model("tiny-random").model, ship, notes=[])
    assert (anchor.n_sink, anchor.window) == (1, 16)
    key = next(k for k in out if "lora_A" in k)  # base_model.model.<module>.lora_A.weight
    module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
    a, b = out[key].float(), out[key.replace("lora_A", "lora_B")].float()  # (r, in), (out, r)
    w0, w1 = base.get_parameter(module + ".weight"), merged.get_parameter(module + ".weight")
    torch.testing.assert_close(w1 - w0, (32 / 4) * b @ a, rtol=0, atol=1e-6)  # lora_alpha 32 / r 4
    with pytest.raises(AnLLMError, match="adapter_config.json not found"):
        export_adapter(data, data / "nowhere", AnchorConfig())


def test_lora_starts_from_a_saved_adapter(data):
    """``init_adapter`` continues a shipped or earlier adapter (e.g. on new data): weights, shape and trainability."""
    from safetensors.torch import load_file

    first = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=3, lr=1e-2))
    saved = load_file(str(first.final_dir / "adapter_model.safetensors"))
    cfg = cfg_for(data, finetune="lora", lora_r=8, init_adapter=first.final_dir, output_dir=str(data / "cont"))
    model, _, _ = prepare_model(cfg)
    params = {k.replace(".default", ""): p for k, p in model.named_parameters() if "lora_" in k}
    assert set(params) == set(saved) and all(p.requires_grad for p in params.values())
    assert all(torch.equal(params[k], v) for k, v in saved.items())  # the saved weights, at the saved r = 4
    assert all(p.shape[0] == 4 for k, p in params.items() if "lora_A" in k)
    res = train(cfg.replace(max_steps=2, lr=1e-2))
    moved = load_file(str(res.final_dir / "adapter_model.safetensors"))
    assert set(moved) == set(saved) and any(not torch.equal(moved[k], saved[k]) for k in saved)


def test_grow_lora_rank_keeps_the_model_and_trains_the_new_directions(data):
    """``grow_lora_r``: rank 4 -> 7 computes the same logits at step 0; the new directions then get gradients."""
    first = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=3, lr=1e-2))
    base = cfg_for(data, finetune="lora", init_adapter=first.final_dir, output_dir=str(data / "grown"))
    kept, _, _ = prepare_model(base)
    grown, _, _ = prepare_model(base.replace(grow_lora_r=7))
    ids = torch.randint(0, 50, (2, 19))  # (B, T)
    with torch.no_grad():
        want, got = kept(input_ids=ids).logits, grown(input_ids=ids).logits  # (B, T, V)
        with kept.disable_adapter():
            plain = kept(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # the saved adapter does change the model, so equality means something
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert grown.peft_config["default"].r == 7
    assert grown.peft_config["default"].lora_alpha / 7 == pytest.approx(kept.peft_config["default"].lora_alpha / 4)
    n = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert n(grown) == n(kept) * 7 // 4
    grown(input_ids=ids, labels=ids).loss.backward()
    new_b = [m.lora_B["default"].weight.grad[:, 4:] for m in grown.modules() if hasattr(m, "lora_B")]
    assert new_b and all(g.abs().sum() > 0 for g in new_b)  # zero columns, yet trainable: their A rows are random
    res = train(base.replace(grow_lora_r=7, max_steps=2, lr=1e-2))
    assert json.loads((res.final_dir / "adapter_config.json").read_text())["r"] == 7


def test_bf16_autocast_on_cpu(data):
    """``precision: bf16`` also works on CPU (autocast; twice as fast as float32 on CPUs with AVX512-BF16): the
    master weights stay float32 and the first step's loss matches the float32 run's to bf16 accuracy."""
    fp32 = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=6, precision="fp32", output_dir=str(data / "a")))
    bf16 = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=6, precision="bf16", output_dir=str(data / "b")))
    assert json.loads((bf16.output_dir / "config.json").read_text())["run"]["precision"] == "bf16"
    assert bf16.losses[1] == pytest.approx(fp32.losses[1], rel=0.02) and bf16.losses[1] != fp32.losses[1]  # bf16 ran
    assert bf16.losses[6] < bf16.losses[1]  # it learns
    from safetensors.torch import load_file

    saved = load_file(str(bf16.final_dir / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_grow_lora_rank_errors(data):
    with pytest.raises(AnLLMError, match="set init_adapter"):
        cfg_for(data, finetune="lora", grow_lora_r=8)
    first = train(cfg_for(data, finetune="lora", lora_r=4, max_steps=1, output_dir=str(data / "r4")))
    with pytest.raises(AnLLMError, match="below the saved adapter's r = 4"):
        prepare_model(cfg_for(data, finetune="lora", init_adapter=first.final_dir, grow_lora_r=2))


def test_init_adapter_errors(data):
    with pytest.raises(AnLLMError, match="finetune: lora"):
        cfg_for(data, init_adapter=str(data))
    with pytest.raises(AnLLMError, match="adapter_config.json"):
        cfg_for(data, finetune="lora", init_adapter=str(data / "nowhere"))


def test_full_attention_kl_term(data):
    cfg = cfg_for(data, finetune="lora", loss="kl", full_kl_weight=0.5, lora_r=4, max_steps=4, lr=1e-2)
    res = train(cfg)
    lines = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    assert first["kl_full"] == pytest.approx(0.0, abs=1e-6) and first["kl"] > 1e-4  # LoRA starts as the teacher
    assert last["kl_full"] > 0  # training moved the full-attention student away from the teacher
    for x in lines:
        assert x["loss"] == pytest.approx(x["kl"] + 0.5 * x["kl_full"], rel=1e-6)
    with pytest.raises(AnLLMError, match="full_kl_weight"):
        TrainConfig.from_dict(dict(full_kl_weight=-1))


def test_train_leaves_the_callers_config_alone(data):
    """``precision: auto`` resolves per machine: the saved config gets the resolved value; the caller keeps auto."""
    cfg = cfg_for(data, finetune="lora", lora_r=4, max_steps=1, precision="auto", output_dir=str(data / "auto"))
    before = cfg.to_dict()
    res = train(cfg)
    assert cfg.run.precision == "auto" and cfg.to_dict() == before
    assert json.loads((res.output_dir / "config.json").read_text())["run"]["precision"] in ("fp32", "bf16")


def test_weighted_losses_and_target_term():
    torch.manual_seed(1)
    s, t = torch.randn(1, 6, 9), torch.randn(1, 6, 9)
    labels = torch.tensor([[1, 2, 3, -100, 4, 5]])
    w = torch.tensor([[1.0, 2.0, 0.5, 1.0, 3.0, 0.0]])
    lp_s, lp_t = F.log_softmax(s[0, :-1], -1), F.log_softmax(t[0, :-1], -1)
    nll = [-float(lp_s[i, labels[0, i + 1]]) if labels[0, i + 1] >= 0 else 0.0 for i in range(5)]
    kl = [float((lp_t[i].exp() * (lp_t[i] - lp_s[i])).sum()) if labels[0, i + 1] >= 0 else 0.0 for i in range(5)]
    assert float(token_nll(s, labels, w)) == pytest.approx(sum(a * b for a, b in zip(nll, w[0, 1:].tolist())))
    assert float(token_kl(s, t, labels, weights=w)) == pytest.approx(sum(a * b for a, b in zip(kl, w[0, 1:].tolist())))
    assert float(token_nll(s, labels)) == pytest.approx(sum(nll))


def test_target_lm_term_is_added_on_marked_tokens(data):
    from anllm.train.losses import micro_batch_loss
    from tests.conftest import make_lm

    lm = make_lm(dtype=torch.float64)
    ids = torch.tensor([lm.tokenizer("It is late. We go home.")["input_ids"]])
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[0, -4:] = True
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids), "targets": targets,
             "weights": torch.ones(ids.shape, dtype=torch.float64)}  # fmt: skip
    plain = TrainConfig.from_dict(dict(loss="lm"))
    with_target = TrainConfig.from_dict(dict(loss="lm", target_lm_weight=2.0))
    base, _ = micro_batch_loss(lm.model, batch, lm.anchor_ids, plain)
    got, _ = micro_batch_loss(lm.model, batch, lm.anchor_ids, with_target)
    mask, pos = anchor_attention(ids, batch["attention_mask"], lm.anchor_ids, {}, path="dense")
    logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    only = token_nll(logits, ids, targets.double())  # the answer tokens' NLL alone
    assert float(got - base) == pytest.approx(2.0 * float(only), rel=1e-9)
