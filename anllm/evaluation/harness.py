"""EleutherAI lm-evaluation-harness integration: an ``anllm`` model type and a local JSONL task.

``lm_eval`` is an optional dependency (about 620 MB and 49 packages on top of anllm's; see docs/evaluation.md),
imported only here and only when asked for. :class:`HarnessBackend` holds the scoring logic and does not need
``lm_eval``; :func:`register_with_lm_eval` wraps it in an ``lm_eval.api.model.LM`` registered as ``"anllm"``, so
any harness task runs with anchor inference::

    AnLLMEvalLM = register_with_lm_eval()
    lm_eval.simple_evaluate(model=AnLLMEvalLM(model="default", mode="anchor"), tasks=["arc_easy"], num_fewshot=5)

In AC mode the harness's few-shot prompt gets ``<AC>`` at the end of each demonstration (before every
``fewshot_delimiter``), the paper's 5-shot placement (arXiv 2402.07616 §4.3).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from anllm.config import AC_TOKEN, AnLLMError, GenerationConfig
from anllm.evaluation.qa import SCORERS, load_jsonl, score_cached, score_one_pass
from anllm.models import LoadedModel

LOCAL_TASK_NAME = "anllm_local_mc"
_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


class HarnessBackend:
    """The harness's three request types answered by anllm (no ``lm_eval`` import needed).

    Args:
        lm: the loaded model.
        scorer: ``anchor`` (real anchor-cache decoding), ``masked`` (one AnSAN-masked pass, the paper's harness),
            ``full`` (full cache) or ``nocache``.
        fewshot_delimiter: in AC mode, ``<AC>`` is inserted before each occurrence in a context.
    """

    def __init__(self, lm: LoadedModel, scorer: str = "anchor", fewshot_delimiter: str = "\n\n"):
        if scorer not in SCORERS:
            raise AnLLMError(f"unknown scorer {scorer!r}; choose from {', '.join(SCORERS)}")
        self.lm, self.scorer, self.delim = lm, scorer, fewshot_delimiter

    def mark_demos(self, context: str) -> str:
        """AC mode: close every demonstration (text before a few-shot delimiter) with ``<AC>``."""
        if self.lm.anchor.kind != "ac" or not self.delim or AC_TOKEN in context:
            return context
        parts = context.split(self.delim)
        return self.delim.join([p + f" {AC_TOKEN}" if p.strip() else p for p in parts[:-1]] + parts[-1:])

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), continuation is the greedy output)`` per ``(context, continuation)``."""
        tok = self.lm.tokenizer
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        conts = []
        for i, (ctx, cont) in enumerate(pairs):
            ids = list(tok(self.mark_demos(ctx))["input_ids"])
            conts.append(list(tok(cont, add_special_tokens=False)["input_ids"]))
            groups.setdefault(tuple(ids), []).append(i)
        with torch.inference_mode():
            for ctx_ids, idx in groups.items():
                if self.scorer in ("masked", "nocache"):
                    for i in idx:
                        out[i] = score_one_pass(
                            self.lm, list(ctx_ids), conts[i], masked=self.scorer == "masked", greedy=True
                        )
                else:
                    res = score_cached(self.lm, list(ctx_ids), [conts[i] for i in idx], self.scorer)
                    for i, ll, g in zip(idx, res.logliks, res.greedy):
                        out[i] = (ll, g)
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """Total log-likelihood of each text (every token after the first), by cache decoding in chunks."""
        from anllm.evaluation.ppl import perplexity

        mode = "anchor" if self.scorer == "masked" else ("full" if self.scorer == "nocache" else self.scorer)
        out = []
        for text in texts:
            ids = list(self.lm.tokenizer(text)["input_ids"])
            out.append(0.0 if len(ids) < 2 else -perplexity(self.lm, ids, mode).nll * (len(ids) - 1))
        return out

    def generate_until(self, requests: list[tuple[str, dict]]) -> list[str]:
        """Greedy continuation of each context until one of ``gen_kwargs["until"]``."""
        from anllm.generation import encode_prompt, generate

        mode = "anchor" if self.scorer == "masked" else ("full" if self.scorer == "nocache" else self.scorer)
        out = []
        for ctx, kw in requests:
            until = kw.get("until") or ()
            until = (until,) if isinstance(until, str) else tuple(until)
            text = self.mark_demos(ctx)
            n_new = int(kw.get("max_gen_toks", 256))
            limit = getattr(self.lm.model.config, "max_position_embeddings", None)
            if limit is not None:  # generate refuses lengths past the model's positions; the harness clamps
                n_new = max(0, min(n_new, limit - len(encode_prompt(self.lm, text, False))))
            gen = GenerationConfig(max_new_tokens=n_new, stop_strings=until, chat=False)
            out.append(generate(self.lm, text, mode, gen).text)
        return out


_REGISTERED: list = []  # the class, once registered (lm_eval refuses a second registration of the name)


def register_with_lm_eval():
    """Register (once) and return the ``"anllm"`` model class of lm-evaluation-harness (needs ``lm_eval``)."""
    if _REGISTERED:
        return _REGISTERED[0]
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError as e:
        raise AnLLMError(
            "the harness integration needs lm-evaluation-harness: python3 -m pip install lm_eval==0.4.13 "
            "(or 'anllm[harness]'; about 620 MB with its dependencies); `anllm eval qa` works without it"
        ) from e

    @register_model("anllm")
    class AnLLMEvalLM(LM):
        """lm-eval model type ``anllm``: ``--model_args model=default,mode=anchor,dtype=float32``."""

        def __init__(self, model: str = "default", mode: str = "anchor", dtype: str = "float32", device=None, **kw):
            super().__init__()
            from anllm.devices import DTYPES, default_device
            from anllm.models import load_model

            lm = kw.pop("lm", None) or load_model(model, dtype=DTYPES[dtype], device=device or default_device())
            self.backend = HarnessBackend(lm, scorer=mode)

        def loglikelihood(self, requests):
            return self.backend.loglikelihood([tuple(r.args[:2]) for r in requests])

        def loglikelihood_rolling(self, requests):
            return self.backend.loglikelihood_rolling([r.args[0] for r in requests])

        def generate_until(self, requests):
            return self.backend.generate_until([(r.args[0], r.args[1]) for r in requests])

    _REGISTERED.append(AnLLMEvalLM)
    return AnLLMEvalLM


def write_local_task(jsonl: str | Path, directory: str | Path, name: str = LOCAL_TASK_NAME) -> Path:
    """Write a harness task definition over a local JSONL file (our schema, ``query`` items only) into ``directory``."""
    path = Path(jsonl).resolve()
    items = load_jsonl(path)  # validates the schema with line numbers
    if any(len(set(it.contexts)) > 1 for it in items):
        raise AnLLMError(f"{path}: the harness task supports 'query' items only, not per-choice 'queries'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.yaml"
    out.write_text(_TASK_YAML.format(name=name, path=str(path).replace('"', '\\"')), encoding="utf-8")
    return out


def run_harness(
    lm: LoadedModel, task: str, *, shots: int = 0, limit: int | None = None, scorer: str = "anchor"
) -> dict:
    """Run one task through lm-evaluation-harness with the ``anllm`` model type; returns the harness results.

    ``task`` is a local ``.jsonl`` file (a task definition is written for it) or a harness task name.
    """
    cls = register_with_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="anllm-harness-") as tmp:
        if task.endswith(".jsonl") or Path(task).is_file():
            write_local_task(task, tmp)
            task = LOCAL_TASK_NAME
        model = cls(lm=lm, mode=scorer)
        res = simple_evaluate(
            model=model, tasks=[task], task_manager=TaskManager(include_path=tmp), num_fewshot=shots, limit=limit
        )
    return res["results"]
