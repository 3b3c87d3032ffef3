"""Serving-engine integrations of anllm: outer layers that the core never imports (docs/serving.md).

:mod:`anllm.serving.export` writes a plain Hugging Face model folder plus the anchor setting beside the weights;
:mod:`anllm.serving.vllm` is the vLLM plugin that reads that setting back (it imports vLLM, the core never does).
"""
