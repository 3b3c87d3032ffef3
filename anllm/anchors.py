"""Anchor identification: EP anchor ids from a tokenizer, an offline sentence splitter and <AC> insertion.

AnLLM-EP uses sentence-end punctuation already in the text as the anchor; AnLLM-AC inserts an added ``<AC>``
token after every sentence (arXiv 2402.07616 §3.2, §4.1). Both end up as a set of anchor token ids.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Hashable

import torch

from anllm.config import AC_TOKEN, AnchorConfig, AnLLMError

logger = logging.getLogger(__name__)

# Abbreviations after which a period does not end a sentence (lower-case, without the final period).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st mt vs cf e.g i.e al fig figs eq vol pp ed eds est approx dept "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Abbreviations that may also end a sentence ("... in the U.S. Then ..."): they do when the next word is one that
# starts sentences (a pronoun, article, conjunction, ...), not a name ("U.S. Army", "5 p.m. Monday").
_FINAL_ABBREVIATIONS = frozenset("u.s u.k u.n a.m p.m etc inc ltd co corp jr sr ph.d".split())
_STARTERS = frozenset(
    "a an the this that these those there then he she it they we i you his her its their our my your "
    "but and or so yet if when while after before as in on at by for from to with nobody everyone everybody "
    "some most many no one all each both however meanwhile".split()
)
_CLOSERS = "\"'”’)]}»"
# A candidate end: a run of . ! ? (plus closing quotes/brackets) followed by whitespace and then text that can
# start a sentence (a capital, digit, opening quote/bracket or a camel-cased word such as "iPhone"), or by the end
# of the text; a blank line also ends a sentence.
_BOUNDARY = re.compile(rf"[.!?]+[{re.escape(_CLOSERS)}]*(?=\s+(?:[\"'“‘(\[A-Z0-9]|[a-z]+[A-Z])|\s*$)|\n[ \t]*\n")
_NEXT_WORD = re.compile(r"\s*[\"'“‘(\[]*([A-Za-z]*)")
_LAST_WORD = 24  # characters looked back for the word before a period; longer words are no abbreviation


def split_sentences(text: str) -> list[str]:
    """Split English text into sentences with a rule-based splitter (no data download), in linear time.

    Whitespace between sentences is kept at the start of the following sentence, so ``"".join(result) == text``.
    Periods after common abbreviations (``Dr.``, ``e.g.``), single-letter initials and inside numbers (``3.14``)
    do not end a sentence; ``U.S.``, ``p.m.``, ``etc.`` do when a sentence-starting word follows; ``no.`` only
    abbreviates before a number (``No. 5``). Scored on ``tests/sentence_cases.py`` against pysbd in docs/training.md.
    """
    ends = _sentence_ends(text)
    pieces, start = [], 0
    for end in ends:
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in pieces if p]


def _abbreviation_holds(text: str, m: re.Match) -> bool:
    """True when the single period matched by ``m`` closes an abbreviation or initial, not a sentence."""
    before = text[max(0, m.start() - _LAST_WORD) : m.start()]
    word = before.split()[-1].lower().lstrip("(\"'“‘") if before.strip() and not before[-1].isspace() else ""
    nxt = _NEXT_WORD.match(text, m.end()).group(1)
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    if word == "no":
        return text[m.end() : m.end() + 2].strip()[:1].isdigit()  # "No. 5"; otherwise the word "no"
    if word in _FINAL_ABBREVIATIONS:
        return nxt.lower() not in _STARTERS
    return False


def _sentence_ends(text: str) -> list[int]:
    ends = []
    first_text = len(text) - len(text.lstrip())  # index of the first non-space character
    blank_from = 0  # text[blank_from:] is checked for words since the last end, each character once
    for m in _BOUNDARY.finditer(text):
        if m.group().startswith("\n"):
            if ends and not text[blank_from : m.start()].strip():
                blank_from = m.end()  # a further blank line after an end: no empty sentence
                continue
            if m.start() > first_text:
                ends.append(m.start())
                blank_from = m.start()
            continue
        if m.group().startswith(".") and len(m.group().rstrip(_CLOSERS)) == 1 and _abbreviation_holds(text, m):
            continue
        ends.append(m.end())
        blank_from = m.end()
    return ends


def insert_ac(text: str, token: str = AC_TOKEN) -> str:
    """Insert ``" <AC>"`` after every sentence of ``text``, the last one included (arXiv 2402.07616 §4.1)."""
    if token in text:
        return text  # already marked: never double-insert
    out, start = [], 0
    for end in _sentence_ends(text):
        out.append(text[start:end] + " " + token)
        start = end
    rest = text[start:]
    if rest.strip():
        out.append(rest.rstrip() + " " + token + rest[len(rest.rstrip()) :])
    else:
        out.append(rest)
    return "".join(out)


def _dot_id(tokenizer) -> int:
    ids = tokenizer.encode(".", add_special_tokens=False)
    if not ids:
        raise AnLLMError("the tokenizer encodes '.' to nothing; cannot initialise the <AC> token from it")
    return ids[-1]


def add_ac_token(model, tokenizer, token: str = AC_TOKEN) -> int:
    """Add ``<AC>`` to the tokenizer (if missing), resize the model, init its embedding rows from ``"."``.

    Both the input embedding and the output (LM head) row are copied from the ``"."`` row, as the official code
    does. Returns the ``<AC>`` id. Idempotent.
    """
    vocab = tokenizer.get_vocab()
    if token in vocab:
        ac_id = vocab[token]
        if ac_id < model.get_input_embeddings().weight.shape[0]:
            return ac_id
    else:
        tokenizer.add_tokens([token])
        ac_id = tokenizer.convert_tokens_to_ids(token)
    dot = _dot_id(tokenizer)
    n_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ac_id] = emb[dot]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[ac_id] = out.weight[dot]
    return ac_id


_VOCAB_SCANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(rule, size): ids}


def matching_token_ids(tokenizer, rule: Hashable, match: Callable[[str], bool]) -> tuple[int, ...]:
    """Ids of the non-special tokens whose decoded text satisfies ``match`` (the one vocabulary scan).

    Decoding a 49k vocabulary takes a while, so the result is remembered per tokenizer under ``rule`` (a hashable
    name of ``match``) and the vocabulary size (added tokens are scanned again).
    """
    cached = _VOCAB_SCANS.setdefault(tokenizer, {})
    key = (rule, len(tokenizer))
    if key not in cached:
        specials = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached[key] = tuple(i for i, t in enumerate(texts) if i not in specials and match(t))
    return cached[key]


def ep_anchor_ids(tokenizer, chars: str = ".!?") -> tuple[int, ...]:
    """Ids of tokens whose text ends a sentence: punctuation only, ending in one of ``chars``.

    Matches ``"."``, ``" ."``, ``"!"``, ``"?"``, ``"..."``, ``".\\n"``, ``'."'``; not ``","`` or ``"Mr."``.
    """
    pattern = re.compile(rf"[^\w\s]*[{re.escape(chars)}][{re.escape(_CLOSERS)}]*")
    ids = matching_token_ids(tokenizer, ("ep", chars), lambda t: pattern.fullmatch(t.strip()) is not None)
    if not ids:
        raise AnLLMError(f"no token of this tokenizer ends a sentence with one of {chars!r}; set anchor_ids explicitly")
    return ids


def resolve_anchor_ids(cfg: AnchorConfig, tokenizer, model=None) -> tuple[int, ...]:
    """The anchor token ids for ``cfg`` with this tokenizer (adds ``<AC>`` to model and tokenizer in AC mode)."""
    if cfg.anchor_ids is not None:
        return cfg.anchor_ids
    if cfg.kind == "ac":
        if model is not None:
            return (add_ac_token(model, tokenizer),)
        vocab = tokenizer.get_vocab()
        if AC_TOKEN not in vocab:
            raise AnLLMError("AC mode needs the <AC> token: pass the model so it can be added, or use kind='ep'")
        return (vocab[AC_TOKEN],)
    return ep_anchor_ids(tokenizer, cfg.anchor_chars)


def is_anchor(input_ids: torch.Tensor, anchor_ids: torch.Tensor | tuple[int, ...]) -> torch.Tensor:
    """Bool tensor of ``input_ids``' shape, True where the token is an anchor id (no forced anchors)."""
    ids = torch.as_tensor(anchor_ids, dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids)


