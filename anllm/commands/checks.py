"""Every command-line value checked when the command starts: before a model loads or a text is read.

:data:`OPTIONS` gives each option of every subcommand a kind (a :class:`Number` range, :class:`Ints`, or the name of a
check in :data:`CHECKS`), keyed by option string (``"--seed"``) or, where one spelling means different things in
different commands, by command and option (``"eval recall --budget"``). Options with ``choices`` and flags need no
entry: argparse checks them. ``anllm.cli.main`` runs :func:`check_args` between parsing and the command, so a bad
value is one line and exit 2 before the slow part; ``tests/test_bad_input_catalogue.py`` walks the parsers and
generates bad values from these kinds, and fails for an option that has none.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anllm.config import AnLLMError

MAX_TOKENS = 1 << 20  # generous upper bound for any token count on the command line (no model has a longer context)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Number:
    """A number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ``None`` (the option left out) is fine."""

    lo: float
    hi: float
    lo_open: bool = False

    def check(self, flag: str, value: Any) -> None:
        if value is None:
            return
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and value <= self.hi):
            low = f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
            raise AnLLMError(f"{flag} must be a number {low} and <= {_num(self.hi)}, got {value!r}")


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Ints:
    """A comma-separated list of integers in ``[lo, hi]``, at least one."""

    lo: int
    hi: int

    def check(self, flag: str, value: Any) -> None:
        if value is None:
            return
        try:
            items = [int(x) for x in str(value).split(",") if x.strip()]
        except ValueError:
            raise AnLLMError(f"{flag} must be comma-separated integers, got {value!r}") from None
        if not items or any(not self.lo <= x <= self.hi for x in items):
            raise AnLLMError(
                f"{flag} must list at least one integer, each >= {self.lo} and <= {self.hi:,}, got {value!r}"
            )


OPTIONS: dict[str, Number | Ints | str] = {
    # numbers (argparse has converted them; a non-number is its usage error)
    "--chunk-size": Number(1, MAX_TOKENS),
    "--max-new-tokens": Number(1, MAX_TOKENS),
    "--new-tokens": Number(1, MAX_TOKENS),
    "--verify-chunk-size": Number(1, MAX_TOKENS),
    "--max-tokens": Number(1, 1 << 30),
    "--limit": Number(1, 1 << 30),
    "--n": Number(1, 10_000),
    "--repeats": Number(1, 10_000),
    "--temperature": Number(0, 100),
    "--top-p": Number(0, 1, lo_open=True),
    "--top-k": Number(0, MAX_TOKENS),
    "--repetition-penalty": Number(0, 100, lo_open=True),
    "--seed": Number(0, MAX_SEED),
    "--port": Number(1, 65535),
    "--queue-size": Number(1, 1 << 16),
    "--max-sessions": Number(1, 1 << 20),
    "--max-request-s": Number(0, 7 * 86400),
    "--context": Ints(1, MAX_TOKENS),
    "--distances": Ints(0, MAX_TOKENS),
    "--ppl-tokens": Number(0, MAX_TOKENS),  # 0: the sweep's recall part only
    "eval sweep --n": Number(0, 10_000),  # 0: the sweep's perplexity part only
    "eval assistant --n": Number(1, 72),  # the prompts there are (anllm.evaluation.assistant.N_PROMPTS; tested)
    "--batch-size": Number(1, 1024),
    # files the command reads
    "--prompt-file": "text-in",
    "--text-file": "text-in",
    "--filler-file": "text-in",
    "--ref": "text-in",
    "--src": "text-in",
    "--hyp": "text-in",
    "--items": "jsonl-in",
    "--baseline": "jsonl-in",  # eval acceptance: another run's OUT.jsonl
    "--task": "task",
    "--config": "config-in",
    "--cache": "cache-in",
    "--adapter": "adapter-in",  # a peft adapter folder (eval acceptance / sweep / assistant / ppl, --model default)
    # files the command writes
    "--output": "out-file",
    "--plot": "out-file",
    "export --out": "out-file",
    "eval assistant --out": "out-file",
    "eval acceptance --out": "out-stem",  # STEM.jsonl, STEM.json and STEM.html
    "eval sweep --out": "out-stem",  # a new folder: the same rules as a new file (not an existing directory)
    # names and formats
    "--model": "model",
    "--device": "device",
    "--host": "host",
    "--policy": "mode",
    "--policies": "modes",
    "bench --policies": "bench-modes",
    "verify --mode": "removed",
    "--budget": "budget",
    "eval recall --budget": "budget-mode",
    "--families": "families",
    "--fillers": "fillers",
    "--ppl-fillers": "fillers",
    "--weights": "weights",
    "--budgets": "fractions",
    "--scorers": "scorers",
    "--template": "template",
    "--prompt": "prompt",
    "--stop": "stop",
    "--set": "set",
}

INPUT_KINDS = ("text-in", "jsonl-in", "task", "config-in", "cache-in")
PATH_KINDS = (*INPUT_KINDS, "adapter-in", "out-file", "model")  # a file name may hold any bytes; text and names may not


def _check_utf8(value: Any, flag: str) -> None:
    """A text argument with bytes that are not UTF-8 (kept by Python as surrogates) is one line, not a traceback."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                byte = ord(v[e.start]) & 0xFF
                raise AnLLMError(
                    f"{flag}: the value is not valid UTF-8 (byte 0x{byte:02x} at character {e.start}): "
                    "type it in a UTF-8 terminal, or put the text in a UTF-8 file"
                ) from None


