"""Per-browser-session state of the app's Document and Chat tabs, bounded in number.

The value of each session (a compressed document, a conversation) lives in a :class:`SessionStore` on the server,
keyed by gradio's ``session_hash`` (one per browser tab, one per ``gradio_client.Client``). Unlike ``gr.State``,
which gradio forgets without a callback when it drops a session past ``state_session_capacity``, the store has its
own bound: it keeps at most ``capacity`` sessions and drops the least recently used one (calling ``on_drop``, which
deletes its temporary files) when a new one arrives. ``demo.unload`` drops a session when its tab closes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
LOCAL_SESSION = "local"  # the key when a handler is called without a gradio request (scripts, notebooks)


def session_key(request: Any) -> str:
    """The store key of the browser session that made ``request`` (a ``gr.Request``; None outside gradio)."""
    key = getattr(request, "session_hash", None)
    return str(key) if key else LOCAL_SESSION


class SessionStore(Generic[T]):
    """At most ``capacity`` values by session key, the least recently used dropped first.

    Args:
        capacity: sessions kept (at least 1).
        on_drop: called with each value that leaves the store (replaced, evicted or popped), outside the lock.
    """

    def __init__(self, capacity: int, on_drop: Callable[[T], None] | None = None) -> None:
        self.capacity = max(1, int(capacity))
        self.on_drop = on_drop
        self.n_evicted = 0  # values dropped to make room (for tests and monitoring)
        self._values: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str) -> T | None:
        """The session's value (now the most recently used), or None."""
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: str, value: T) -> None:
        """Store ``value`` for the session, dropping the value it replaces and the oldest sessions over capacity."""
        dropped = []
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None and old is not value:
                dropped.append(old)
            self._values[key] = value
            while len(self._values) > self.capacity:
                dropped.append(self._values.popitem(last=False)[1])
                self.n_evicted += 1
        self._drop(dropped)

    def pop(self, key: str) -> None:
        """Forget the session (its tab closed), dropping its value."""
        with self._lock:
            value = self._values.pop(key, None)
        self._drop([value] if value is not None else [])

    def clear(self) -> None:
        with self._lock:
            values = list(self._values.values())
            self._values.clear()
        self._drop(values)

    def _drop(self, values: list[T]) -> None:
        if self.on_drop is not None:
            for value in values:
                self.on_drop(value)
