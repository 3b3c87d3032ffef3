"""Evaluation: perplexity by cache decoding, log-likelihood multiple choice, BLEU, and the paper's metrics."""

from anllm.evaluation.metrics import kv_reduction, speedup
from anllm.evaluation.ppl import PPLResult, perplexity, perplexity_text

__all__ = ["PPLResult", "kv_reduction", "perplexity", "perplexity_text", "speedup"]
