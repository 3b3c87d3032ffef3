"""The app's models: loaded by name on first use, at most a few in memory, every failure turned into a message."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from anllm import models
from anllm.config import PRESETS, AnLLMError
from anllm.models import BUILTIN_MODELS, HUB_ID, LoadedModel, hub_reachable, in_hub_cache, load_model

logger = logging.getLogger(__name__)


def model_choices() -> list[str]:
    """Model picker entries: the embedded default first, the base SmolLM2, released presets, the test model."""
    return ["default", "smollm2-135m", *PRESETS, "tiny-random"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def allowed_models_from_env(default: str, host: str | None = None) -> tuple[str, ...] | None:
    """The models visitors may load: ``$ANLLM_ALLOWED_MODELS`` (comma-separated; ``*`` = any, the host's explicit
    opt-out), else only the default where the app is reachable from a network: on a Hugging Face Space (``$SPACE_ID``)
    or bound to anything but localhost (``host``, default ``$GRADIO_SERVER_NAME``); else any (``None``)."""
    from anllm.ui.launch import is_loopback

    raw = os.environ.get("ANLLM_ALLOWED_MODELS")
    if raw is None:
        public = os.environ.get("SPACE_ID") or not is_loopback(host or os.environ.get("GRADIO_SERVER_NAME"))
        return (default,) if public else None
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return None if "*" in names else tuple(dict.fromkeys((default, *names)))


def visitor_name_problem(name: str) -> str | None:
    """Why a visitor may not ask for ``name`` (None if they may): only built-in names, presets and Hub ids, never
    a local path, whatever the allowlist says; the host names local folders with --model or ANLLM_ALLOWED_MODELS."""
    if name in BUILTIN_MODELS or name.lower() in PRESETS:
        return None
    if len(name) > 200:
        return f"a model name of {len(name)} characters is too long; a Hub id is org/name, at most 96 characters each"
    local = name.startswith(("/", ".", "~", "\\")) or "\\" in name or os.sep != "/" and os.sep in name
    try:
        local = local or Path(name).exists()
    except (OSError, ValueError):
        local = True
    if local or ("/" in name and not HUB_ID.match(name)):  # a bare unknown name: load_model says it is unknown
        return (
            f"model {name[:100]!r} is not a built-in model, a preset or a Hub id (org/name); this app does not load "
            "local folders for visitors (the host can name one with --model or ANLLM_ALLOWED_MODELS)"
        )
    return None


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
                f"this app serves only {', '.join(self.allowed)}; model {name[:100]!r} is not among them "
                "(the host chooses with ANLLM_ALLOWED_MODELS)"
            )
        operator_named = name == self.default or name in (self.allowed or ())
        problem = None if operator_named else visitor_name_problem(name)
        if problem is not None:
            raise AnLLMError(problem)
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
        """Fail fast, with a message, for a hub id that cannot be fetched (instead of waiting on the network); the
        loader (:func:`anllm.models.load_model`) checks local folders and names itself."""
        if name in BUILTIN_MODELS or _offline() or models._path_state(name) is not None:
            return  # offline, load_model itself fails at once with a clear message
        preset = PRESETS.get(name.lower())
        repo = preset.hub_id if preset is not None else name
        if "/" in repo and not in_hub_cache(repo) and not hub_reachable():
            raise AnLLMError(
                f"model {name!r} is not in the local Hugging Face cache and the Hub is unreachable from here; "
                "use default, smollm2-135m or tiny-random offline"
            )