def mark_anchors(
    input_ids: torch.Tensor,
    anchor_ids: torch.Tensor | tuple[int, ...],
    valid: torch.Tensor | None = None,
    *,
    max_segment: int = 0,
    run: torch.Tensor | int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors of a chunk: anchor ids, plus a *forced* anchor wherever a segment reaches ``max_segment`` tokens.

    A forced anchor bounds the open sentence on text without sentence ends (code, lists), so an anchor cache never
    grows more than ``max_segment`` entries past its anchors. The model must be trained with the same rule.

    Args:
        input_ids: long ``(B, T)``.
        valid: bool ``(B, T)``, False on padding (never an anchor, not counted); None = all valid.
        max_segment: a segment's longest length in tokens, its anchor included (0 = no forced anchors).
        run: long ``(B,)`` or int, valid tokens since the last anchor before this chunk (carried across chunks).
    Returns:
        ``(anchor, run_after)``: bool ``(B, T)`` and long ``(B,)``, the ``run`` to pass with the next chunk.
    """
    valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.bool()
    natural = is_anchor(input_ids, anchor_ids) & valid  # (B, T)
    run = torch.as_tensor(run, dtype=torch.long, device=input_ids.device).expand(input_ids.shape[0])
    if max_segment <= 0:
        return natural, run.clone()
    count = valid.long().cumsum(-1)  # (B, T): valid tokens so far in the chunk, this one included
    last = torch.where(natural, count, torch.zeros_like(count)).cummax(-1).values  # count at the last natural anchor
    since = torch.where(last > 0, count - last, count + run[:, None])  # (B, T): tokens since the last natural anchor
    forced = valid & ~natural & (since % max_segment == 0)
    anchor = natural | forced
    has = valid.any(-1)
    since_end = torch.where(has, since.gather(1, (count.argmax(-1, keepdim=True))).squeeze(1), run)  # (B,)
    return anchor, since_end % max_segment
