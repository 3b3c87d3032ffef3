import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from anllm.anchors import resolve_anchor_ids  # noqa: E402
from anllm.config import AnchorConfig  # noqa: E402
from anllm.models import LoadedModel, tiny_model, tiny_tokenizer  # noqa: E402

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


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
