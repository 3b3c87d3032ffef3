"""Former keyword names still accepted: ``mode=`` for the cache policy is now ``policy=`` (one word per idea)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def renamed_kwargs(**old_to_new: str) -> Callable[[F], F]:
    """Accept each former keyword (``mode=...``) as its new name, with a ``DeprecationWarning``.

    Giving both names is a ``TypeError``, as giving one argument twice is.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both {new}= and its former name {old}=; give {new}=")
                warnings.warn(
                    f"{fn.__qualname__}({old}=...) is now {new}=...; {old}= will be removed",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
