"""A stand-in for Hugging Face's ``spaces`` package, put on ``PYTHONPATH`` by ``tests/test_space_deploy.py`` only.

Like ZeroGPU's package, importing it can make ``torch.cuda.is_available()`` report a GPU (``FAKE_SPACES_CUDA=1``),
and ``GPU(duration=...)`` wraps a function, generator functions staying generator functions. It records, one JSON
line per event in ``$FAKE_SPACES_LOG``: the import (was torch already imported?), each wrapped function, and each
call with the duration it was given (a callable duration is called with the call's arguments, as ZeroGPU does).
"""

import functools
import inspect
import json
import os
import sys

CUDA = os.environ.get("FAKE_SPACES_CUDA") == "1"


def _log(**event) -> None:
    path = os.environ.get("FAKE_SPACES_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


_log(event="import", torch_imported="torch" in sys.modules, cuda=CUDA)
if CUDA:
    import torch

    torch.cuda.is_available = lambda: True


def GPU(fn=None, *, duration=60, **_ignored):  # noqa: N802 - the real package's name
    """``@GPU`` or ``@GPU(duration=seconds or callable)``."""

    def wrap(f):
        _log(event="wrap", fn=f.__name__, dynamic=callable(duration))

        def seconds(args, kwargs):
            return duration(*args, **kwargs) if callable(duration) else duration

        if inspect.isgeneratorfunction(f):

            @functools.wraps(f)
            def gen(*args, **kwargs):
                _log(event="call", fn=f.__name__, duration=seconds(args, kwargs))
                yield from f(*args, **kwargs)

            return gen

        @functools.wraps(f)
        def call(*args, **kwargs):
            _log(event="call", fn=f.__name__, duration=seconds(args, kwargs))
            return f(*args, **kwargs)

        return call

    return wrap(fn) if fn is not None else wrap
