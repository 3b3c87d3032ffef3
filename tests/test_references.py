"""Comments and docs cite the paper (arXiv section) or docs/ in this repository, never notes kept outside it."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_NOTES = ("method" + ".md", "offline" + ".md")  # design notes that were never part of this repository
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".ipynb", ".sh", ".toml", ".txt", ".json"}


def test_no_reference_to_notes_outside_the_repo():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = [note for note in OUTSIDE_NOTES if note not in {Path(f).name for f in files}]
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in SUFFIXES and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            hits += [f"{name}: {note}" for note in missing if note in text]
    assert not hits, "cite the paper (arXiv 2402.07616 §...) or a file under docs/ instead:\n" + "\n".join(hits)
