"""A generated catalogue of bad inputs (issue 26): every subcommand's options, walked from the argparse parser itself.

Each option's kind comes from :data:`anllm.commands.checks.OPTIONS` (numbers and their ranges, files read or written,
model names, modes, ...) or from argparse (``choices``); this file turns each kind into bad values: for a file read,
missing / a directory / empty / non-UTF-8 bytes / truncated or corrupt (JSONL, YAML, cache); for a file written, a
directory / a missing folder / the same path as an input; for a number, 0, -1, a huge value and a non-number (those
outside its range); for a choice, an unknown value; for a model, a junk folder, an empty folder, a 300-character
name. A bad value must give exit 2, exactly one line on stderr, no traceback, no file changed and no model loaded
(the loaders are replaced by tripwires), within a time bound. A new option is covered without editing this file; one
without a kind fails :func:`test_every_option_has_a_kind`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from anllm.cli import build_parser, main
from anllm.commands.checks import OPTIONS, Ints, Number, check_args, command_path, leaf_parser, spec_for

pytestmark = pytest.mark.core

TIME_BOUND_S = 20.0  # a hang guard, not a speed target: each case is refused in well under a second here
LONG = "x" * 300
ROOT = Path(__file__).resolve().parent.parent


# -- the parsers -------------------------------------------------------------------------------------------------
def leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)parser that runs a command: ``anllm generate``, ``anllm eval ppl``, ..."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return [parser]
    return [leaf for p in dict.fromkeys(sub.choices.values()) for leaf in leaves(p)]


def options(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in leaf._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


PARSER = build_parser()
LEAVES = {command_path(leaf): leaf for leaf in leaves(PARSER)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the user's files: good ones (the baseline) and bad ones ------------------------------------------------------
class Files:
    """A folder of the user's files; ``bad(kind)`` makes one bad file and returns its path."""

    def __init__(self, root: Path, cache: Path):
        self.root = root
        self.good_txt = self.write("good.txt", "A first sentence. A second one!\nAnd a third?\n")
        self.good_jsonl = self.write(
            "items.jsonl", '{"context": "Ann has a red car.", "question": "Q?", "answer": "red"}\n'
        )
        self.good_task = self.write("task.jsonl", '{"query": "Q?", "choices": ["a", "b"], "label": 0}\n')
        self.out = self.root / "out"
        self.out.mkdir()
        (self.out / "notes.txt").write_text("the user's notes", encoding="utf-8")
        self.good_yaml = self.write(
            "train.yaml", f"model: tiny-random\ntrain_files: [{self.good_txt}]\noutput_dir: {self.out}\nmax_steps: 1\n"
        )
        self.good_kv = self.root / "doc.kv"
        self.good_kv.write_bytes(cache.read_bytes())
        self.empty_dir = self.root / "adir"
        self.empty_dir.mkdir()
        self.junk_model = self.root / "notmodel"
        self.junk_model.mkdir()
        (self.junk_model / "config.json").write_text("{junk", encoding="utf-8")
        self.half_model = self.root / "halfmodel"  # a real-looking config.json, nothing else
        self.half_model.mkdir()
        (self.half_model / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
        self.n = 0

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.root / name
        p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return p

    def bad(self, content: str | bytes, suffix: str) -> Path:
        self.n += 1
        return self.write(f"bad{self.n}{suffix}", content)


NON_UTF8 = b"Caf\xe9 au lait. Na\xefve!\n"
CORRUPT_YAML = "lr: [1,\n  x: : y\n"


def _config_with_data(f: Files, data: str | bytes) -> Path:
    """A training config whose data file is bad: refused before the model loads, not after."""
    jsonl = f.bad(data, ".jsonl")
    return f.bad(f"model: tiny-random\ntrain_files: [{jsonl}]\noutput_dir: {f.out}\n", ".yaml")


def _cache_truncated(f: Files) -> Path:
    data = f.good_kv.read_bytes()
    return f.write(f"cut{f.n}.kv", data[: len(data) // 2])


def _cache_flipped(f: Files) -> Path:
    data = bytearray(f.good_kv.read_bytes())
    data[-5] ^= 0xFF  # in the tensor data: the checksum no longer matches
    return f.write(f"flip{f.n}.kv", bytes(data))


def bad_input_files(kind: str) -> dict[str, callable]:
    """``label -> make(files) -> path`` of the bad files for an input kind."""
    common = {
        "empty-name": lambda f: "",
        "missing": lambda f: f.root / "no-such-file.txt",
        "directory": lambda f: f.empty_dir,
        "non-utf8": lambda f: f.bad(NON_UTF8, ".txt"),
    }
    if kind == "text-in":
        return {**common, "empty": lambda f: f.bad("", ".txt"), "nul-bytes": lambda f: f.bad(b"ok\x00\n", ".txt")}
    if kind in ("jsonl-in", "task"):
        return {
            **common,
            "empty": lambda f: f.bad("", ".jsonl"),
            "non-utf8": lambda f: f.bad(b'{"context": "caf\xe9"}\n', ".jsonl"),
            "truncated-jsonl": lambda f: f.bad('{"context": "Ann has a red car.", "quest', ".jsonl"),
            "wrong-json-type": lambda f: f.bad("[1, 2]\n", ".jsonl"),
        }
    if kind == "config-in":
        return {
            **common,
            "empty": lambda f: f.bad("", ".yaml"),
            "truncated-yaml": lambda f: f.bad(CORRUPT_YAML, ".yaml"),
            "yaml-list": lambda f: f.bad("- 1\n- 2\n", ".yaml"),
            "junk-model-folder": lambda f: f.bad(f"model: {f.junk_model}\ntrain_files: [{f.good_txt}]\n", ".yaml"),
            "empty-model-folder": lambda f: f.bad(f"model: {f.empty_dir}\ntrain_files: [{f.good_txt}]\n", ".yaml"),
            "300-char-model": lambda f: f.bad(f"model: {LONG}\ntrain_files: [{f.good_txt}]\n", ".yaml"),
            "missing-data": lambda f: f.bad(f"model: tiny-random\ntrain_files: [{f.root}/corpus-x/t.jsonl]\n", ".yaml"),
            "data-wrong-type": lambda f: _config_with_data(f, '{"text": "ok."}\n{"text": 5}\n'),
            "data-truncated": lambda f: _config_with_data(f, '{"text": "ok."}\n{"text": "cut'),
            "data-non-utf8": lambda f: _config_with_data(f, b'{"text": "caf\xe9."}\n'),
        }
    if kind == "cache-in":
        return {
            **common,
            "empty": lambda f: f.bad("", ".kv"),
            "truncated-cache": _cache_truncated,
            "corrupt-cache": _cache_flipped,
            "text-not-cache": lambda f: f.good_txt,
        }
    raise KeyError(kind)


def good_input(kind: str, f: Files) -> Path | str:
    return {
        "text-in": f.good_txt,
        "jsonl-in": f.good_jsonl,
        "task": f.good_task,
        "config-in": f.good_yaml,
        "cache-in": f.good_kv,
    }[kind]


# values that pass the checks, for options a command needs (the rest are left out of the baseline)
GOOD_VALUES = {"model": "tiny-random", "prompt": "Hello.", "host": "127.0.0.1", "out-file": None}

# bad values of the kinds that are not files
BAD_VALUES = {
    "model": {
        "junk-folder": lambda f: f.junk_model,
        "empty-folder": lambda f: f.empty_dir,
        "config-only-folder": lambda f: f.half_model,
        "a-file": lambda f: f.good_txt,
        "300-char-name": lambda f: LONG,
        "300-char-hub-id": lambda f: f"org/{LONG}",
        "uncached-hub-id": lambda f: "someone/not-on-this-machine",
        "unknown-name": lambda f: "no-such-model",
        "empty": lambda f: "",
    },
    "adapter-in": {
        "missing-folder": lambda f: f.root / "no-such-adapter",
        "a-file": lambda f: f.good_txt,
        "empty-folder": lambda f: f.empty_dir,
        "a-model-folder": lambda f: f.junk_model,
    },
    "device": {"not-a-device": "gpu!", "absent-gpu": "cuda:99"},
    "host": {"bad-address": "999.1.1.1", "foreign-address": "203.0.113.7", "empty": ""},
    "mode": {"unknown": "nosuch", "zero-window": "streaming:window=0", "not-key-value": "streaming:x"},
    "modes": {"unknown": "full,nosuch", "empty": ",", "zero-window": "full,streaming:window=0"},
    "bench-modes": {"unknown": "full,nosuch", "empty": ","},
    "budget": {"zero": "0", "negative": "-1", "huge": "10000000000", "unknown-mode": "nosuch"},
    "budget-mode": {"unknown-mode": "nosuch", "a-number": "5"},
    "families": {"unknown": "single,poems", "empty": ","},
    "scorers": {"unknown": "masked,bogus", "empty": ","},
    "fillers": {"unknown": "literary,legal", "empty": ","},
    "weights": {"unknown": "default,merged", "empty": ","},
    "fractions": {"zero": "0", "one": "0.08,1", "negative": "-0.1", "not-a-number": "0.1,x", "nan": "nan"},
    "template": {"unknown-field": "{src} {bad}", "no-src": "no placeholder", "positional": "{src} {0}", "open": "{src"},
    "prompt": {"empty": "", "blank": "   "},
    "stop": {"empty": ""},
    "set": {"no-equals": "lr", "no-key": "=1", "bad-yaml": "lr=[1,", "unknown-key": "lrr=0.1"},
    "removed": {"any-value": "ep"},
}


def bad_numbers(spec: Number | Ints, is_int: bool) -> dict[str, str]:
    """The bad values among 0, -1, a huge value and a non-number (and the range's own edges) for ``spec``."""
    if isinstance(spec, Ints):
        out = {"non-number": "x", "empty": ",", "huge": str(spec.hi + 1), "mixed": "8,x"}
        out.update({label: v for label, v in (("zero", "0"), ("negative", "-1")) if int(v) < spec.lo})
        return out
    out = {"non-number": "abc", "huge": "1" + "0" * 30}
    if not is_int:
        out.update({"nan": "nan", "inf": "inf"})
    for label, v in (("zero", 0), ("negative", -1), ("below-range", spec.lo - 1)):
        if (v < spec.lo or (spec.lo_open and v == spec.lo)) and str(v) not in out.values():
            out[label] = str(v)
    if spec.hi < 1e29:
        out["above-range"] = str(int(spec.hi) + 1)
    return out


# -- building the cases ------------------------------------------------------------------------------------------
def required_actions(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    need = [a for a in options(leaf) if a.required]
    for group in leaf._mutually_exclusive_groups:
        if group.required:
            need.append(group._group_actions[0])
    return need


def group_mates(leaf: argparse.ArgumentParser, action: argparse.Action) -> set[argparse.Action]:
    return {a for g in leaf._mutually_exclusive_groups if action in g._group_actions for a in g._group_actions}


def kind_of(command: str, action: argparse.Action):
    spec = spec_for(command, action)
    return spec, (spec if isinstance(spec, str) else "number" if spec is not None else None)


def baseline(leaf: argparse.ArgumentParser, f: Files) -> dict[argparse.Action, str]:
    """Option -> value for a command line that passes every check (nothing loads: see the tripwires)."""
    command = command_path(leaf)
    out = {}
    for a in [*required_actions(leaf), *(a for a in options(leaf) if "--model" in a.option_strings)]:
        spec, kind = kind_of(command, a)
        if kind in ("text-in", "jsonl-in", "task", "config-in", "cache-in"):
            out[a] = str(good_input(kind, f))
        elif isinstance(spec, Ints):
            out[a] = str(spec.lo if spec.lo > 0 else 8)
        elif kind in ("out-file", "out-stem"):
            out[a] = str(f.root / "new-output.kv")
        else:
            out[a] = GOOD_VALUES[kind]
    if command == "app":
        out.update({_action(leaf, "--port"): "{port}", _action(leaf, "--no-preload"): None})
    return out


def _action(leaf, flag):
    return next(a for a in options(leaf) if flag in a.option_strings)


def render(leaf: argparse.ArgumentParser, values: dict[argparse.Action, object]) -> list[str]:
    argv = command_path(leaf).split()
    for a, v in values.items():
        flag = max(a.option_strings, key=len)
        argv.append(flag if a.nargs == 0 else f"{flag}={v}")
    return argv


def make_cases() -> list:
    """``(id, leaf command, build(files) -> argv)`` for every option of every command and every bad value."""
    cases = []

    def add(leaf, action, label, value_of, extra=None):
        command = command_path(leaf)

        def build(f: Files, leaf=leaf, action=action, value_of=value_of, extra=extra):
            values = {a: v for a, v in baseline(leaf, f).items() if a not in group_mates(leaf, action)}
            values.pop(action, None)
            for a, v in (extra or {}).items():
                values[_action(leaf, a)] = v(f)
            values[action] = value_of(f)
            return render(leaf, values)

        cases.append(pytest.param(command, build, id=f"{command} {max(action.option_strings, key=len)} {label}"))

    for command, leaf in LEAVES.items():
        inputs = []
        for action in options(leaf):
            spec, kind = kind_of(command, action)
            if action.choices is not None:
                bad = "3" if action.type is int else "no-such-choice"
                add(leaf, action, "unknown-choice", lambda f, bad=bad: bad)
            elif kind == "number":
                is_int = action.type is int
                for label, v in bad_numbers(spec, is_int).items():
                    add(leaf, action, label, lambda f, v=v: v)
            elif isinstance(spec, Ints):
                for label, v in bad_numbers(spec, True).items():
                    add(leaf, action, label, lambda f, v=v: v)
            elif kind in ("text-in", "jsonl-in", "task", "config-in", "cache-in"):
                inputs.append((action, kind))
                for label, make in bad_input_files(kind).items():
                    add(leaf, action, label, make)
            elif kind in ("out-file", "out-stem"):
                add(leaf, action, "directory", lambda f: f.empty_dir)
                add(leaf, action, "missing-folder", lambda f: f.root / "no-such-dir" / "x.out")
                add(leaf, action, "trailing-slash", lambda f: f"{f.root}/new/")
                if kind == "out-stem":  # an earlier run's records are never appended to or overwritten
                    taken = lambda f: str(f.write("taken.jsonl", '{"a": 1}\n').with_suffix(""))  # noqa: E731
                    add(leaf, action, "records-exist", taken)
            elif kind in BAD_VALUES:
                for label, v in BAD_VALUES[kind].items():
                    add(leaf, action, label, v if callable(v) else (lambda f, v=v: v))
                bad = "lr=caf\udce9" if kind == "set" else "caf\udce9"  # bytes that are not UTF-8, as Python keeps them
                add(leaf, action, "non-utf8-argument", lambda f, bad=bad: bad)
        # the same path as an input and an output: the input must survive
        for out in [a for a in options(leaf) if kind_of(command, a)[1] == "out-file"]:
            for inp, kind in inputs:
                flag = max(inp.option_strings, key=len)
                add(
                    leaf,
                    out,
                    f"same-as-{flag.lstrip('-')}",
                    lambda f, kind=kind: good_input(kind, f),
                    {flag: lambda f, kind=kind: good_input(kind, f)},
                )
        for cache in [a for a in options(leaf) if kind_of(command, a)[1] == "cache-in"]:
            add(leaf, cache, "other-model", lambda f: f.good_kv, {"--model": lambda f: "smollm2-135m"})
            add(leaf, cache, "other-dtype", lambda f: f.good_kv, {"--dtype": lambda f: "float64"})
    return cases


CASES = make_cases()


# -- running them ------------------------------------------------------------------------------------------------
class ModelLoaded(AssertionError):
    """The slow part was reached: a bad value was not refused up front."""


@pytest.fixture(scope="module")
def saved_cache(tmp_path_factory) -> Path:
    from anllm.chat import compress
    from anllm.models import load_model

    path = tmp_path_factory.mktemp("cache") / "doc.kv"
    compress(load_model("tiny-random"), "A document. It has sentences!", "anchor").save(path)
    return path


@pytest.fixture
def files(tmp_path, saved_cache) -> Files:
    return Files(tmp_path, saved_cache)


@pytest.fixture
def tripwires(monkeypatch):
    """Loading a model, training or serving fails the test: every case must be refused before them."""

    def tripped(*args, **kwargs):
        raise ModelLoaded(f"reached the slow part with {args[:1]}")

    import anllm.models

    monkeypatch.setattr(anllm.models, "load_model", tripped)
    monkeypatch.setattr("anllm.train.loop.train", tripped)
    monkeypatch.setitem(sys.modules, "anllm.ui.blocks", types.SimpleNamespace(serve=tripped))
    for var in ("ANLLM_ALLOWED_MODELS", "GRADIO_SERVER_NAME"):  # anllm app sets them for its own process
        was = os.environ.get(var)
        monkeypatch.setenv(var, was or "")  # restored after the test, whatever a case did
        if was is None:
            monkeypatch.delenv(var)


def snapshot(root: Path) -> dict[str, object]:
    """Every file (size, hash, mtime) and folder under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (st.st_size, hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
        else:
            out[str(p)] = "dir"
    return out


def run_refused(capsys, root: Path, argv: list[str]) -> str:
    """Run ``argv``; assert exit 2, one stderr line, no traceback, no file changed, in time. Returns the line."""
    before = snapshot(root)
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    seconds = time.perf_counter() - t0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (argv, code, captured.err)
    assert len(lines) == 1, (argv, captured.err)
    assert lines[0].startswith(f"anllm {argv[0]}") and ": error: " in lines[0], (argv, lines[0])
    assert "Traceback" not in captured.err and captured.out == "", (argv, captured)
    assert snapshot(root) == before, f"{argv} changed the user's files"
    assert seconds < TIME_BOUND_S, (argv, seconds)
    return lines[0]


@pytest.mark.parametrize("command,build", CASES)
def test_bad_value_is_one_line_before_the_slow_part(capsys, files, tripwires, command, build):
    argv = [a.replace("{port}", str(free_port())) for a in build(files)]
    run_refused(capsys, files.root, argv)


# -- the catalogue itself ----------------------------------------------------------------------------------------
def test_the_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 200
    covered = {p.values[0] for p in CASES}
    assert covered == set(LEAVES), set(LEAVES) - covered


def test_every_option_has_a_kind():
    """A new option with a value needs a kind in anllm.commands.checks.OPTIONS (or choices): then it is covered."""
    missing = []
    for command, leaf in LEAVES.items():
        for action in options(leaf):
            try:
                spec = spec_for(command, action)
            except KeyError as e:
                missing.append(str(e))
                continue
            if action.nargs != 0 and action.choices is None:
                assert spec is not None, (command, action.option_strings)
                assert isinstance(spec, (Number, Ints)) or spec in BAD_VALUES or spec in (
                    "text-in", "jsonl-in", "task", "config-in", "cache-in", "out-file", "out-stem",
                ), f"no bad values for kind {spec!r} here"  # fmt: skip
    assert not missing, missing
    assert not [k for k in OPTIONS if k.split()[-1].startswith("--") and not _used(k)], "unused kinds in OPTIONS"


def _used(key: str) -> bool:
    *command, flag = key.split()
    return any(
        flag in a.option_strings
        for c, leaf in LEAVES.items()
        if not command or c == " ".join(command)
        for a in options(leaf)
    )


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_the_baseline_passes_the_checks(files, tripwires, command):
    """The good command line each case starts from is accepted: each case fails only through its bad value."""
    leaf = LEAVES[command]
    argv = [a.replace("{port}", str(free_port())) for a in render(leaf, baseline(leaf, files))]
    args = PARSER.parse_args(argv)
    assert leaf_parser(PARSER, args) is leaf
    check_args(PARSER, args)


# what the issue found by hand (19 tracebacks, 1 hang, 1 data loss): each is among the generated cases
ISSUE_26 = [
    *(
        f"{c} --model {bad}"
        for c in ("generate", "compress", "chat", "verify")
        for bad in ("junk-folder", "empty-folder")
    ),
    "train --config junk-model-folder",
    "train --config empty-model-folder",
    "generate --model 300-char-name",
    "verify --model 300-char-name",
    "compress --output directory",
    "verify --verify-chunk-size zero",
    "verify --verify-chunk-size negative",
    "eval bleu --template unknown-field",
    "app --port negative",
    "app --port above-range",
    "app --host bad-address",
    "eval recall --distances huge",  # the hang
    "compress --output same-as-text-file",  # the data loss
    "bench --plot missing-folder",
    "app --queue-size negative",
    "generate --cache directory",
    "generate --cache corrupt-cache",
    "chat --cache other-model",
]


def test_the_issues_cases_are_generated():
    ids = {p.id for p in CASES}
    assert not [c for c in ISSUE_26 if c not in ids], [c for c in ISSUE_26 if c not in ids]


# -- what needs a process or a REPL ------------------------------------------------------------------------------
def test_a_recall_distance_beyond_the_model_is_refused_before_the_filler(capsys, tmp_path):
    """The hang of issue 26 below the catalogue's range: the model's 4,096 positions are checked before building
    half a million tokens of filler."""
    line = run_refused(
        capsys, tmp_path, ["eval", "recall", "--model", "tiny-random", "--distances", "500000", "--families", "single"]
    )
    assert "distance 500000 needs more than 500000 positions but the model supports 4096" in line


def test_app_port_in_use_is_one_line(capsys, files, tripwires):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = run_refused(capsys, files.root, ["app", "--model=tiny-random", "--no-preload", f"--port={port}"])
    assert f"--port {port} is already in use" in line


def _anllm(args: list[str], stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "anllm", *args], input=stdin, capture_output=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_chat_stdin_not_utf8_is_one_error_line():
    res = _anllm(["chat", "--model", "tiny-random", "--raw", "--max-new-tokens", "2"], stdin=b"caf\xe9 au lait\n")
    err = res.stderr.decode("utf-8", "replace")
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert res.returncode == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and "stdin is not valid UTF-8 (byte 0xe9)" in errors[0], err


def test_chat_save_to_a_directory_stays_in_the_repl(tmp_path):
    (tmp_path / "adir").mkdir()
    res = _anllm(["chat", "--model", "tiny-random", "--raw"], stdin=f"/save {tmp_path / 'adir'}\n/quit\n".encode())
    err = res.stderr.decode()
    assert res.returncode == 0 and "Traceback" not in err, err
    assert "is a directory; give a file name" in err and list((tmp_path / "adir").iterdir()) == []


def test_a_real_process_refuses_to_overwrite_its_input(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The user's only copy. Of a document!\n", encoding="utf-8")
    res = _anllm(["compress", "--model", "tiny-random", "--text-file", str(doc), "-o", str(doc)])
    assert res.returncode == 2 and res.stdout == b""
    assert res.stderr.decode().splitlines() == [
        f"anllm compress: error: --output {doc} is the same file as --text-file: writing it would destroy your input; "
        "choose another output name (nothing was written)"
    ]
    assert doc.read_text(encoding="utf-8") == "The user's only copy. Of a document!\n"


# -- the app's named endpoints -----------------------------------------------------------------------------------
def bad_visitor_models(root: Path) -> dict[str, str]:
    junk, empty = root / "notmodel", root / "adir"
    junk.mkdir(exist_ok=True)
    (junk / "config.json").write_text("{junk", encoding="utf-8")
    empty.mkdir(exist_ok=True)
    return {
        "junk-folder": str(junk),
        "empty-folder": str(empty),
        "300-char-name": LONG,
        "300-char-hub-id": f"org/{LONG}",
        "absolute-path": "/etc",
        "parent-path": "../../etc",
        "relative-folder": "notmodel",  # a bare name that is a folder in the server's working directory
        "home": "~",
        "uncached-hub-id": "someone/not-on-this-machine",
        "unknown-name": "no-such-model",
    }


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    from anllm.models import load_model
    from anllm.ui.blocks import build_demo
    from anllm.ui.registry import ModelRegistry
    from tests.app_launch import launch

    tried = []

    def loader(name, **kw):  # what the server actually tries to load
        tried.append(name)
        return load_model(name, **kw)

    registry = ModelRegistry("tiny-random", loader=loader)  # allowlist off: the widest a visitor can get
    demo = build_demo(registry, max_request_s=None)
    url = launch(demo)
    yield Client(url, verbose=False), registry, tried, tmp_path_factory.mktemp("visitor")
    demo.close()


def _endpoint_args(params: list[dict], model: str) -> list:
    out = []
    for p in params:
        if p["parameter_name"] == "model_name":
            out.append(model)
        elif p.get("parameter_has_default"):
            out.append(p["parameter_default"])
        else:
            out.append("Hello there. How are you?")
    return out


def test_app_endpoints_answer_a_bad_model_with_its_line(app_client):
    """Every named endpoint that takes a model, with every bad name: the registry's one line, never gradio's generic
    error, and the server never tries a local path a visitor typed."""
    import html
    import json

    from gradio_client.exceptions import AppError

    from anllm.config import AnLLMError

    client, registry, tried, root = app_client
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    takes_model = {
        name for name, ep in api.items() if any(p["parameter_name"] == "model_name" for p in ep["parameters"])
    }
    endpoints = {name: api[name]["parameters"] for name in sorted(takes_model)}
    # the two that may answer otherwise: /ask says first that no document was compressed in this session, and
    # /explorer_setting leaves the explorer as it is when the model cannot be loaded
    other_answer = {"/ask", "/explorer_setting"}
    assert len(endpoints) >= 5, sorted(api)
    n = 0
    cwd = os.getcwd()
    os.chdir(root)  # "notmodel", "../../etc" resolve against the server's working directory
    try:
        for label, bad in bad_visitor_models(root).items():
            with pytest.raises(AnLLMError) as e:
                registry.get(bad)
            line = str(e.value)
            assert "\n" not in line and len(line) < 600, (label, line)
            for name, params in endpoints.items():
                try:
                    result = client.predict(*_endpoint_args(params, bad), api_name=name)
                    text = html.unescape(json.dumps(result, ensure_ascii=False))
                    skipped = all(isinstance(v, dict) and v.get("__type__") == "update" for v in result)
                except AppError as err:
                    text, skipped = str(err), False
                assert "upstream" not in text.lower(), (name, label, text[:300])
                shown = line in text.replace('\\"', '"')
                assert shown or (name in other_answer and (skipped or "⚠️" in text)), (name, label, line, text[:500])
                n += 1
        local = [t for t in tried if t != "tiny-random" and (t.startswith(("/", ".", "~")) or Path(t).exists())]
        assert not local, local
    finally:
        os.chdir(cwd)
    assert n >= 50


def test_the_allowlist_is_on_when_the_app_binds_a_network(monkeypatch):
    from anllm.ui.launch import is_loopback, network_allowlist
    from anllm.ui.registry import allowed_models_from_env

    for var in ("ANLLM_ALLOWED_MODELS", "SPACE_ID", "GRADIO_SERVER_NAME"):  # network_allowlist sets two of them
        monkeypatch.setenv(var, "")  # recorded, so that the teardown restores the variable even when it was unset
        monkeypatch.delenv(var)
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "192.168.1.5", "example.org")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    assert allowed_models_from_env("default", host="127.0.0.1") is None
    assert allowed_models_from_env("default", host="0.0.0.0") == ("default",)
    network_allowlist("0.0.0.0", allow_any=False)  # what anllm app does with --host
    assert allowed_models_from_env("default") == ("default",)
    monkeypatch.setenv("ANLLM_ALLOWED_MODELS", "tiny-random")
    assert allowed_models_from_env("default") == ("default", "tiny-random")
    network_allowlist("0.0.0.0", allow_any=True)  # --allow-any-model: the explicit opt-out
    assert allowed_models_from_env("default") is None


def test_visitors_never_reach_a_local_path_even_with_the_allowlist_off(tmp_path):
    from anllm.config import AnLLMError
    from anllm.models import tiny_model, tiny_tokenizer
    from anllm.ui.registry import ModelRegistry

    model_dir = tmp_path / "my-model"  # a real model folder on the server
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    tried = []
    registry = ModelRegistry("tiny-random", allowed=None, loader=lambda name, **kw: tried.append(name))
    with pytest.raises(AnLLMError, match="does not load local folders"):
        registry.get(str(model_dir))
    assert tried == []
    operator = ModelRegistry("tiny-random", allowed=[str(model_dir)], loader=lambda name, **kw: tried.append(name))
    operator.get(str(model_dir))  # the host named it: allowed
    assert tried == [str(model_dir)]


def _bad_numbers_for(param: dict) -> dict[str, object]:
    kind = param["python_type"]["type"]
    if kind not in ("float", "int"):
        return {}
    return {"zero": 0, "negative": -1, "huge": 10**12}  # (JSON cannot carry NaN)


def test_app_endpoints_answer_bad_numbers_with_a_line(app_client):
    """Every number an endpoint takes, out of range: a line naming it (the handler's or gradio's own for a slider's
    bounds), never gradio's generic "upstream app raised an exception"."""
    from gradio_client.exceptions import AppError

    client, _, _, _ = app_client
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    n = 0
    for name, ep in sorted(api.items()):
        params = ep["parameters"]
        for i, p in enumerate(params):
            for label, bad in _bad_numbers_for(p).items():
                values = _endpoint_args(params, "tiny-random")
                values[i] = bad
                try:
                    result = client.predict(*values, api_name=name)
                    text = str(result)
                except AppError as err:
                    text = str(err)
                assert "upstream" not in text.lower() and "Traceback" not in text, (name, p["label"], label, text)
                n += 1
    assert n >= 20


def test_a_hub_id_without_network_is_one_line_naming_hf_hub_offline(capsys, tmp_path, tripwires, monkeypatch):
    """Online settings but no network: a probe of a few seconds, then the hint, instead of ~50 s of retries."""
    import anllm.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(anllm.models, "hub_reachable", lambda timeout_s=3.0: probes.append(timeout_s) or False)
    line = run_refused(capsys, tmp_path, ["generate", "--model", "someone/not-cached-here", "--prompt", "Hi."])
    assert "the Hub is unreachable from here; set HF_HUB_OFFLINE=1" in line and probes == [3.0]
