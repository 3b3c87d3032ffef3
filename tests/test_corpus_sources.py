"""Prose sources of anllm.train.corpus (Debian HTML books, man pages) on small hand-written fixtures, no apt."""

import gzip
import json

import pytest

from anllm.train import corpus


def prose(tag: str, n_sentences: int = 12) -> str:
    """English prose of about 16 words a sentence, unique per ``tag``."""
    return " ".join(
        f"The {tag} program reads the file number {i} and writes it to the disk when the user asks for it."
        for i in range(n_sentences)
    )


PAGE = f"""<html lang="en"><head><title>Title words that must not appear anywhere</title></head><body>
<div class="navheader"><a href="a.html">Prev</a> navigation menu entry that is long enough to count</div>
<div class="toc"><ul><li>1. Chapter one of the table of contents with many words</li></ul></div>
<h1>1. Using the tools<a class='copiable-anchor' href='#t'> &para;</a></h1>
<p>{prose("first")} The command <code class="command">apt-get</code> is kept inline.</p>
<pre class="screen">$ apt-get install foo  # a code listing that is long enough to be a paragraph</pre>
<table><tr><td>a table cell with plenty of words in it to be a paragraph</td></tr></table>
<div class="para">{prose("second")}</div>
<p>Too short.</p>
<h2>1.1 Details</h2>
<p>{prose("third")}</p>
<h1>Appendix A GNU Free Documentation License</h1>
<p>{prose("licence")}</p>
<h2>ADDENDUM: How to use this for your documents</h2>
<p>{prose("addendum")}</p>
<h1>2. Afterwards</h1>
<p>{prose("fourth")}</p>
</body></html>"""


def test_html_blocks_keep_paragraphs_and_headings_but_not_code_tables_or_menus():
    blocks = corpus.html_blocks(PAGE)
    text = " ".join(t for _, t in blocks)
    assert (1, "1. Using the tools") in blocks and (2, "1.1 Details") in blocks
    assert "The command apt-get is kept inline." in text
    for gone in ("Title words", "navigation menu", "table of contents", "code listing", "table cell"):
        assert gone not in text


def test_html_documents_group_paragraphs_and_skip_licence_sections(tmp_path):
    (tmp_path / "book.html").write_text(PAGE)
    (tmp_path / "other.txt").write_text(prose("ignored"))
    docs = corpus.html_documents(tmp_path, "*.html")
    text = " ".join(docs)
    assert all(f"The {tag} program" in text for tag in ("first", "second", "third", "fourth"))
    assert "licence program" not in text and "addendum program" not in text  # the section and its subsection
    assert "ignored" not in text and "Too short" not in text
    assert len(docs) == 2  # "first"+"second"+"third" (≥ 400 words) end at the licence heading; "fourth" after it


def test_handbook_is_english_only(tmp_path):
    for lang, text in (("en-US", prose("english")), ("fr-FR", "Le programme lit le fichier et écrit. " * 30)):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "index.html").write_text(f"<p>{text}</p>")
    docs = corpus.handbook_documents(tmp_path)
    assert len(docs) == 1 and "english program" in docs[0]
    assert corpus.handbook_documents(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("text", "english"),
    [
        (prose("plain", 3), True),
        ("Le programme lit le fichier numéro un et écrit les données sur le disque quand on le demande.", False),
        ("Das Programm liest die Datei und schreibt sie auf die Platte, wenn der Benutzer es verlangt.", False),
        ("x = foo(bar, baz); y = qux[0] + 1; return x * y; } else { z = 2; }", False),
    ],
)
def test_is_english(text, english):
    assert corpus._is_english(text) is english


RESERVED = [
    "This program is free software under the GNU General Public License as published by the FSF.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
    "Redistribution and use in source and binary forms, with or without modification, are permitted.",
    "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.",
    "Permission is granted to copy, distribute and/or modify this document under the terms of the GFDL.",
    "Copyright (c) 1996 Some Author; all rights reserved by the author of this page.",
    "SPDX-License-Identifier: GPL-2.0-or-later",
    'The function returns its docstring: """Return the sum of a and b."""',
    ">>> import os\n>>> os.getcwd()",
]


