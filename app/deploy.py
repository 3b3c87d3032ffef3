"""Assemble a Hugging Face Space folder for the anllm demo, offline: ``python app/deploy.py OUT``.

OUT receives ``app.py``, ``README.md`` (the Space's front matter), ``requirements.txt`` and ``.gitattributes`` from
this folder, plus anllm itself: a wheel is built from this checkout (pip, no network, no build isolation) and
unpacked next to ``app.py`` (the ``anllm`` package and its ``.dist-info``), so the Space imports exactly what
``pip install anllm`` would install, from the folder Python starts in. Why unpacked rather than a wheel line in
requirements.txt: a Space installs requirements.txt in a build step of its own, and a path to a file inside the
repository is not a dependency that step can be relied on to resolve; a package next to ``app.py`` needs no
install step at all. Then upload OUT as the Space (docs/app.md, "Hugging Face Spaces").

OUT may be new, empty, or a clone of the Space: the entries this script writes are replaced, ``.git`` is kept, and
anything else is refused (pass ``--keep-others`` to leave it in place).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPACE_FILES = ("app.py", "README.md", "requirements.txt")  # copied from app/
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"  # the adapter weights (19 MB) go through LFS
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")  # what the build backend reads besides the package
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


class DeployError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def build_wheel(root: Path, dest: Path) -> Path:
    """Build anllm's wheel from a clean copy of ``root`` into ``dest`` (offline); returns the wheel's path.

    The copy keeps the checkout free of ``build/`` and ``*.egg-info`` and keeps stale files in them out of the wheel.
    """
    with tempfile.TemporaryDirectory(prefix="anllm-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCE_FILES:
            shutil.copy2(root / name, src / name)
        shutil.copytree(root / "anllm", src / "anllm", ignore=IGNORED)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        done = subprocess.run([*cmd, "-w", str(dest), str(src)], capture_output=True, text=True)
    wheels = sorted(dest.glob("anllm-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployError(
            f"building the anllm wheel failed ({last}); it needs pip and setuptools>=68 in this Python: "
            f"{sys.executable} -m pip install 'setuptools>=68'"
        )
    return wheels[0]


def _own_entries(out: Path) -> set[str]:
    """Names in ``out`` that a previous run of this script wrote."""
    return {*SPACE_FILES, ".gitattributes", "anllm", *(p.name for p in out.glob("anllm-*.dist-info"))}


def prepare_out(out: Path, keep_others: bool = False) -> None:
    """Make ``out`` ready: created if missing; this script's own entries removed; ``.git`` kept; others refused."""
    if out.exists() and not out.is_dir():
        raise DeployError(f"{out} is a file; give a folder for the Space (new, empty, or a clone of the Space)")
    out.mkdir(parents=True, exist_ok=True)
    own = _own_entries(out)
    others = sorted(p.name for p in out.iterdir() if p.name not in own and p.name != ".git")
    if others and not keep_others:
        raise DeployError(
            f"{out} holds {', '.join(others)}, which this script did not write; remove them or pass --keep-others"
        )
    for name in own:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build_space(out: Path, *, keep_others: bool = False, root: Path = ROOT) -> Path:
    """Write the Space folder ``out`` (see the module docstring); returns ``out``."""
    app = root / "app"
    missing = [n for n in SPACE_FILES if not (app / n).is_file()] + [
        n for n in SOURCE_FILES if not (root / n).is_file()
    ]
    if missing:
        raise DeployError(f"{root} is not a complete anllm checkout: {', '.join(missing)} missing")
    out, root = out.resolve(), root.resolve()
    if out == root or out in root.parents or any(out.is_relative_to(root / d) for d in ("anllm", "app")):
        raise DeployError(f"{out} would overwrite the checkout; write the Space to a folder of its own")
    prepare_out(out, keep_others)
    with tempfile.TemporaryDirectory(prefix="anllm-dist-") as dist:
        wheel = build_wheel(root, Path(dist))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out)
    for name in SPACE_FILES:
        shutil.copy2(app / name, out / name)
    (out / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Assemble a Hugging Face Space folder for the anllm demo (offline).")
    p.add_argument("out", type=Path, help="the Space folder: new, empty, or a clone of the Space")
    p.add_argument("--keep-others", action="store_true", help="leave files in OUT that this script did not write")
    args = p.parse_args(argv)
    try:
        out = build_space(args.out, keep_others=args.keep_others)
    except DeployError as e:
        print(f"deploy: error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and ".git" not in f.relative_to(out).parts)
    print(f"Space folder ready: {out} ({size / 1e6:.1f} MB)")
    print(f"upload it: hf upload <you>/<space> {out} . --repo-type space   (or git add/commit/push in a clone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
