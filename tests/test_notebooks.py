"""The tutorial notebooks: executed top to bottom in smoke mode (``ANLLM_SMOKE=1``, offline), and their committed
outputs checked to come from a full, error-free run.

The executed copies go to a temporary directory; the committed notebooks are only read. The kernel is a kernel
spec written into a temporary directory that runs this interpreter (``sys.executable``), so the notebooks import the
same ``anllm`` and libraries as the tests, whatever kernels the machine has installed.
"""

import base64
import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_anchor_masks.ipynb", "02_fine_tuning.ipynb", "03_ablations.ipynb")
SMOKE_LIMIT_S = 600  # a hang guard per cell; that smoke mode ran is asserted by the probe cell, not by time
MAX_FILE_BYTES = 3_000_000
KERNEL_NAME = "anllm-test-python"
INSTALL_GUARD = 'if importlib.util.find_spec("anllm") is None:'
COLAB_REPO = "OWNER/anllm"  # a placeholder until the repository has a public address (notebooks/README.md)


def _kernel_manager(tmp_path: Path) -> KernelManager:
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "anllm tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def _install_cell(nb) -> nbformat.NotebookNode:
    """The code cell that installs anllm only where ``importlib.util.find_spec("anllm") is None``."""
    guarded = [c for c in nb.cells if c.cell_type == "code" and INSTALL_GUARD in c.source]
    assert len(guarded) == 1, "exactly one cell must install anllm, guarded by find_spec"
    body = guarded[0].source.split(INSTALL_GUARD, 1)[1]
    assert "pip" in body and "pip" not in guarded[0].source.split(INSTALL_GUARD, 1)[0]  # pip runs only if missing
    return guarded[0]


def _parameters_cell(nb) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged `parameters`"
    return tagged[0]


def test_every_notebook_is_tested_and_indexed():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    index = (NOTEBOOK_DIR / "README.md").read_text()
    for name in NOTEBOOKS:
        assert name in index


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_structure_and_outputs(name):
    path = NOTEBOOK_DIR / name
    assert path.stat().st_size < MAX_FILE_BYTES, f"{name} is {path.stat().st_size} bytes; keep figures lean"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "Hardware" in nb.cells[0].source
    badge = f"(https://colab.research.google.com/github/{COLAB_REPO}/blob/main/notebooks/{name})"
    assert "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]" + badge in nb.cells[0].source
    params = _parameters_cell(nb)
    assert 'os.environ.get("ANLLM_SMOKE") == "1"' in params.source
    assert "torch.cuda.is_available()" in params.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    # first, before anything imports torch: install anllm only where it is missing (Colab), else do nothing
    assert _install_cell(nb) is code[0] and not code[0].outputs and code[1] is params
    # the committed outputs come from one full (non-smoke), error-free run, top to bottom
    assert all(c.execution_count is not None for c in code), "some cells were not executed"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name} has committed error outputs: {[e.ename for e in errors]}"
    setup = "".join(o.get("text", "") for o in code[2].outputs if o.output_type == "stream")
    assert "mode: full run" in setup and "CPU:" in setup, "the setup cell must print the run mode and hardware"
    figures = [o for c in code for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, f"{name} shows no figure"
    for fig in figures:
        # a static PNG beside the interactive JSON, and no HTML loader that GitHub would show blank instead of it
        assert "image/png" in fig.data and "text/html" not in fig.data, f"{name}: a figure has no static image"
        assert base64.b64decode(fig.data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
        layout = fig.data["application/vnd.plotly.v1+json"]["layout"]
        assert layout.get("title", {}).get("text"), f"{name}: a figure has no title"
        axes = [v for k, v in layout.items() if k.startswith(("xaxis", "yaxis")) and not k.startswith("yaxis2")]
        assert axes and all(a.get("title", {}).get("text") for a in axes), f"{name}: an axis has no label"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ANLLM_SMOKE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = NOTEBOOK_DIR / name
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    # a final probe cell: which interpreter ran the notebook, and did the parameters cell pick smoke mode?
    nb.cells.append(nbformat.v4.new_code_cell('import sys\nprint("PROBE", sys.executable, SMOKE, device)'))
    workdir = tmp_path / "run"
    workdir.mkdir()
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=SMOKE_LIMIT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell (or one past the hang guard)
    nbformat.write(nb, tmp_path / name)  # the executed copy, for inspection; never the committed file
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert f"PROBE {sys.executable} True" in probe, probe
    setup = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "mode: SMOKE run" in setup
    assert _install_cell(nb).outputs == []  # anllm is installed here: the install cell did nothing
    assert path.read_bytes() == committed, "the committed notebook must not be modified by the test"


def test_add_static_images_gives_each_figure_a_png(tmp_path, monkeypatch):
    import importlib.util

    import plotly.graph_objects as go
    import plotly.io as pio

    from anllm import plots

    spec = importlib.util.spec_from_file_location("add_static_images", NOTEBOOK_DIR / "tools" / "add_static_images.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    fig = go.Figure(go.Scatter(y=[1, 3, 2]), layout={"title": {"text": "t"}})
    bundle = {**pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()), "text/html": "<div>loader</div>"}
    out = nbformat.v4.new_output("display_data", data=bundle)
    text = nbformat.v4.new_output("stream", text="hello\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[out, text])])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    seen = []
    fake_png = b"\x89PNG\r\n\x1a\nfake"
    assert tool.add_static_images(path, to_png=lambda f: seen.append(f) or fake_png) == 1
    data = nbformat.read(path, as_version=4).cells[0].outputs[0].data
    assert sorted(data) == ["application/vnd.plotly.v1+json", "image/png"]
    assert base64.b64decode(data["image/png"]) == fake_png and seen == [bundle["application/vnd.plotly.v1+json"]]
    assert tool.add_static_images(path, to_png=lambda f: fake_png) == 0  # already done: left alone

    monkeypatch.setattr(plots.importlib.util, "find_spec", lambda name: None)  # no kaleido
    assert plots.notebook_renderer() == "plotly_mimetype+notebook_connected"