def command_path(parser: argparse.ArgumentParser) -> str:
    """``"eval recall"`` for the parser of ``anllm eval recall``."""
    return parser.prog.split(" ", 1)[1] if " " in parser.prog else ""


def spec_for(command: str, action: argparse.Action) -> Number | Ints | str | None:
    """The kind of ``action`` in ``command``: None for flags and options whose ``choices`` argparse checks.

    Raises:
        KeyError: an option that takes a value but has no kind in :data:`OPTIONS` (add one).
    """
    if action.nargs == 0 or action.choices is not None or isinstance(action, argparse._SubParsersAction):
        return None
    for opt in action.option_strings:
        if f"{command} {opt}" in OPTIONS:
            return OPTIONS[f"{command} {opt}"]
    for opt in action.option_strings:
        if opt in OPTIONS:
            return OPTIONS[opt]
    raise KeyError(f"anllm {command} {'/'.join(action.option_strings)} has no kind in anllm.commands.checks.OPTIONS")


def leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser that parsed ``args``: ``anllm eval recall``'s for ``anllm eval recall ...``."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


def flag_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


# -- the checks: (value, flag, context) -> None, raising AnLLMError ------------------------------------------------
@dataclass
class Context:
    command: str
    args: argparse.Namespace
    inputs: dict[str, Path]  # flag -> an existing input file this command reads


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _existing_file(value: str, flag: str, what: str) -> Path:
    """``value`` as the path of an existing regular file, or one line saying what it is instead."""
    if not value.strip():
        raise AnLLMError(f"{flag} is empty: give the path of a {what} file")
    p = Path(value)
    try:
        exists = p.exists()
    except (OSError, ValueError) as e:
        raise AnLLMError(f"{flag} {value[:120]!r} is not a usable path ({getattr(e, 'strerror', None) or e})") from None
    if not exists:
        raise AnLLMError(f"{what} file {p} does not exist ({flag})")
    if p.is_dir():
        raise AnLLMError(f"{what} file {p} is a directory; give the path of a file ({flag})")
    if not p.is_file():
        raise AnLLMError(f"{what} file {p} is not a regular file ({flag})")
    if not os.access(p, os.R_OK):
        raise AnLLMError(f"{what} file {p} is not readable: check its permissions ({flag})")
    return p


def check_text_in(value, flag, ctx) -> None:
    from anllm.textio import MAX_TEXT_BYTES

    what = {"--prompt-file": "prompt", "--ref": "reference", "--src": "source", "--hyp": "hypothesis"}.get(flag, "text")
    what = "filler" if flag == "--filler-file" else what
    p = _existing_file(value, flag, what)
    size = p.stat().st_size
    if size == 0:
        raise AnLLMError(f"{what} file {p} is empty: put some text in it ({flag})")
    if size > MAX_TEXT_BYTES:
        raise AnLLMError(f"{what} file {p} has {size:,} bytes; the limit is {MAX_TEXT_BYTES:,}: give a shorter text")
    ctx.inputs[flag] = p


def check_jsonl_in(value, flag, ctx) -> None:
    ctx.inputs[flag] = _existing_file(value, flag, "items")


def check_task(value, flag, ctx) -> None:
    from anllm.evaluation.tasks import HUB_TASKS, LOCAL_TASKS

    if value in LOCAL_TASKS or value in HUB_TASKS:
        return
    if not value.strip():
        raise AnLLMError(f"{flag} is empty: give a task name ({', '.join(LOCAL_TASKS)}, ...) or a .jsonl file")
    p = Path(value)
    if value.endswith((".jsonl", ".json")) or _is_dir(p) or p.exists():
        ctx.inputs[flag] = _existing_file(value, flag, "task")


