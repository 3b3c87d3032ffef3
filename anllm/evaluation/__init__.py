"""Evaluation: perplexity by cache decoding, log-likelihood multiple choice, BLEU, and the paper's metrics."""

from anllm.evaluation.bleu import corpus_bleu, evaluate_bleu
from anllm.evaluation.metrics import kv_reduction, speedup
from anllm.evaluation.ppl import PPLResult, perplexity, perplexity_text
from anllm.evaluation.qa import QAResult, evaluate_qa
from anllm.evaluation.tasks import MCItem, load_jsonl, load_task

__all__ = [
    "MCItem",
    "PPLResult",
    "QAResult",
    "corpus_bleu",
    "evaluate_bleu",
    "evaluate_qa",
    "kv_reduction",
    "load_jsonl",
    "load_task",
    "perplexity",
    "perplexity_text",
    "speedup",
]
