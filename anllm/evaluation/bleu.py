"""BLEU (sacrebleu) for the translation checkpoints on local files, with the cache statistics of each mode.

Sources and references are plain UTF-8 files, one segment per line. Hypotheses come from a file (scoring only)
or are generated greedily per source line with a prompt template, through any cache mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from anllm.config import AnLLMError, GenerationConfig
from anllm.models import LoadedModel
from anllm.progress import progress_bar
from anllm.textio import read_text_file

DEFAULT_TEMPLATE = "Translate the following German text into English.\nGerman: {src}\nEnglish:"


def read_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 file without trailing newlines; errors name ``what`` and the file."""
    lines = read_text_file(path, what).splitlines()
    if not any(line.strip() for line in lines):
        raise AnLLMError(f"{what} file {path} is empty")
    return lines


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (default 13a tokenisation) of hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise AnLLMError(f"{len(hypotheses)} hypotheses but {len(references)} references: line counts must match")
    try:
        import sacrebleu
    except ImportError as e:
        raise AnLLMError("BLEU needs sacrebleu: python3 -m pip install 'anllm[eval]' (or sacrebleu==2.6.0)") from e
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@dataclass
class BleuResult:
    mode: str
    bleu: float
    segments: int
    kv_kept_frac: float | None = None  # mean over segments of stored / seen entries at the end of generation
    tokens_per_s: float | None = None  # mean decode speed
    hypotheses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def translate(
    lm: LoadedModel,
    sources: list[str],
    mode: str,
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 128,
    chat: bool = False,
    progress: bool = False,
) -> BleuResult:
    """Greedy translations of ``sources`` with ``mode``'s cache (BLEU left at 0 until scored); ``progress``: a bar."""
    from anllm.generation import generate

    if "{src}" not in template:
        raise AnLLMError("the prompt template must contain {src}")
    gen = GenerationConfig(max_new_tokens=max_new_tokens, stop_strings=("\n",), chat=chat)
    hyps, fracs, speeds = [], [], []
    for src in progress_bar(sources, desc=f"translate {mode}", unit="segment", enabled=progress):
        r = generate(lm, template.format(src=src), mode, gen)
        hyps.append(r.text.strip())
        fracs.append(r.stats.kv_kept_frac)
        speeds.append(r.stats.tokens_per_s)
    return BleuResult(mode, 0.0, len(sources), sum(fracs) / len(fracs), sum(speeds) / len(speeds), hyps)


def evaluate_bleu(
    lm: LoadedModel | None,
    references: list[str],
    *,
    sources: list[str] | None = None,
    hypotheses: list[str] | None = None,
    modes: tuple[str, ...] = ("full", "anchor"),
    **translate_kw,
) -> dict[str, BleuResult]:
    """BLEU of given ``hypotheses`` (key ``"file"``), or of translations of ``sources`` in each mode."""
    if hypotheses is not None:
        return {"file": BleuResult("file", corpus_bleu(hypotheses, references), len(hypotheses))}
    if sources is None or lm is None:
        raise AnLLMError("give hypotheses to score, or a model and sources to translate")
    if len(sources) != len(references):
        raise AnLLMError(f"{len(sources)} sources but {len(references)} references: line counts must match")
    out = {}
    for mode in modes:
        r = translate(lm, sources, mode, **translate_kw)
        r.bleu = corpus_bleu(r.hypotheses, references)
        out[mode] = r
    return out