def check_config_in(value, flag, ctx) -> None:
    ctx.inputs[flag] = _existing_file(value, flag, "config")


def check_cache_in(value, flag, ctx) -> None:
    """The file's header and checksum, and the model and dtype it names against ``--model`` / ``--dtype``."""
    from anllm.cache_io import verify_cache_file
    from anllm.config import PRESETS
    from anllm.models import BUILTIN_MODELS

    p = _existing_file(value, flag, "cache")
    record = verify_cache_file(p)
    ctx.inputs[flag] = p
    saved = record.get("model", {}) if isinstance(record.get("model"), dict) else {}
    model, known = getattr(ctx.args, "model", None), (*BUILTIN_MODELS, *PRESETS)
    if saved.get("name") in known and model in known and saved["name"] != model:
        raise AnLLMError(
            f"{p} was computed by model {saved['name']!r}, not {model!r}: pass --model {saved['name']} "
            "(or compress the text again with this model)"
        )
    dtype = getattr(ctx.args, "dtype", None)
    if saved.get("dtype") and dtype and saved["dtype"] != dtype:
        raise AnLLMError(f"{p} holds {saved['dtype']} K/V but --dtype is {dtype}: pass --dtype {saved['dtype']}")


def check_adapter_in(value, flag, ctx) -> None:
    """``--adapter``: only with ``--model default``, and a peft adapter folder (``models.check_adapter_dir``)."""
    from anllm.models import check_adapter_dir

    model = getattr(ctx.args, "model", None)
    if model != "default":
        raise AnLLMError(f"{flag} is for --model default (the base SmolLM2 plus an adapter), not --model {model}")
    check_adapter_dir(value, flag)


def check_out_file(value, flag, ctx) -> None:
    """Not a directory, in a folder that exists, and not one of the files this command reads."""
    if value is None:
        return
    p = Path(value)
    if not value.strip() or value.endswith(("/", os.sep)):
        raise AnLLMError(f"{flag} {value!r} is not a file name; give one such as out.html")
    if _is_dir(p):
        raise AnLLMError(f"{flag} {p} is a directory; give a file name inside it (nothing was written)")
    if not _is_dir(p.parent if str(p.parent) else Path(".")):
        raise AnLLMError(f"{flag} {p}: the folder {p.parent} does not exist; create it first (nothing was written)")
    if p.exists():
        for other, q in ctx.inputs.items():
            try:
                same = p.samefile(q)
            except OSError:
                same = p.resolve() == q.resolve()
            if same:
                raise AnLLMError(
                    f"{flag} {p} is the same file as {other}: writing it would destroy your input; "
                    "choose another output name (nothing was written)"
                )


def check_model(value, flag, ctx) -> None:
    from anllm.models import check_model_name

    check_model_name(value)


def check_device_name(value, flag, ctx) -> None:
    from anllm.devices import check_device

    check_device(value)


def check_host(value, flag, ctx) -> None:
    from anllm.ui.launch import check_bind

    check_bind(value, getattr(ctx.args, "port", None))


def _check_spec(spec: str, flag: str, extra: tuple[str, ...] = ()) -> None:
    from anllm.policies import POLICIES, parse_spec, policy_from_spec

    if spec.strip().lower() in extra:
        return
    name, _ = parse_spec(spec)
    if name not in POLICIES:
        names = ", ".join((*POLICIES, *extra))
        raise AnLLMError(f"{flag}: unknown mode {name!r}; choose one of {names} (optionally name:key=value,...)")
    try:
        policy_from_spec(spec, None)
    except AnLLMError as e:
        if not (hasattr(POLICIES[name], "from_model") and str(e).startswith(f"mode {name!r} needs the model")):
            raise AnLLMError(f"{flag}: {e}") from None


def check_mode(value, flag, ctx) -> None:
    if value is not None:
        _check_spec(value, flag)


