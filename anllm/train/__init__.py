"""Training with the AnSAN mask (arXiv 2402.07616 §4.2; docs/training.md): an outer layer over the core.

* :mod:`anllm.train.config`: :class:`TrainConfig`, read from YAML/JSON with ``--set key=value`` overrides;
* :mod:`anllm.train.data`: training examples (pretraining text, SFT records, segments, packing) and batches;
* :mod:`anllm.train.losses`: the AnSAN mask of a batch and its LM / KL losses;
* :mod:`anllm.train.loop`: :func:`train` on accelerate (one CPU, DDP, FSDP or DeepSpeed);
* :mod:`anllm.train.checkpoint`: atomic checkpoints and the metrics log;
* :mod:`anllm.train.corpus` and :mod:`anllm.train.memory_data`: offline corpora and memory items
  (``python -m anllm.train.corpus``, ``python -m anllm.train.memory_data``).

Nothing in the core imports this package.
"""

from anllm.train.config import TrainConfig
from anllm.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
