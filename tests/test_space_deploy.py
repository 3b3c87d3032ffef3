"""The Hugging Face Space folder built by ``app/deploy.py``: installed into a fresh venv from that folder alone,
started as a Space starts it (``python app.py``) with a fake ``spaces`` package, and driven over its named API.

CI time: the fresh venv is created without pip and sees the test venv's site-packages through one ``.pth`` line
(a plain path, so that directory's own ``.pth`` files, among them the checkout's editable-install hook, are not
run). Its third-party packages are the ones requirements.txt pins, and ``pip install --no-index -r requirements.txt``
in the Space folder must find every pin already satisfied; installing torch and gradio again would add minutes and
need the network. anllm itself is the copy unpacked from the wheel next to ``app.py``, which the probes check.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import site
import socket
import subprocess
import time
import venv
from pathlib import Path

import pytest

from anllm.config import AnLLMError
from anllm.zerogpu import request_seconds

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
yaml = pytest.importorskip("yaml")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_SPACES = Path(__file__).resolve().parent / "fake_spaces"
ZEROGPU_PYTHONS = {"3.10.13", "3.12.12"}  # huggingface.co/docs/hub/spaces-zerogpu, "Supported Versions" (2026-07)
PROMPT = "Hello there. How are you? I am fine!"
START_TIMEOUT_S = 300  # a loaded CI machine imports torch, transformers and gradio slowly


def load_deploy():
    spec = importlib.util.spec_from_file_location("anllm_deploy_under_test", ROOT / "app" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return load_deploy().build_space(tmp_path_factory.mktemp("space") / "anllm-demo")


@pytest.fixture(scope="module")
def fake_spaces(tmp_path_factory) -> Path:
    """The fake ``spaces`` package, copied out of the checkout so that no checkout path is on the Space's path."""
    dest = tmp_path_factory.mktemp("fake") / "site"
    shutil.copytree(FAKE_SPACES, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def space_python(space, fake_spaces, tmp_path_factory) -> Path:
    """A fresh venv (see the module docstring) in which the Space folder's requirements are satisfied."""
    env_dir = tmp_path_factory.mktemp("venv") / "space-venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True
    )
    overlay = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(own.stdout.strip()) / "test-venv-packages.pth").write_text("\n".join(overlay) + "\n")
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "-r", "requirements.txt"],
        cwd=space,
        env=space_env(fake_spaces),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def space_env(fake_spaces: Path, cuda: bool = False, log: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Space (``SPACE_ID`` set), offline, with the fake ``spaces`` package and nothing else
    on ``PYTHONPATH``: the checkout is never on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        PYTHONPATH=str(fake_spaces),
        PYTHONNOUSERSITE="1",
        FAKE_SPACES_CUDA="1" if cuda else "0",
        FAKE_SPACES_LOG=str(log or os.devnull),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
        SPACE_ID="tests/anllm-demo",
        ANLLM_MODEL="tiny-random",
        **extra,
    )
    return env


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


PROBE = """
import importlib.metadata, json, os, runpy, sys
app = runpy.run_path("app.py", run_name="space_probe")  # what `python app.py` runs, up to main()
import anllm
from anllm.commands.common import check_device
dist = importlib.metadata.distribution("anllm")
print(json.dumps({
    "anllm": anllm.__file__, "dist": os.path.abspath(dist.locate_file("")), "version": dist.version,
    "registry_device": str(app["REGISTRY"].device), "serve_device": check_device(None),
    "loaded": app["REGISTRY"].loaded(), "path": sys.path,
}))
"""


