"""Run resources: long-lived objects (connections, clients, caches) shared by the steps of one run.

Each resource has a typed :class:`ResourceKey` and is made once, by the factory of the first step that asks for
it, under a lock of its own: two branches asking at the same moment get the same object, and no second one is
made and leaked. The engine owns the collection and closes every resource that has a ``close`` when the run's
command ends. Nothing else is shared between steps through it but what a key names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger("migrator")

T = TypeVar("T")


@dataclass(frozen=True)
class ResourceKey(Generic[T]):
    """Names one resource and, through its type parameter, what it holds: ``ResourceKey[BlobStore]("blob:…")``."""

    name: str


class RunResources:
    """The resources of one run, keyed by :class:`ResourceKey`, each made once and closed at the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        self._making: dict[str, threading.Lock] = {}

    def obtain(self, key: ResourceKey[T], factory: Callable[[], T]) -> T:
        """The resource under ``key``, made by ``factory`` if this run has none yet (once, whoever asks)."""
        with self._lock:
            if key.name in self._items:
                return cast(T, self._items[key.name])
            making = self._making.setdefault(key.name, threading.Lock())
        with making:
            with self._lock:
                if key.name in self._items:
                    return cast(T, self._items[key.name])
            value = factory()
            with self._lock:
                self._items[key.name] = value
            return value

    def find(self, key: ResourceKey[T]) -> T | None:
        """The resource under ``key`` if one was made, else None (nothing is made)."""
        with self._lock:
            return cast("T | None", self._items.get(key.name))

    def put(self, key: ResourceKey[T], value: T) -> None:
        """Sets the resource under ``key`` (a cache a step replaces); the one it replaces is closed."""
        with self._lock:
            old = self._items.get(key.name)
            self._items[key.name] = value
        if old is not None and old is not value:
            _close(key.name, old)

    def discard(self, key: ResourceKey[Any]) -> None:
        """Drops (and closes) the resource under ``key``, if any."""
        with self._lock:
            old = self._items.pop(key.name, None)
        if old is not None:
            _close(key.name, old)

    def names(self) -> list[str]:
        """The names of the resources made so far, sorted (what a run holds, for diagnostics and tests)."""
        with self._lock:
            return sorted(self._items)

    def __contains__(self, key: ResourceKey[Any]) -> bool:
        with self._lock:
            return key.name in self._items

    def close(self) -> None:
        """Closes every resource that can be closed, newest first; the collection is empty after."""
        with self._lock:
            items = list(self._items.items())
            self._items.clear()
            self._making.clear()
        for name, value in reversed(items):
            _close(name, value)


def _close(name: str, value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # closing at the end: nothing is lost by a resource that fails to close
            log.debug("closing %s failed", name, exc_info=True)
