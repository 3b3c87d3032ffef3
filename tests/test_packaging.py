"""Packaging: `anllm --version`, the extras named by missing-dependency errors, LICENSE, py.typed, core deps."""

import importlib
import sys
from pathlib import Path

import pytest

import anllm
from anllm.cli import EXTRAS, main
from anllm.config import AnLLMError

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
pytestmark = pytest.mark.core


def dist_name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("-", "_")


def block(monkeypatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail as if the package were not installed."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, name, None)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"anllm {anllm.__version__} (torch ") and "transformers " in out
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "anllm.__version__"}


def test_every_optional_import_has_its_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert module in {dist_name(r) for r in extras[extra]}, (module, extra)
    assert {"eval", "harness", "app", "train"} <= set(extras)


def test_core_dependencies_cover_the_default_model():
    core = {dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "transformers", "gguf", "peft"} <= core  # peft applies the default model's adapter
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text(encoding="utf-8").split()


def test_license_and_py_typed_ship():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert (ROOT / "anllm" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["anllm"]


def test_cli_names_the_extra_of_a_missing_package(monkeypatch, capsys):
    block(monkeypatch, "gradio")
    monkeypatch.delitem(sys.modules, "anllm.ui.blocks", raising=False)  # re-imported, so it meets the missing gradio
    assert main(["app", "--model", "tiny-random"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs gradio" in err and "pip install 'anllm[app]'" in err


def test_bench_plot_without_plotly_fails_before_measuring(monkeypatch, capsys, tmp_path):
    import anllm.bench

    monkeypatch.setattr(anllm.bench, "run_bench", lambda *a, **k: pytest.fail("measured before checking plotly"))
    block(monkeypatch, "plotly")
    monkeypatch.delitem(sys.modules, "anllm.plots", raising=False)  # re-imported, so it meets the missing plotly
    assert main(["bench", "--model", "tiny-random", "--context", "16", "--plot", str(tmp_path / "b.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs plotly" in err and "pip install 'anllm[app]'" in err


@pytest.mark.parametrize(
    "module, extra, where, call",
    [
        ("sacrebleu", "eval", "anllm.evaluation.bleu", lambda m: m.corpus_bleu(["a"], ["a"])),
        ("lm_eval", "harness", "anllm.evaluation.harness", lambda m: m.register_with_lm_eval()),
    ],
)
def test_library_errors_name_the_extra(monkeypatch, module, extra, where, call):
    lib = importlib.import_module(where)
    block(monkeypatch, module)
    if module == "lm_eval":
        monkeypatch.setattr(lib, "_REGISTERED", [])  # a registration from another test would skip the import
    with pytest.raises(AnLLMError, match=rf"anllm\[{extra}\]"):
        call(lib)


def test_default_model_without_peft_says_what_to_install(monkeypatch):
    from anllm.models import ADAPTER_DIR, _apply_adapter, tiny_model

    block(monkeypatch, "peft")
    with pytest.raises(AnLLMError, match=r"needs peft.*pip install 'peft>=0.15'"):
        _apply_adapter(tiny_model(), ADAPTER_DIR, [])