@pytest.mark.parametrize("text", RESERVED)
def test_reserved_texts_are_dropped(tmp_path, text):
    assert corpus.is_reserved(text)
    page = f"<p>{prose('kept', 30)}</p><h1>Next</h1><p>{prose('mixed', 30)} {text}</p>"  # two documents
    (tmp_path / "page.html").write_text(page)
    docs = corpus.html_documents(tmp_path)
    assert len(docs) == 1 and "kept program" in docs[0] and "mixed program" not in docs[0]


def test_ordinary_prose_is_not_reserved():
    assert not corpus.is_reserved(prose("ordinary") + " The licence of a package is listed in its control file.")


def test_group_blocks_sizes():
    blocks = [(1, "Start")] + [(0, prose(f"p{i}", 5)) for i in range(300)] + [(0, "word " * 5000)]
    blocks += [(1, "Tail"), (0, "a few short words only here for the tail")]
    docs = corpus._group_blocks(blocks)
    sizes = [len(d.split()) for d in docs]
    assert all(corpus.DOC_MIN_WORDS <= n <= corpus.DOC_MAX_WORDS for n in sizes)
    assert sum(sizes) == 300 * 5 * 20 + 5000  # every long paragraph kept; the 9-word tail dropped
    assert max(sizes) == corpus.DOC_MAX_WORDS  # the 5,000-word paragraph was cut into pieces


def test_group_blocks_end_documents_at_headings_after_the_target():
    blocks = [(1, "A"), (0, prose("a", 5)), (1, "B"), (0, prose("b", 30)), (2, "B.1"), (0, prose("c", 5))]
    docs = corpus._group_blocks(blocks)  # 5 sentences ≈ 100 words < DOC_TARGET_WORDS ≤ 30 sentences
    assert len(docs) == 2 and "a program" in docs[0] and "b program" in docs[0] and "c program" in docs[1]


MAN_PAGE = r""".\" Copyright (c) 1993 Someone
.\" SPDX-License-Identifier: GPL-2.0-or-later
.TH LS 1 2023-01-01 "GNU coreutils"
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fIOPTION\fR]... [\fIFILE\fR]...
.SH DESCRIPTION
List information about the \fBFILE\fPs (the current directory by default).
Sort entries alphabetically if none of
.BR \-cftuvSUX " nor " \-\-sort
is specified, \(em as \*(lqusual\*(rq.
.PP
%s
.nf
int main(void) { return listing_code_here(); }
.fi
.TS
tab(:);
l l.
TABLECELL:value
.TE
.SS Exit status
%s
.SH COPYRIGHT
%s
.SH "SEE ALSO"
.BR dir (1)
"""


def test_man_blocks_strip_roff():
    blocks = corpus.man_blocks(MAN_PAGE % (prose("man"), prose("exit"), prose("copyright")))
    assert (1, "DESCRIPTION") in blocks and (2, "Exit status") in blocks and (1, "SEE ALSO") in blocks
    paragraphs = [t for level, t in blocks if level == 0]
    assert paragraphs[:2] == ["ls - list directory contents", "ls [OPTION]... [FILE]..."]
    assert paragraphs[2].startswith("List information about the FILEs (the current directory by default).")
    assert "if none of -cftuvSUX nor --sort is specified, — as “usual”." in paragraphs[2]
    text = " ".join(paragraphs)
    assert "listing_code_here" not in text and "TABLECELL" not in text and "SPDX" not in text
    assert "\\" not in text


def test_man_blocks_redirect_is_empty():
    assert corpus.man_blocks(".so man3/other.3\n") == []