def _modes(value: str, flag: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    from anllm.policies import split_modes

    modes = split_modes(value)
    if not modes:
        raise AnLLMError(f"{flag} is empty: give comma-separated modes such as full,anchor")
    for m in modes:
        _check_spec(m, flag, extra)
    return modes


def check_modes(value, flag, ctx) -> None:
    _modes(value, flag)


def check_bench_modes(value, flag, ctx) -> None:
    from anllm.bench import EXTRA_ROWS

    _modes(value, flag, EXTRA_ROWS)


def check_budget(value, flag, ctx) -> None:
    """``anllm eval ppl --budget``: KV entries (>= 1) or a mode among ``--modes``."""
    if value is None:
        return
    try:
        n = int(value)
    except ValueError:
        check_budget_mode(value, flag, ctx)
        return
    if not 1 <= n <= MAX_TOKENS:
        raise AnLLMError(
            f"{flag} must be KV entries >= 1 and <= {MAX_TOKENS:,} or a policy among --policies, got {value!r}"
        )


def check_budget_mode(value, flag, ctx) -> None:
    """A mode among ``--modes`` whose cache size the budgeted rows match (``none``: no matching)."""
    from anllm.policies import split_modes

    if value is None or value.strip().lower() == "none":
        return
    modes = split_modes(getattr(ctx.args, "policies", None) or getattr(ctx.args, "modes", None) or "")
    if value.strip().replace(";", ",") not in modes:
        raise AnLLMError(
            f"{flag} {value!r} must be one of the policies {list(modes)} (its cache size is matched) or none"
        )


def check_families(value, flag, ctx) -> None:
    from anllm.memory import FAMILIES

    names = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in names if f not in FAMILIES]
    if not names or bad:
        raise AnLLMError(f"{flag}: unknown recall families {bad}; choose from {', '.join(FAMILIES)}")


def _names(value: str, flag: str, known: tuple[str, ...], what: str) -> None:
    names = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in names if x not in known]
    if not names or bad:
        raise AnLLMError(f"{flag}: unknown {what} {bad}; choose from {', '.join(known)} (comma-separated)")


def check_fillers(value, flag, ctx) -> None:
    from anllm.evaluation.acceptance import FILLERS

    _names(value, flag, tuple(FILLERS), "fillers")


def check_weights(value, flag, ctx) -> None:
    _names(value, flag, ("default", "base"), "weights")


def check_fractions(value, flag, ctx) -> None:
    try:
        fractions = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        fractions = []
    if not fractions or any(not 0.0 < b < 1.0 for b in fractions):  # NaN fails the comparison too
        raise AnLLMError(f"{flag} must be comma-separated fractions of the context in (0, 1), got {value!r}")


def check_out_stem(value, flag, ctx) -> None:
    """An output stem: STEM.jsonl is written item by item (or read back with --summarise, or continued with --resume),
    then .json and .html."""
    check_out_file(value, flag, ctx)
    jsonl = Path(value).with_suffix(".jsonl")
    if getattr(ctx.args, "summarise", False):
        if not jsonl.is_file():
            raise AnLLMError(f"--summarise: {jsonl} does not exist (run without --summarise first)")
    elif getattr(ctx.args, "resume", False):
        if jsonl.exists() and not jsonl.is_file():
            raise AnLLMError(f"--resume: {jsonl} is not a file")
    elif jsonl.exists():
        raise AnLLMError(
            f"{jsonl} exists: give another {flag}, add --resume to continue it, or --summarise to summarise it "
            "(nothing was written)"
        )


def check_scorers(value, flag, ctx) -> None:
    from anllm.evaluation.qa import SCORERS

    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in SCORERS]
    if not names or bad:
        raise AnLLMError(f"{flag}: unknown scorers {bad}; choose from {', '.join(SCORERS)}")


def check_template(value, flag, ctx) -> None:
    if value is None:
        return
    if "{src}" not in value:
        raise AnLLMError(f"{flag} {value!r} must contain {{src}}, where each source line goes")
    try:
        value.format(src="")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise AnLLMError(
            f"{flag} {value!r} cannot be filled ({type(e).__name__}: {e}); the only placeholder is {{src}} "
            "(write {{ and }} for literal braces)"
        ) from None


def check_prompt(value, flag, ctx) -> None:
    if value is not None and not value.strip():
        raise AnLLMError(f"the prompt is empty ({flag}): give some text")


def check_stop(value, flag, ctx) -> None:
    for s in value or []:
        if not s:
            raise AnLLMError(f"{flag} '' is empty: give the text to stop at")


def check_set(value, flag, ctx) -> None:
    for item in value or []:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise AnLLMError(f"--set expects key=value, got {item!r}")


REMOVED = {"verify --mode": "verify --mode was removed: give the anchor kind as --anchors {value}"}


def check_removed(value, flag, ctx) -> None:
    """An option kept only to be refused (so that it is not read as a prefix of another)."""
    raise AnLLMError(REMOVED.get(f"{ctx.command} {flag}", f"{flag} was removed (see --help)").format(value=value))


