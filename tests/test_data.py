"""Training data: record formats, SFT label masking, AC insertion, packing, truncation and bad input."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from anllm.anchors import split_sentences
from anllm.config import AC_TOKEN, AnLLMError
from anllm.models import tiny_tokenizer
from anllm.train.config import TrainConfig
from anllm.train.corpus import build_corpus
from anllm.train.data import IGNORE_INDEX, build_examples, collate, eval_blocks, translation_to_alpaca

RECORDS = [
    {"instruction": "Name a colour. Keep it short.", "input": "", "output": "Blue. It is calm."},
    {"instruction": "Repeat the word.", "input": "The word is cat. Say it twice.", "output": "cat cat."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def tok():
    tk = tiny_tokenizer()
    tk.add_tokens([AC_TOKEN])
    return tk


def test_sft_labels_masked_on_prompt_token_by_token(tmp_path, tok):
    cfg = TrainConfig.from_dict(
        dict(mode="sft", train_files=[write_jsonl(tmp_path / "a.jsonl", RECORDS)], block_size=4096)
    )
    examples, stats = build_examples(cfg, tok)
    assert stats.n_examples == 2 and stats.n_truncated == 0
    for rec, ex in zip(RECORDS, examples):
        text = tok.decode(ex.input_ids, skip_special_tokens=False)
        prompt_len = len(text) - len(rec["output"]) - len("</s>")  # char tokenizer: one token per character
        assert text.endswith(rec["output"] + "</s>")
        assert text[:prompt_len].endswith("### Response:\n") and rec["instruction"] in text[:prompt_len]
        assert (rec["input"] in text[:prompt_len]) and (("### Input:" in text) == bool(rec["input"]))
        for i, (tid, lab) in enumerate(zip(ex.input_ids, ex.labels)):
            assert lab == (IGNORE_INDEX if i < prompt_len else tid), i


def test_ac_inserted_in_prompt_and_response(tmp_path, tok):
    cfg = TrainConfig.from_dict(
        dict(mode="sft", anchors="ac", train_files=[write_jsonl(tmp_path / "a.jsonl", RECORDS[1:])])
    )
    (ex,), _ = build_examples(cfg, tok)
    ac = tok.convert_tokens_to_ids(AC_TOKEN)
    n_prompt = sum(lab == IGNORE_INDEX for lab in ex.labels)
    prompt_ac = ex.input_ids[:n_prompt].count(ac)
    rec = RECORDS[1]
    from anllm.train.data import PREAMBLE_INPUT

    expected = sum(len(split_sentences(s)) for s in (PREAMBLE_INPUT, rec["instruction"], rec["input"]))
    assert prompt_ac == expected == 2 + 1 + 2
    response = tok.decode(ex.input_ids[n_prompt:], skip_special_tokens=False)
    assert response == "cat cat. <AC></s>"


def test_ep_text_is_unchanged(tmp_path, tok):
    text = "One. Two! Three?"
    f = tmp_path / "t.txt"
    f.write_text(text)
    (ex,), _ = build_examples(TrainConfig.from_dict(dict(train_files=[str(f)])), tok)
    assert tok.decode(ex.input_ids) == text + "</s>" and ex.labels == ex.input_ids


def test_translation_pairs_become_alpaca(tmp_path, tok):
    rec = translation_to_alpaca({"translation": {"de": "Hallo Welt.", "en": "Hello world."}}, "de", "en")
    assert rec == {
        "instruction": "Translate the following text from German to English.",
        "input": "Hallo Welt.",
        "output": "Hello world.",
    }
    path = write_jsonl(tmp_path / "mt.jsonl", [{"de": "Guten Tag.", "en": "Good day."}])
    cfg = TrainConfig.from_dict(dict(mode="sft", data_format="translation", train_files=[path]))
    (ex,), _ = build_examples(cfg, tok)
    text = tok.decode(ex.input_ids)
    assert "Guten Tag." in text and text.endswith("Good day.</s>")
    with pytest.raises(AnLLMError, match="'de'"):
        translation_to_alpaca({"fr": "x", "en": "y"}, "de", "en")


def test_packing_concatenates_documents_into_full_blocks(tmp_path, tok):
    docs = [{"text": "abc. " * n} for n in (3, 7, 1, 12, 5)]
    cfg = TrainConfig.from_dict(
        dict(train_files=[write_jsonl(tmp_path / "p.jsonl", docs)], packing=True, block_size=16)
    )
    examples, stats = build_examples(cfg, tok)
    stream = [t for d in docs for t in tok(d["text"])["input_ids"] + [tok.eos_token_id]]
    flat = [t for e in examples for t in e.input_ids]
    assert flat == stream[: len(flat)] and len(stream) - len(flat) < 2  # a 1-token tail predicts nothing
    assert all(len(e.input_ids) == 16 for e in examples[:-1]) and stats.n_truncated == 0
    with pytest.raises(AnLLMError, match="packing"):
        TrainConfig.from_dict(dict(mode="sft", packing=True))


def test_overlong_examples_truncated_warned_and_counted(tmp_path, tok, caplog):
    docs = [{"text": "x" * 50}, {"text": "short"}, {"text": "y" * 80}]
    cfg = TrainConfig.from_dict(dict(train_files=[write_jsonl(tmp_path / "l.jsonl", docs)], block_size=32))
    with caplog.at_level(logging.WARNING, logger="anllm.train.data"):
        examples, stats = build_examples(cfg, tok)
    assert stats.n_truncated == 2 and [len(e.input_ids) for e in examples] == [32, 6, 32]
    assert "2 of 3 examples" in caplog.text and "truncated" in caplog.text


def test_sft_prompt_filling_the_block_is_dropped(tmp_path, tok):
    cfg = TrainConfig.from_dict(
        dict(mode="sft", train_files=[write_jsonl(tmp_path / "a.jsonl", RECORDS)], block_size=64)
    )
    with pytest.raises(AnLLMError, match="empty"):
        build_examples(cfg, tok)  # the Alpaca preamble alone is longer than 64 characters
    from anllm.train.data import alpaca_prompt

    short = len(alpaca_prompt(RECORDS[0]["instruction"]))  # record 1 has an input: its prompt is longer
    assert len(alpaca_prompt(RECORDS[1]["instruction"], RECORDS[1]["input"])) > short + 4
    cfg = TrainConfig.from_dict(
        dict(mode="sft", train_files=[write_jsonl(tmp_path / "b.jsonl", RECORDS)], block_size=short + 4)
    )
    (ex,), stats = build_examples(cfg, tok)
    assert (stats.n_examples, stats.n_dropped, stats.n_truncated) == (1, 1, 2)
    assert len(ex.input_ids) == short + 4 and ex.labels[short:] == ex.input_ids[short:]


def test_malformed_jsonl_names_file_and_line(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine."}\n\n{"text": "broken\n{"text": "x"}\n')
    with pytest.raises(AnLLMError, match=r"bad\.jsonl:3: malformed JSON"):
        build_examples(TrainConfig.from_dict(dict(train_files=[str(path)])), tok)
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(AnLLMError, match=r"bad\.jsonl:2: expected a JSON object"):
        build_examples(TrainConfig.from_dict(dict(train_files=[str(path)])), tok)
    alpaca = tmp_path / "bad.json"
    alpaca.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": }\n]')
    with pytest.raises(AnLLMError, match=r"bad\.json:3"):
        build_examples(TrainConfig.from_dict(dict(mode="sft", train_files=[str(alpaca)])), tok)


def test_missing_field_and_empty_dataset(tmp_path, tok):
    path = write_jsonl(tmp_path / "f.jsonl", [{"content": "no text field"}])
    with pytest.raises(AnLLMError, match="'text'"):
        build_examples(TrainConfig.from_dict(dict(train_files=[path])), tok)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(AnLLMError, match="empty"):
        build_examples(TrainConfig.from_dict(dict(train_files=[str(empty)])), tok)
    with pytest.raises(AnLLMError, match="no training data"):
        build_examples(TrainConfig(), tok)
    with pytest.raises(AnLLMError, match="does not exist"):
        build_examples(TrainConfig.from_dict(dict(train_files=[str(tmp_path / "nope.txt")])), tok)


def test_collate_pads_right_and_masks_labels(tok):
    from anllm.train.data import Example

    batch = collate([Example([5, 6, 7], [5, 6, 7]), Example([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_eval_blocks(tmp_path, tok):
    f = tmp_path / "e.txt"
    f.write_text("Held out. " * 30)
    cfg = TrainConfig.from_dict(dict(eval_block_size=64, eval_max_tokens=200))
    blocks = eval_blocks(str(f), cfg, tok)
    assert [len(b) for b in blocks] == [64, 64, 64, 8]
    f.write_text("   ")
    with pytest.raises(AnLLMError, match="no text"):
        eval_blocks(str(f), cfg, tok)


def test_unknown_config_key_and_bad_values(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 1e-4\nbatch_size: 2\nlerning_rate: 3\n")
    with pytest.raises(AnLLMError, match="unknown training setting 'lerning_rate'"):
        TrainConfig.load(cfg_file)
    cfg_file.write_text("lr: 1e-4\nbatch_size: 2\n")
    cfg = TrainConfig.load(cfg_file, ["block_size=64", "train_files=[a.txt, b.txt]"])
    assert cfg.optim.lr == 1e-4 and cfg.data.block_size == 64 and cfg.data.train_files == ["a.txt", "b.txt"]
    with pytest.raises(AnLLMError, match="TrainConfig.batch_size"):
        TrainConfig.load(cfg_file, ["batch_size=0"])
    with pytest.raises(AnLLMError, match="TrainConfig.loss"):
        TrainConfig.from_dict(dict(loss="mse"))
    with pytest.raises(AnLLMError, match="TrainConfig.lr must be a number"):
        TrainConfig.load(None, ["lr=fast"])
    with pytest.raises(AnLLMError, match="key=value"):
        TrainConfig.load(None, ["lr"])


def test_corpus_builder_falls_back_and_holds_out(tmp_path, monkeypatch):
    import anllm.train.corpus as corpus

    monkeypatch.setattr(corpus, "FORTUNES_DIR", tmp_path / "none")
    monkeypatch.setattr(corpus, "fortune_documents", lambda: [])
    info = build_corpus(tmp_path / "c", sources=("fortunes",), heldout_fraction=0.1)
    assert info["sources"] == ["synthetic"] and info["train_docs"] > 0 and info["heldout_docs"] > 0
    train = {json.loads(line)["text"] for line in (tmp_path / "c" / "train.jsonl").read_text().splitlines()}
    held = set((tmp_path / "c" / "heldout.txt").read_text().strip().split("\n\n"))
    assert train.isdisjoint(held) and len(held) == info["heldout_docs"]


def test_wordnet_glosses_become_sentences(tmp_path):
    from anllm.train.corpus import wordnet_documents

    header = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
    noun = (
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus "
        'Canis; "the dog barked all night"  \n'
        "00217499 04 n 01 disaster 0 001 @ 00217014 n 0000 | an act that has disastrous consequences  \n"
        "00000001 04 n 01 nogloss 0 000 \n"
    )
    adj = '00001740 00 a 01 able(a) 0 001 | having the necessary means; "able to swim"; "she was able to program"\n'
    (tmp_path / "data.noun").write_text(header + noun)
    (tmp_path / "data.adj").write_text(adj)
    docs = wordnet_documents(tmp_path, per_doc=2)
    assert docs == [
        "dog: a member of the genus Canis. The dog barked all night. "
        "disaster: an act that has disastrous consequences.",
        "able: having the necessary means. Able to swim. She was able to program.",
    ]
    assert wordnet_documents(tmp_path / "absent") == []


def test_kjv_leaves_out_the_evaluation_book(tmp_path):
    from anllm.train.corpus import kjv_documents

    verses = [("Genesis", 1, "In the beginning."), ("Exodus", 1, "Now these are the names."), ("Exodus", 1, "And all.")]
    path = tmp_path / "kjv.jsonl"
    path.write_text("".join(json.dumps({"book": b, "chapter": c, "verse": i, "text": t}) + "\n"
                            for i, (b, c, t) in enumerate(verses)))  # fmt: skip
    assert kjv_documents(path) == ["Now these are the names. And all."]
    assert kjv_documents(path, exclude_books=()) == ["In the beginning.", "Now these are the names. And all."]
    assert kjv_documents(tmp_path / "absent.jsonl") == []


def test_segment_records_carry_weights_and_targets(tmp_path, tok):
    rec = {"segments": [{"text": "Ab. Cd"}, {"text": " ef.", "weight": 4, "target": True}, {"text": "!", "weight": 0}]}
    long = {"segments": [{"text": "x" * 40}]}
    path = write_jsonl(tmp_path / "m.jsonl", [rec, long, {"text": "plain doc. more"}])
    cfg = TrainConfig.from_dict(dict(train_files=[path], block_size=30, packing=True))
    examples, stats = build_examples(cfg, tok)
    seg = examples[0]
    want = tok("Ab. Cd")["input_ids"] + tok(" ef.", add_special_tokens=False)["input_ids"] + tok("!")["input_ids"][-1:]
    assert seg.input_ids == want and seg.labels == want
    n0 = len(tok("Ab. Cd")["input_ids"])
    assert seg.weights == [1.0] * n0 + [4.0] * 4 + [0.0] and seg.targets == [False] * n0 + [True] * 4 + [False]
    assert stats.n_dropped == 1  # the 41-token segment record does not fit block_size=30 and is not cut
    assert examples[1].weights is None  # the packed plain document
    batch = collate(examples[:2], pad_id=0)
    assert batch["weights"][0, : len(want)].tolist() == seg.weights and batch["weights"][0, len(want) :].sum() == 0
    assert batch["weights"][1, : len(examples[1].input_ids)].eq(1).all() and batch["targets"][1].sum() == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"segments": [{"text": "a", "weight": "heavy"}]}])
    with pytest.raises(AnLLMError, match="segment 0 needs a string 'text' and a number 'weight'"):
        build_examples(TrainConfig.from_dict(dict(train_files=[bad])), tok)


def test_config_sections_read_flat_files_unchanged(monkeypatch):
    """The flat YAML files of configs/ and flat --set overrides land in the sections, every key where it belongs."""
    import yaml

    from anllm.train.config import FLAT_KEYS, SECTIONS

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)  # init_adapter paths in the configs are relative to the checkout
    for path in sorted((root / "configs").glob("*.yaml")):
        flat = yaml.safe_load(path.read_text())
        cfg = TrainConfig.load(path)
        got = cfg.flat()
        for key, value in flat.items():
            assert got[key] == (float(value) if isinstance(got[key], float) else value), (path.name, key)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # config.json (sections) reads back the same
    cfg = TrainConfig.load("configs/smollm2-memory-adapter.yaml", ["max_steps=3000", "target_lm_weight=8"])
    assert cfg.optim.max_steps == 3000 and cfg.loss.target_lm_weight == 8.0 and cfg.loss.kind == "kl"
    assert (cfg.model.name, cfg.data.objective, cfg.anchor.kind, cfg.anchor.window) == (
        "smollm2-135m",
        "pretrain",
        "ep",
        16,
    )
    # every section field has exactly one flat key
    for section, cls in SECTIONS.items():
        names = [f for s, f in FLAT_KEYS.values() if s == section]
        assert len(names) == len(set(names))
        if section != "anchor":
            assert sorted(names) == sorted(f.name for f in dataclasses.fields(cls)), section


def test_memory_adapter_v2_config_continues_the_shipped_adapter_in_the_served_setting(monkeypatch):
    """configs/smollm2-memory-adapter-v2.yaml validates as a TrainConfig, with the recipe's overrides too."""
    import json

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)
    v1 = TrainConfig.load("configs/smollm2-memory-adapter.yaml")
    cfg = TrainConfig.load("configs/smollm2-memory-adapter-v2.yaml")
    assert cfg.model.init_adapter == v1.model.init_adapter == "anllm/adapters/smollm2-135m-anchor"
    served = json.loads((root / cfg.model.init_adapter / "anchor.json").read_text())
    assert {k: getattr(cfg.anchor, k) for k in served} == served  # trained exactly as it is served
    assert cfg.loss.kind == "kl" and cfg.loss.full_kl_weight > 0 and cfg.loss.target_lm_weight > 0
    assert cfg.model.finetune == "lora" and cfg.data.packing and cfg.data.eval_file and cfg.run.eval_every
    assert 0 < cfg.run.save_every <= 100 and cfg.run.output_dir != v1.run.output_dir
    recipe = (root / "configs/recipes/smollm2-memory-adapter-v2.sh").read_text()
    assert "RUNS=${ANLLM_RUNS:-$HOME/.cache/anllm/runs}" in recipe and "--templates v2" in recipe
    runs = "/tmp/anllm-runs"
    over = TrainConfig.load(
        "configs/smollm2-memory-adapter-v2.yaml",
        [f"output_dir={runs}/smollm2-memory-v2b", f"train_files=[{runs}/corpus-broad/train.jsonl, {runs}/m.jsonl]",
         "block_size=2048", "max_steps=2000"],
    )  # fmt: skip
    assert over.run.output_dir.startswith(runs) and all(f.startswith(runs) for f in over.data.train_files)
    assert (over.data.block_size, over.optim.max_steps, over.loss.full_kl_weight) == (2048, 2000, 1.0)


def test_config_sections_nested_and_dotted_keys(tmp_path):
    nested = tmp_path / "n.yaml"
    nested.write_text("model: {name: tiny-random, finetune: lora}\noptim: {lr: 1.0e-3, max_steps: 7}\nanchors: ac\n")
    cfg = TrainConfig.load(nested, ["optim.lr=2e-3", "max_steps=9", "loss.kind=kl"])
    assert (cfg.model.finetune, cfg.optim.lr, cfg.optim.max_steps, cfg.anchor.kind) == ("lora", 2e-3, 9, "ac")
    assert cfg.loss.kind == "kl" and cfg == TrainConfig.from_dict(cfg.flat())
    with pytest.raises(AnLLMError, match="optim.lr is given twice"):
        TrainConfig.from_dict({"lr": 1e-3, "optim": {"lr": 2e-3}})
    with pytest.raises(AnLLMError, match="unknown setting 'lrr' in section 'optim' \\(did you mean 'lr'\\?\\)"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})
    with pytest.raises(AnLLMError, match="unknown training setting 'optim.nope'"):
        TrainConfig.load(None, ["optim.nope=1"])