def write_man(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


def test_manpage_documents_english_sections_only_python_skipped(tmp_path):
    man = tmp_path / "usr/share/man"
    pages = {
        "man1/ls.1.gz": MAN_PAGE % (prose("man"), prose("exit"), prose("copyright")),
        "man1/python3.11.1.gz": f".SH DESCRIPTION\n{prose('python')}\n",
        "man1/pydoc3.1.gz": f".SH DESCRIPTION\n{prose('pydoc')}\n",
        "fr/man1/ls.1.gz": f".SH DESCRIPTION\n{prose('french')}\n",
        "man3/other.3.gz": f".SH DESCRIPTION\n{prose('other')}\n",
    }
    for name, text in pages.items():
        write_man(man / name, text)
    info = tmp_path / "info"
    info.mkdir()
    (info / "manpages.list").write_text("\n".join(str(man / n) for n in pages) + f"\n{man}/man1\n")
    docs = corpus.manpage_documents(("manpages", "manpages-dev"), info)
    text = " ".join(docs)
    assert "man program" in text and "exit program" in text and "other program" in text
    for gone in ("copyright program", "python program", "pydoc program", "french program", "list directory"):
        assert gone not in text
    assert corpus.manpage_documents(("manpages",), tmp_path / "nowhere") == []


def test_build_corpus_selects_prose_sources(tmp_path, monkeypatch):
    book = tmp_path / "book"
    book.mkdir()
    for i in range(40):
        (book / f"ch{i}.html").write_text(f"<h1>Chapter {i}</h1><p>{prose(f'chapter{i}')}</p>")
    monkeypatch.setitem(corpus.HTML_SOURCES, "gnu-standards", (book, "*.html"))
    monkeypatch.setitem(corpus.HTML_SOURCES, "bash-doc", (tmp_path / "absent", "*.html"))
    assert corpus.main(["--out", str(tmp_path / "out"), "--sources", "gnu-standards,bash-doc"]) == 0
    info = json.loads((tmp_path / "out/corpus.json").read_text())
    assert info["sources"] == ["gnu-standards"]  # bash-doc is not installed: skipped
    train = [json.loads(line)["text"] for line in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    held = (tmp_path / "out/heldout.txt").read_text()
    assert info["train_docs"] + info["heldout_docs"] == 40 == len(train) + info["heldout_docs"]
    assert all(t not in held for t in train)
    with pytest.raises(ValueError, match="unknown corpus source"):
        corpus.build_corpus(tmp_path / "x", ("no-such-source",))


def test_tech_sources_are_documentation_only_and_expand_by_name():
    assert set(corpus.TECH_SOURCES) == {*corpus.HTML_SOURCES, "manpages"}
    assert not {"fortunes", "kjv", "wordnet", "synthetic"} & set(corpus.TECH_SOURCES)
    assert not [s for s in corpus.TECH_SOURCES if "python" in s or "licen" in s]  # reserved for independent checks
    assert corpus._expand_sources("tech") == corpus.TECH_SOURCES
    assert corpus._expand_sources("fortunes,tech,manpages") == ("fortunes", *corpus.TECH_SOURCES)


def test_a_subset_build_never_trains_on_what_the_full_build_holds_out(tmp_path, monkeypatch):
    """The technical corpus is a second build over fewer sources: the shared document hash keeps the splits
    consistent, so a document held out by the broad corpus is held out by the technical one too."""
    literary = [f"{prose(f'story{i}', 6)}" for i in range(150)]
    technical = [f"{prose(f'manual{i}', 6)}" for i in range(150)]
    fake = {"fortunes": lambda: literary, "manpages": lambda: technical}
    monkeypatch.setattr(corpus, "source_loaders", lambda: fake)
    broad = corpus.build_corpus(tmp_path / "broad", ("fortunes", "manpages"))
    tech = corpus.build_corpus(tmp_path / "tech", ("manpages",))
    assert broad["heldout_docs"] > 0 and tech["heldout_docs"] > 0

    def train(d):
        return {json.loads(x)["text"] for x in (d / "train.jsonl").read_text().splitlines()}

    broad_held = set(corpus.heldout_documents(tmp_path / "broad/heldout.txt"))
    tech_held = set(corpus.heldout_documents(tmp_path / "tech/heldout.txt"))
    assert not train(tmp_path / "tech") & broad_held and not train(tmp_path / "broad") & tech_held
    assert tech_held == broad_held & set(technical)

    mix = tmp_path / "eval/mix.txt"
    info = corpus.mix_heldout([tmp_path / "broad/heldout.txt", tmp_path / "tech/heldout.txt"], mix)
    docs = corpus.heldout_documents(mix)
    assert info["docs"] == len(docs) == len(broad_held) and set(docs) == broad_held  # each document once
    kinds = ["tech" if d in tech_held else "lit" for d in docs]
    n = min(kinds.count("tech"), kinds.count("lit"))
    assert all(kinds[2 * i] == "lit" and kinds[2 * i + 1] == "tech" for i in range(n))  # interleaved, literary first
    corpus.mix_heldout([tmp_path / "broad/heldout.txt", tmp_path / "tech/heldout.txt"], tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_text() == mix.read_text()  # deterministic
