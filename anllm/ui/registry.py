"""The app's models: loaded by name on first use, at most a few in memory, every failure turned into a message."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch

from anllm.config import PRESETS, AnLLMError
from anllm.models import BUILTIN_MODELS, LoadedModel, load_model

logger = logging.getLogger(__name__)


def model_choices() -> list[str]:
    """Model picker entries: the embedded default first, the base SmolLM2, released presets, the test model."""
    return ["default", "smollm2-135m", *PRESETS, "tiny-random"]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection within ``timeout_s`` (DNS included)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout_s)
    return ok.is_set()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def allowed_models_from_env(default: str) -> tuple[str, ...] | None:
    """The models visitors may load: ``$ANLLM_ALLOWED_MODELS`` (comma-separated; ``*`` = any), else only the
    default on a Hugging Face Space (``$SPACE_ID`` set), else any (``None``)."""
    raw = os.environ.get("ANLLM_ALLOWED_MODELS")
    if raw is None:
        return (default,) if os.environ.get("SPACE_ID") else None
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return None if "*" in names else tuple(dict.fromkeys((default, *names)))


class ModelRegistry:
    """Loads models by name on first use; the default stays resident, plus the most recent ``max_loaded - 1`` others.

    Args:
        default: the model used when a request names none; never dropped once loaded, so a visitor who switches
            models does not make the next visitor wait for the default to reload.
        device, dtype: where and how to load (chosen by the caller, at the edge).
        max_loaded: models kept in memory, the default included (at least 1).
        allowed: the only names visitors may load (the default is always allowed); ``None`` = any.
        loader: the load function (``anllm.models.load_model``; tests may pass another).
    """

    def __init__(
        self,
        default: str = "default",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_loaded: int = 2,
        allowed: Sequence[str] | None = None,
        loader: Callable[..., LoadedModel] = load_model,
    ) -> None:
        self.default = default
        self.device, self.dtype, self.max_loaded, self.loader = device, dtype, max(1, max_loaded), loader
        self.allowed = None if allowed is None else tuple(dict.fromkeys((default, *allowed)))
        self.n_loads = 0  # models loaded so far (a resident default is loaded once)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        """Names of the models in memory, oldest first."""
        return list(self._models)

    def get(self, name: str | None = None) -> LoadedModel:
        """The model called ``name`` (the default when empty), loading it if needed.

        Raises:
            AnLLMError: with a message for the user (not allowed here, unknown name, Hub unreachable, load failure).
        """
        name = (name or "").strip() or self.default
        if self.allowed is not None and name not in self.allowed:
            raise AnLLMError(
                f"this app serves only {', '.join(self.allowed)}; model {name!r} is not among them "
                "(the host chooses with ANLLM_ALLOWED_MODELS)"
            )
        with self._lock:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recent last
                return self._models[name]
            self._check_source(name)
            try:
                lm = self.loader(name, dtype=self.dtype, device=self.device)
            except AnLLMError:
                raise
            except Exception as e:  # noqa: BLE001 - any load failure is reported, not raised as a traceback
                logger.exception("loading %s failed", name)
                raise AnLLMError(f"could not load model {name!r}: {type(e).__name__}: {e}".split("\n")[0]) from e
            self.n_loads += 1
            while len(self._models) >= self.max_loaded:
                others = [n for n in self._models if n != self.default] or list(self._models)
                self._models.pop(others[0])  # the oldest, the resident default last of all
            self._models[name] = lm
            return lm

    @staticmethod
    def _check_source(name: str) -> None:
        """Fail fast, with a message, for a hub id that cannot be fetched (instead of waiting on the network)."""
        if name in BUILTIN_MODELS or Path(name).exists() or _offline():
            return  # offline, load_model itself fails at once with a clear message
        preset = PRESETS.get(name.lower())
        repo = preset.hub_id if preset is not None else name
        if "/" in repo and not _in_hub_cache(repo) and not hub_reachable():
            raise AnLLMError(
                f"model {name!r} is not in the local Hugging Face cache and the Hub is unreachable from here; "
                "use default, smollm2-135m or tiny-random offline"
            )
