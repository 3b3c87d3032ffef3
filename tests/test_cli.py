import json
import re
import subprocess
import sys

import pytest

from anllm.cli import build_parser, main
from anllm.config import AnLLMError

pytestmark = pytest.mark.core


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_stream_and_summary(capsys):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--model",
        "tiny-random",
        "--prompt",
        "Hi. There",
        "--policy",
        "anchor",
        "--max-new-tokens",
        "6",
        "--json",
        "--raw",
    )
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert code == 0 and len(lines) == 7
    tokens, summary = lines[:-1], lines[-1]
    assert summary["summary"] is True and summary["generated_tokens"] == 6 == tokens[-1]["step"]
    assert summary["policy"] == "anchor"
    assert summary["text"] == "".join(t["text"] for t in tokens)
    assert summary["kv_entries"] == tokens[-1]["kv_entries"] <= summary["kv_full_entries"]
    assert {"token", "text", "kv_entries", "kv_bytes", "n_evicted", "elapsed_s", "tokens_per_s"} <= set(tokens[0])


def test_generate_text_output_and_prompt_file(capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("A prompt. From a file", encoding="utf-8")
    code, out, err = run_cli(
        capsys, "generate", "--model", "tiny-random", "--prompt-file", str(f), "--max-new-tokens", "4", "--raw"
    )
    assert code == 0 and "KV kept" in err and "--policy defaults to full" in err


@pytest.mark.parametrize(
    "argv,dest,value",
    [
        (["generate", "--prompt", "x", "--mode", "streaming"], "policy", "streaming"),
        (["chat", "--mode", "full"], "policy", "full"),
        (["compress", "--text-file", "t", "-o", "o", "--mode", "sepllm"], "policy", "sepllm"),
        (["eval", "ppl", "--text-file", "t", "--modes", "full,anchor"], "policies", "full,anchor"),
        (["eval", "recall", "--modes", "anchor"], "policies", "anchor"),
        (["bench", "--context", "64", "--modes", "full"], "policies", "full"),
    ],
)
def test_the_former_flag_names_are_aliases(argv, dest, value):
    new = [a.replace("--modes", "--policies").replace("--mode", "--policy") for a in argv]
    assert getattr(build_parser().parse_args(argv), dest) == value == getattr(build_parser().parse_args(new), dest)


def test_verify_mode_is_refused_naming_anchors(capsys):
    code, out, err = run_cli(capsys, "verify", "--model", "tiny-random", "--text-file", "t.txt", "--mode", "ac")
    assert code == 2 and out == "" and "give the anchor kind as --anchors ac" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["verify", "--help"])
    shown = capsys.readouterr().out
    assert "--anchors" in shown and re.search(r"--mode\b", shown) is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--model", "tiny-random", "--prompt", "  "], "prompt is empty"),
        (["generate", "--model", "no-such-model", "--prompt", "x"], "unknown model 'no-such-model'"),
        (["generate", "--model", "tiny-random", "--prompt-file", "/nonexistent.txt"], "does not exist"),
        (["generate", "--model", "tiny-random", "--prompt", "x", "--top-p", "2"], "--top-p must be a number > 0"),
        (["generate", "--model", "org/not-on-this-machine", "--prompt", "x"], "HF_HUB_OFFLINE=1 is set"),
    ],
)
def test_bad_input_exits_2_with_message(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_verify_reports_exactness(capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Anchors gather sentences. Later tokens see anchors! Is it exact? It is. Tail words", encoding="utf-8")
    for kind, n_anchor in (("ep", 4), ("ac", 5)):  # AC marks the unterminated last sentence too
        code, out, _ = run_cli(
            capsys,
            "verify",
            "--model",
            "tiny-random",
            "--text-file",
            str(f),
            "--anchors",
            kind,
            "--json",
            "--verify-chunk-size",
            "9",
        )
        report = json.loads(out.strip().splitlines()[-1])
        assert code == 0 and report["ok"] and report["max_abs_diff"] < 1e-4
        assert report["anchors"] == n_anchor and report["tokens"] > 80 and report["kv_kept"] < report["tokens"]


def test_python_dash_m_help():
    res = subprocess.run([sys.executable, "-m", "anllm", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "generate" in res.stdout and "verify" in res.stdout


def test_trust_remote_code_is_off_unless_asked(monkeypatch):
    import transformers

    from anllm import models

    seen = []

    def fake(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(models, "in_hub_cache", lambda repo: True)  # past the name check, into transformers
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    for flag in (False, True):
        with pytest.raises(models.AnLLMError):
            models.load_model("org/some-model", trust_remote_code=flag)
    assert seen == [False, True]
    with pytest.raises(models.AnLLMError):
        models.load_model("org/some-model")
    assert seen[-1] is False


@pytest.fixture
def fake_default(monkeypatch, tmp_path):
    """``--model default`` served by the tiny model, its adapter bringing 1 sink + window 16 (as the real one)."""
    from anllm import models

    models.tiny_model().save_pretrained(tmp_path)
    models.tiny_tokenizer().save_pretrained(tmp_path)
    served = models.AnchorConfig(n_sink=1, window=16)
    monkeypatch.setattr(models, "_smollm2_source", lambda notes: tmp_path)
    monkeypatch.setattr(models, "_apply_adapter", lambda model, adapter_dir, notes: (model, served))
    return served


@pytest.mark.parametrize(
    "flags,changed",
    [
        ([], {}),
        (["--chunk-size", "128"], {"chunk_size": 128}),
        (["--positions", "compact"], {"position_policy": "compact"}),
        (["--anchors", "ac"], {"kind": "ac"}),
        (["--anchors", "ep", "--chunk-size", "7"], {"chunk_size": 7}),
    ],
)
def test_anchor_flags_merge_into_the_models_own_setting(fake_default, flags, changed):
    from anllm.cli import build_parser
    from anllm.commands.common import load_from_args

    args = build_parser().parse_args(["eval", "ppl", "--model", "default", "--text-file", "x", *flags])
    lm = load_from_args(args)
    assert lm.anchor == fake_default.replace(**changed)
    assert lm.anchor.n_sink == 1 and lm.anchor.window == 16  # the adapter's served setting survives every flag


def test_load_model_anchor_overrides():
    from anllm.config import AnchorConfig
    from anllm.models import load_model, merge_anchor

    base = AnchorConfig(n_sink=2, window=8, anchor_ids=(5,))
    lm = load_model("tiny-random", anchor=base, anchor_overrides=dict(chunk_size=64, position_policy=None))
    assert lm.anchor == base.replace(chunk_size=64)
    assert merge_anchor(base, {"kind": "ac"}) == base.replace(kind="ac", anchor_ids=None)  # EP ids don't name <AC>
    assert merge_anchor(base, {"kind": "ep"}) == base
    with pytest.raises(AnLLMError, match="unknown anchor setting"):
        merge_anchor(base, {"sinks": 1})


def test_verify_decode_logits_returns_what_it_says():
    import typing

    from torch import Tensor

    from anllm.cache import PolicyCache
    from anllm.models import load_model
    from anllm.policies import AnchorPolicy
    from anllm.verify import decode_logits

    assert typing.get_type_hints(decode_logits)["return"] == tuple[Tensor, PolicyCache]
    lm = load_model("tiny-random")
    ids = lm.tokenizer("One. Two", return_tensors="pt")["input_ids"]
    logits, cache = decode_logits(lm, ids, None, 3, AnchorPolicy.from_config(lm.anchor))
    assert logits.shape[:2] == ids.shape and isinstance(cache, PolicyCache)


def test_train_help_example_names_the_command_that_writes_its_data(capsys):
    """``anllm train --help``'s example works as written: the command before it writes the data its config reads."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    corpus = next(line for line in lines if line.startswith("python -m anllm.train.corpus"))
    config = next(line for line in lines if line.startswith("anllm train --config")).split()[-1]
    assert lines.index(corpus) < lines.index(f"anllm train --config {config}")
    out = Path(corpus.split("--out ")[1].split()[0])
    cfg = yaml.safe_load((root / config).read_text(encoding="utf-8"))
    assert all(Path(f).parent == out for f in cfg["train_files"]) and Path(cfg["eval_file"]).parent == out