CHECKS = {
    "text-in": check_text_in,
    "jsonl-in": check_jsonl_in,
    "task": check_task,
    "config-in": check_config_in,
    "cache-in": check_cache_in,
    "adapter-in": check_adapter_in,
    "out-file": check_out_file,
    "model": check_model,
    "device": check_device_name,
    "host": check_host,
    "mode": check_mode,
    "modes": check_modes,
    "bench-modes": check_bench_modes,
    "budget": check_budget,
    "budget-mode": check_budget_mode,
    "families": check_families,
    "fillers": check_fillers,
    "weights": check_weights,
    "fractions": check_fractions,
    "out-stem": check_out_stem,
    "scorers": check_scorers,
    "template": check_template,
    "prompt": check_prompt,
    "stop": check_stop,
    "set": check_set,
    "removed": check_removed,
}
# the order kinds are checked in: cheap formats first, inputs before the outputs compared with them, the model (which
# may probe the network for a moment) and the server's address last
ORDER = (
    "number", "removed", "prompt", "stop", "set", "template", "mode", "modes", "bench-modes", "budget", "budget-mode",
    "families", "fillers", "weights", "fractions", "scorers", "device", "text-in", "jsonl-in", "task", "config-in",
    "cache-in", "adapter-in", "out-file", "out-stem", "model", "host",
)  # fmt: skip


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every value ``args`` holds for the command that parsed it; the first problem raises one line.

    Raises:
        AnLLMError: naming the option, the value and what to do.
    """
    leaf = leaf_parser(parser, args)
    ctx = Context(command_path(leaf), args, {})
    todo = []
    for action in leaf._actions:
        if not action.option_strings:
            continue
        try:
            spec = spec_for(ctx.command, action)
        except KeyError:
            continue  # an option without a kind is reported by the catalogue test, not the user
        if spec is None:
            continue
        kind = spec if isinstance(spec, str) else "number"
        todo.append((ORDER.index(kind), kind, spec, action))
    for _, kind, spec, action in sorted(todo, key=lambda t: t[0]):
        value = getattr(args, action.dest, None)
        flag = flag_name(action)
        if kind not in PATH_KINDS:
            _check_utf8(value, flag)
        if kind == "number":
            spec.check(flag, value)
        elif value is not None:
            CHECKS[kind](value, flag, ctx)


CORPUS_HINT = "python -m anllm.train.corpus --out {folder} --sources synthetic"


def check_train(cfg) -> None:
    """A resolved training config's model, data files and output folder, before the model loads.

    A missing data file in a ``corpus-*`` folder names the command that writes it (configs/tiny-pretrain-ep.yaml's
    data is made by ``python -m anllm.train.corpus``).
    """
    from anllm.models import check_model_name

    check_model_name(cfg.model.name)
    files = [("train_files", f) for f in cfg.data.train_files if not str(f).startswith("hub:")]
    if cfg.data.eval_file and not str(cfg.data.eval_file).startswith("hub:"):
        files.append(("eval_file", cfg.data.eval_file))
    for key, f in files:
        p = Path(f)
        try:
            missing = not p.exists()
        except OSError:
            missing = True
        if missing and p.parent.name.startswith("corpus-"):
            raise AnLLMError(
                f"data file {p} ({key}) does not exist; write it first: {CORPUS_HINT.format(folder=p.parent)}"
            )
        _existing_file(str(f), key, "data")
    out = Path(cfg.run.output_dir)
    if out.exists() and not out.is_dir():
        raise AnLLMError(f"output_dir {out} is a file; give a folder for checkpoints and the final model")
    _scan_records(cfg, [f for key, f in files if key == "train_files"])


def _scan_records(cfg, files: list[str]) -> None:
    """Every record of the (local, not huge) training files read once as training will: a malformed line, a
    non-UTF-8 byte or a record without its text is named now rather than after the model has loaded."""
    from anllm.textio import MAX_TEXT_BYTES
    from anllm.train.data import document_text, read_records, sft_pair

    for f in files:
        if Path(f).stat().st_size > MAX_TEXT_BYTES:
            continue  # a large corpus is streamed by training itself
        for n, record in enumerate(read_records(str(f), cfg)):
            if "segments" in record:
                continue
            if cfg.data.objective == "sft":
                sft_pair(record, cfg, where=f"{f}: ")
            else:
                document_text(record, cfg, where=f"{f}: ")
            if cfg.data.max_examples and n + 1 >= cfg.data.max_examples:
                break