def test_the_space_folder_holds_the_app_and_the_packaged_anllm(space):
    names = {p.name for p in space.iterdir()}
    assert names == {"app.py", "README.md", "requirements.txt", ".gitattributes", "anllm", "anllm-0.1.0.dist-info"}
    assert (space / "app.py").read_bytes() == (ROOT / "app" / "app.py").read_bytes()
    meta = yaml.safe_load((space / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert str(meta["python_version"]) in ZEROGPU_PYTHONS and meta["app_file"] == "app.py"
    # every core dependency of anllm is pinned for the Space (gradio comes from sdk_version)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    core = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in pyproject["project"]["dependencies"]}
    pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().split() if "==" in line)
    assert core <= set(pins), core - set(pins)
    # the unpacked wheel holds the whole package, package data included, byte for byte
    shipped = [p.relative_to(ROOT) for p in (ROOT / "anllm").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert Path("anllm/adapters/smollm2-135m-anchor/adapter_model.safetensors") in shipped
    assert all((space / p).read_bytes() == (ROOT / p).read_bytes() for p in shipped)
    record = (space / "anllm-0.1.0.dist-info" / "RECORD").read_text()
    assert all(p.as_posix() in record for p in shipped)
    assert "*.safetensors filter=lfs" in (space / ".gitattributes").read_text()


def test_the_space_imports_anllm_from_its_folder_and_the_device_follows_spaces(
    space, space_python, fake_spaces, tmp_path
):
    """ZeroGPU's ``spaces`` makes torch report a GPU: imported first, the app's device becomes cuda."""
    log = tmp_path / "spaces.jsonl"
    done = subprocess.run(
        [space_python, "-c", PROBE],
        cwd=space,
        env=space_env(fake_spaces, cuda=True, log=log),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["anllm"]) == space / "anllm" / "__init__.py"  # the wheel's copy, not the checkout's
    assert Path(got["dist"]) == space and got["version"] == "0.1.0"
    # no sys.path entry other than the Space folder holds a package named anllm (the checkout root would; the test
    # venv's site-packages may live under the checkout, as in CI, but holds only the editable hook, not the package)
    entries = [Path(p) if p else space for p in got["path"]]  # "" is the working directory (the Space folder)
    holders = [p for p in entries if (p / "anllm" / "__init__.py").exists()]
    assert [Path(p).resolve() for p in holders] == [space.resolve()], holders
    assert got["registry_device"] == "cuda" and got["serve_device"] == "cuda"
    assert got["loaded"] == []  # importing app.py loads no model
    ev = events(log)
    assert ev[0] == {"event": "import", "torch_imported": False, "cuda": True}  # spaces came before torch
    assert {"event": "wrap", "fn": "generate", "dynamic": True} in ev


@pytest.fixture(scope="module")
def served_space(space, space_python, fake_spaces, tmp_path_factory):
    """``python app.py`` in the Space folder, as a Space runs it, on CPU (the fake ``spaces`` reports no GPU)."""
    tmp = tmp_path_factory.mktemp("served")
    log, out = tmp / "spaces.jsonl", tmp / "server.log"
    port = free_port()
    env = space_env(fake_spaces, log=log, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    url = f"http://127.0.0.1:{port}/"
    with open(out, "w") as sink:
        proc = subprocess.Popen([space_python, "app.py"], cwd=space, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while "serving tiny-random on http" not in out.read_text():
            assert proc.poll() is None, f"the Space exited ({proc.returncode}):\n{out.read_text()[-3000:]}"
            assert time.monotonic() - t0 < START_TIMEOUT_S, out.read_text()[-3000:]
            time.sleep(0.5)
        client = Client(url, verbose=False)
        yield client, log
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_space_answers_its_named_api_with_a_gpu_slot_sized_to_the_request(served_space):
    client, log = served_space
    assert {"/generate", "/model_info", "/explore", "/explorer_setting"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    info = client.predict("tiny-random", api_name="/model_info")
    assert info.startswith("**tiny-random**") and "on cpu" in info
    ev = events(log)
    assert ev[0] == {"event": "import", "torch_imported": False, "cuda": False}
    assert {"event": "wrap", "fn": "generate", "dynamic": True} in ev

    short = client.predict(PROMPT, "tiny-random", "none", False, 8, 0.0, 1.0, 0, 1.0, 0, api_name="/generate")
    assert short[6].startswith("✅"), short[6]
    peer = client.predict(PROMPT, "tiny-random", "streaming", False, 8, 0.0, 1.0, 0, 1.0, 0, api_name="/generate")
    assert peer[6].startswith("✅"), peer[6]
    long_ask = client.predict(" ", "tiny-random", "none", False, 1000, 0.0, 1.0, 0, 1.0, 0, api_name="/generate")
    assert "prompt is empty" in long_ask[6]  # answered at once; the slot was still sized to what was asked
    calls = [e["duration"] for e in events(log) if e["event"] == "call"]
    # seconds = 10 (attach) + modes x (prompt chars / 3 / 1000 + new tokens / 10), capped at the 60 s request limit
    # + 10; the model was preloaded at start-up, outside the GPU slot, so no load time is asked for:
    # 10 + 2 x (12 / 1000 + 0.8) = 11.6 -> 12; three modes (a peer column) -> 12.4 -> 13; 1000 tokens -> capped at 70
    assert calls == [12, 13, 70]

    assert client.predict("tiny-random", api_name="/explorer_setting")[0] == "EP"
    tokens, _, _, summary = client.predict(
        "tiny-random", "The cat sat. It was warm!", "EP", 0, 0, False, api_name="/explore"
    )
    assert "anllm-anchor" in tokens and summary.startswith("25 tokens, 2 anchors")


def test_the_gpu_duration_follows_the_request_and_never_raises():
    from anllm.zerogpu import GpuBudget, gpu_duration

    class Registry:
        default = "tiny-random"

        def loaded(self):
            return ["tiny-random"]

    class Handlers:
        registry, max_new_tokens_cap, max_request_s = Registry(), 1024, None

    duration = gpu_duration(Handlers())
    assert duration("x" * 3000, None, "none", True, 96) == math.ceil(10 + 2 * (1000 / 1000 + 96 / 10))
    assert duration("x" * 3000, "tiny-random", "none", True, 96.0) == 32  # gradio sends numbers as floats
    assert duration("x", "other-model", "none", True, 96) == math.ceil(10 + 30 + 2 * (1 / 3000 + 9.6))  # not loaded
    largest = math.ceil(10 + 2 * (1 / 3000 + 1024 / 10))
    assert duration("x", None, "none", True, 10**9) == duration("x", None, "none", True, 1024) == largest
    for bad in (None, "many", float("nan"), float("inf")):  # the handler reports bad input; ask for the most
        assert duration("x", None, None, None, bad) == largest
    Handlers.max_request_s = 5.0
    assert duration("x", None, "none", True, 1024) == 15
    assert request_seconds(0, 1, 2) == math.ceil(10 + 2 * 0.1)
    with pytest.raises(AnLLMError, match="decode_tokens_per_s must be > 0"):
        GpuBudget(decode_tokens_per_s=0)


def test_the_space_folders_adapter_loads_with_plain_peft(space):
    """Without anllm: ``PeftModel.from_pretrained`` on a SmolLM2-135M-shaped model reads the folder's adapter."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from anllm.bench import SMOLLM2_SHAPE
    from anllm.models import tiny_model

    adapter = space / "anllm" / "adapters" / "smollm2-135m-anchor"
    with torch.device("meta"):  # the base's values do not matter here: allocate it without initialising it
        base = tiny_model(**SMOLLM2_SHAPE)
    model = PeftModel.from_pretrained(base.to_empty(device="cpu"), str(adapter))
    params = dict(model.named_parameters())
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert len(saved) == 30 * 7 * 2  # 30 layers x 7 projections x (A, B)
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert params[name].shape == value.shape and params[name].to(value.dtype).equal(value), key
