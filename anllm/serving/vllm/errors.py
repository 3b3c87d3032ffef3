"""The one error type the plugin raises at start-up: one line, naming what to change."""

from __future__ import annotations

from anllm.config import AnLLMError


class AnchorServingError(AnLLMError):
    """Raised (in one line) when vLLM is started with a setting the anchor plugin cannot serve exactly."""

    def __init__(self, message: str) -> None:
        super().__init__("anllm vLLM plugin: " + " ".join(message.split()))
