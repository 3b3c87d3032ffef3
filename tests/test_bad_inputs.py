"""A catalogue of bad inputs driven through the CLI: every command and file option gets empty, blank, missing, a
directory, non-UTF-8, NUL bytes, huge, wrong JSON types and bad YAML. Each must exit 2 with one line on stderr
naming the problem, no traceback, and leave every file the user gave as it was (issue 19)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from anllm.cli import main
from anllm.textio import MAX_TEXT_BYTES

pytestmark = pytest.mark.core

TINY = ["--model", "tiny-random"]

# what each kind of bad file is, and the words its error must contain
FILE_KINDS = {
    "empty": (b"", "is empty"),
    "blank": (b"  \n\t \n", "is empty"),
    "missing": (None, "does not exist"),
    "directory": ("dir", "is a directory"),
    "latin1": ("Caf\u00e9. Na\u00efve!\n".encode("latin-1"), "not valid UTF-8 (byte 0xe9 at offset 3, line 1)"),
    "nul": (b"Hello.\n\x00world\n", "NUL byte at offset 7 (line 2)"),
    "huge": ("huge", f"the limit is {MAX_TEXT_BYTES:,}"),
}

# (command line with {f} for the bad file, kinds that apply, expected words overriding the kind's own)
TEXT_OPTIONS = [
    (["generate", *TINY, "--mode", "full", "--prompt-file", "{f}"], {}),
    (["verify", *TINY, "--text-file", "{f}"], {}),
    (["eval", "ppl", *TINY, "--text-file", "{f}"], {}),
    (["bench", *TINY, "--context", "8", "--text-file", "{f}", "--plot", "{keep}"], {}),
    (["eval", "bleu", "--ref", "{f}", "--hyp", "{good}"], {}),
    (["eval", "bleu", "--ref", "{good}", "--hyp", "{f}"], {}),
    (["eval", "bleu", *TINY, "--ref", "{good}", "--src", "{f}"], {}),
    (["train", "--config", "{f}"], {}),
    (["eval", "recall", *TINY, "--distances", "40", "--n", "1", "--filler-file", "{f}", "--plot", "{keep}"], {}),
    (["compress", *TINY, "--text-file", "{f}", "-o", "{keep}"], {}),
]
JSONL_OPTIONS = [  # a JSONL file has no size cap (training data may be large); empty means no items
    (["eval", "qa", *TINY, "--task", "{f}"], {"empty": "has no items", "blank": "has no items"}),
    (
        ["train", "--set", "train_files=[{f}]", "--set", "output_dir={out}"],
        {"empty": "gave no example", "blank": "gave no example"},
    ),
    (["eval", "recall", *TINY, "--items", "{f}"], {"empty": "has no items", "blank": "has no items"}),
]

# (command line, file name, content, expected words): wrong JSON types, bad YAML, other bad values
CONTENT_CASES = [
    (["train", "--config", "{f}"], "c.yaml", "lr: [1,\n  x: : y\n", "{f}:2:6: config is not valid YAML"),
    (["train", "--config", "{f}"], "c.yaml", "- 1\n- 2\n", "expected a mapping of settings, got list"),
    (["train", "--config", "{f}"], "c.yaml", "lr: fast\n", "TrainConfig.lr must be a number, got 'fast'"),
    (["train", "--config", "{f}"], "c.json", '{"lr": 1e-4,}', "{f}:1:13: config is not valid JSON"),
    (["train", "--config", "{f}"], "c.yaml", "lrr: 0.1\n", "unknown training setting 'lrr' (did you mean 'lr'?)"),
    (
        ["train", "--set", "train_files=[{f}]", "--set", "output_dir={out}"],
        "d.jsonl",
        '{"text": 5}\n',
        "field 'text' must be a string, got int",
    ),
    (
        ["train", "--set", "train_files=[{f}]", "--set", "output_dir={out}"],
        "d.jsonl",
        '{"text": "ok."}\n[1, 2]\n',
        "{f}:2: expected a JSON object per line, got list",
    ),
    (
        ["train", "--set", "train_files=[{f}]", "--set", "output_dir={out}"],
        "d.jsonl",
        '{"text": "ok."}\n{"text": "cut\n',
        "{f}:2: malformed JSON",
    ),
    (
        ["train", "--set", "train_files=[{f}]", "--set", "output_dir={out}"],
        "d.json",
        '{"text": "a dict, not a list"}',
        "expected a JSON list of objects",
    ),
    (
        ["eval", "qa", *TINY, "--task", "{f}"],
        "t.jsonl",
        '{"query": "Q?", "choices": ["a", "b"], "label": "0"}\n',
        "{f}:1: 'label' must be an integer index",
    ),
    (["eval", "qa", *TINY, "--task", "{f}"], "t.jsonl", "5\n", "{f}:1: expected a JSON object, got int"),
    (
        ["eval", "qa", *TINY, "--task", "{f}"],
        "t.jsonl",
        '{"query": 1, "choices": ["a", "b"], "label": 0}\n',
        "'query' must be a string",
    ),
    (["generate", *TINY, "--mode", "full", "--prompt-file", "{f}"], "long.txt", "Word. " * 5000, "model supports 4096"),
    (
        ["eval", "recall", *TINY, "--items", "{f}"],
        "r.jsonl",
        '{"context": "", "question": "Q?", "answer": 4}\n',
        "{f}:1: 'answer' must be a non-empty string (got int)",
    ),
    (["eval", "recall", *TINY, "--distances", "40,x"], None, None, "--distances must be comma-separated integers"),
    (["generate", *TINY, "--cache", "{f}", "--prompt", "Hi."], "doc.kv", "not a cache", "not a readable anllm cache"),
    (["chat", *TINY, "--cache", "{f}"], "doc.kv", "", "not a readable anllm cache"),
    (["generate", *TINY, "--cache", "{f}/none.kv", "--prompt", "Hi."], "d", "x", "does not exist"),
    (["eval", "recall", *TINY, "--distances", "9000", "--n", "1"], None, None, "distance 9000 needs"),
    (["eval", "recall", *TINY, "--families", "single,poems"], None, None, "unknown recall families ['poems']"),
    (["train", "--set", "lr=[1,"], None, None, "--set 'lr=[1,': the value is not valid YAML"),
    (["generate", *TINY, "--prompt", "x", "--device", "cuda:7"], None, None, "--device cuda:7: not available"),
    (["generate", *TINY, "--prompt", "x", "--device", "gpu!"], None, None, "is not a device name"),
    (["app", *TINY, "--device", "cuda:99", "--no-preload"], None, None, "--device cuda:99: not available"),
    (
        ["generate", *TINY, "--mode", "full", "--prompt", "Hi.", "--max-new-tokens", "500000"],
        None,
        None,
        "max new tokens 500000 + the prompt's",
    ),
]


JSONL_KINDS = {  # JSON-shaped, so the encoding is what is wrong
    "latin1": ('{"text": "Caf\u00e9."}\n'.encode("latin-1"), "not valid UTF-8 (byte 0xe9 at offset 13, line 1)"),
    "nul": (b'{"text": "ok.\x00"}\n', "NUL byte at offset 13 (line 1)"),
}


def make_file(tmp: Path, kind: str, suffix: str) -> Path:
    content = (JSONL_KINDS if suffix == ".jsonl" and kind in JSONL_KINDS else FILE_KINDS)[kind][0]
    path = tmp / f"bad-{kind}{suffix}"
    if content == "dir":
        path.mkdir()
        (path / "inside.txt").write_text("the user's file", encoding="utf-8")
    elif content == "huge":
        with path.open("wb") as f:  # sparse: costs no disk
            f.truncate(MAX_TEXT_BYTES + 1)
    elif content is not None:
        path.write_bytes(content)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every file under ``root``: size, content hash (small files) and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 2**20 else ""
            out[str(p.relative_to(root))] = (st.st_size, digest, st.st_mtime_ns)
    return out


@pytest.fixture
def user_dir(tmp_path):
    """What a user already has: a good text, a plot they made, a training output dir with their notes."""
    (tmp_path / "good.txt").write_text("Ein Satz.\nNoch einer.\n", encoding="utf-8")
    (tmp_path / "keep.html").write_text("<p>my earlier plot</p>", encoding="utf-8")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("my notes", encoding="utf-8")
    return tmp_path


def fill(argv: list[str], tmp: Path, f: Path) -> list[str]:
    names = {"f": f, "good": tmp / "good.txt", "keep": tmp / "keep.html", "out": tmp / "out"}
    return [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]


def check(capsys, tmp: Path, argv: list[str], expected: str) -> None:
    before = snapshot(tmp)
    code = main(argv)  # an exception escaping here is itself a failure: a traceback for the user
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith(f"anllm {argv[0]}: error: "), (argv, err)
    assert expected in lines[0], (argv, expected, lines[0])
    assert "Traceback" not in err
    assert snapshot(tmp) == before, f"{argv} changed the user's files"


def _file_cases():
    for argv, override in TEXT_OPTIONS:
        for kind in FILE_KINDS:
            yield pytest.param(argv, kind, ".txt", override.get(kind), id=f"{' '.join(argv[:2])}-{kind}")
    for argv, override in JSONL_OPTIONS:
        for kind in FILE_KINDS:
            if kind != "huge":
                expected = override.get(kind) or JSONL_KINDS.get(kind, (None, None))[1]
                yield pytest.param(argv, kind, ".jsonl", expected, id=f"{' '.join(argv[:2])}-jsonl-{kind}")


@pytest.mark.parametrize("argv,kind,suffix,expected", list(_file_cases()))
def test_bad_file_exits_2_with_one_line(capsys, user_dir, argv, kind, suffix, expected):
    f = make_file(user_dir, kind, suffix)
    check(capsys, user_dir, fill(argv, user_dir, f), expected or FILE_KINDS[kind][1])


@pytest.mark.parametrize(
    "argv,name,content,expected", CONTENT_CASES, ids=[f"{c[0][0]}-{c[3][:30]}" for c in CONTENT_CASES]
)
def test_bad_content_or_value_exits_2_with_one_line(capsys, user_dir, argv, name, content, expected):
    f = user_dir / (name or "unused")
    if content is not None:
        f.write_text(content, encoding="utf-8")
    check(capsys, user_dir, fill(argv, user_dir, f), fill([expected], user_dir, f)[0])


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The same through ``python -m anllm``: what a user sees in a terminal."""
    f = tmp_path / "p.txt"
    f.write_bytes(b"ok\n\xff\xfe")
    res = subprocess.run(
        [sys.executable, "-m", "anllm", "generate", *TINY, "--prompt-file", str(f)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"anllm generate: error: prompt file {f} is not valid UTF-8 (byte 0xff at offset 3, line 2): save it as UTF-8"
    ]
    assert f.read_bytes() == b"ok\n\xff\xfe"


def test_jsonl_error_names_the_line_and_offset(tmp_path):
    from anllm.config import AnLLMError
    from anllm.textio import read_jsonl

    f = tmp_path / "d.jsonl"
    f.write_bytes(json.dumps({"text": "fine"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(AnLLMError, match=r"not valid UTF-8 \(byte 0xe9 at offset 30, line 2\)"):
        list(read_jsonl(f, "data"))
