"""Multiple-choice tasks: the local JSONL schema (validated with line numbers) and the paper's eight tasks.

Local data: JSONL, one item per line: ``{"query": str, "choices": [str, ...], "label": int}``, optional ``"id"``;
``"queries": [str, ...]`` (one context per choice, WinoGrande-style) may replace ``"query"``. The paper's tasks
(OpenBookQA, PIQA, BoolQ, HellaSwag, WinoGrande, ARC-e, ARC-c, SciQ) are loaded with ``datasets`` from the Hub
when it is reachable and converted to the same schema; the prompt formats are anllm's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anllm.config import AnLLMError
from anllm.resources import TOY_MC, resource_path
from anllm.textio import read_jsonl

LOCAL_TASKS = {"toy": resource_path(TOY_MC)}


@dataclass
class MCItem:
    """One multiple-choice item: a context per choice (usually the same) and the index of the right choice."""

    contexts: list[str]
    choices: list[str]
    label: int
    id: str = ""


# -- loading -----------------------------------------------------------------------------------------------------
def parse_item(obj, where: str) -> MCItem:
    """Validate one decoded JSON object against the schema; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(obj, dict):
        raise AnLLMError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise AnLLMError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if ("query" in obj) == ("queries" in obj):
        raise AnLLMError(f"{where}: give exactly one of 'query' (a string) or 'queries' (one string per choice)")
    if "query" in obj:
        if not isinstance(obj["query"], str):
            raise AnLLMError(f"{where}: 'query' must be a string")
        contexts = [obj["query"]] * len(choices)
    else:
        contexts = obj["queries"]
        if (
            not isinstance(contexts, list)
            or len(contexts) != len(choices)
            or not all(isinstance(q, str) for q in contexts)
        ):
            raise AnLLMError(f"{where}: 'queries' must be a list of strings, one per choice ({len(choices)})")
    label = obj.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise AnLLMError(
            f"{where}: 'label' must be an integer index into 'choices' (0..{len(choices) - 1}), got {label!r}"
        )
    return MCItem(contexts, choices, label, str(obj.get("id", "")))


def load_jsonl(path: str | Path) -> list[MCItem]:
    """Items of a local JSONL file in the schema above; errors name the file and line."""
    path = Path(path)
    items = [parse_item(obj, f"{path}:{n}") for n, obj in read_jsonl(path, "task")]
    if not items:
        raise AnLLMError(f"task file {path} has no items")
    return items


def _letters(choices: dict) -> tuple[list[str], list[str]]:
    return list(choices["text"]), list(choices["label"])


def _obqa(d: dict) -> dict:
    texts, labels = _letters(d["choices"])
    return {"query": d["question_stem"], "choices": texts, "label": labels.index(d["answerKey"].strip())}


def _arc(d: dict) -> dict:
    texts, labels = _letters(d["choices"])
    return {"query": f"Question: {d['question']}\nAnswer:", "choices": texts, "label": labels.index(d["answerKey"])}


def _piqa(d: dict) -> dict:
    return {"query": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]], "label": int(d["label"])}


def _boolq(d: dict) -> dict:
    q = f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"
    return {"query": q, "choices": ["no", "yes"], "label": int(bool(d["answer"]))}


def _hellaswag(d: dict) -> dict:
    ctx = f"{d['activity_label']}: {d['ctx_a']} {d['ctx_b'].capitalize()}".strip()
    return {"query": ctx, "choices": list(d["endings"]), "label": int(d["label"])}


def _winogrande(d: dict) -> dict:
    cut = d["sentence"].index("_")
    rest = d["sentence"][cut + 1 :].strip()
    queries = [d["sentence"][:cut] + d["option1"], d["sentence"][:cut] + d["option2"]]
    return {"queries": queries, "choices": [rest, rest], "label": int(d["answer"]) - 1}


def _sciq(d: dict) -> dict:
    q = f"{d['support'].strip()}\nQuestion: {d['question']}\nAnswer:".lstrip()
    choices = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
    return {"query": q, "choices": choices, "label": 3}


# name -> (hub dataset, config, split, converter to the local schema)
HUB_TASKS: dict[str, tuple[str, str | None, str, Callable[[dict], dict]]] = {
    "openbookqa": ("allenai/openbookqa", "main", "test", _obqa),
    "piqa": ("ybisk/piqa", None, "validation", _piqa),
    "boolq": ("google/boolq", None, "validation", _boolq),
    "hellaswag": ("Rowan/hellaswag", None, "validation", _hellaswag),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", _winogrande),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", _arc),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", _arc),
    "sciq": ("allenai/sciq", None, "test", _sciq),
}


def load_task(task: str, limit: int | None = None) -> list[MCItem]:
    """Items of ``task``: a bundled local task (``toy``), a ``.jsonl`` path, or a paper task via ``datasets``."""
    if limit is not None and limit < 1:
        raise AnLLMError(f"--limit must be >= 1, got {limit}")
    if task in LOCAL_TASKS:
        items = load_jsonl(LOCAL_TASKS[task])
    elif task.endswith(".jsonl") or Path(task).is_file():
        items = load_jsonl(task)
    elif task in HUB_TASKS:
        items = _load_hub(task, limit)
    else:
        raise AnLLMError(
            f"unknown task {task!r}: use a local .jsonl file, one of {', '.join(LOCAL_TASKS)} (bundled), "
            f"or one of {', '.join(HUB_TASKS)} (needs `datasets` and the Hugging Face Hub)"
        )
    return items[:limit] if limit is not None else items


def _load_hub(task: str, limit: int | None) -> list[MCItem]:
    path, name, split, convert = HUB_TASKS[task]
    try:
        from datasets import load_dataset
    except ImportError:
        raise AnLLMError(
            f"task {task!r} is loaded from the Hugging Face Hub with `datasets` (not installed); offline, convert it "
            "to a local JSONL file (docs/evaluation.md) and pass its path as --task"
        ) from None
    try:
        ds = load_dataset(path, name, split=split)
    except Exception as e:  # noqa: BLE001 - network / hub / cache errors all mean the same to the user
        raise AnLLMError(
            f"could not load {path} for task {task!r} ({type(e).__name__}); the Hub may be unreachable"
        ) from e
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    return [parse_item(convert(dict(r)), f"{task}[{i}]") for i, r in enumerate(rows)]
