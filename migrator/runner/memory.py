"""Items and memo kept in memory: what a dry-run's ``check`` and ``plan`` get (they must write nothing), and what
:mod:`migrator.testing` gives a step run outside a playbook."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from migrator.step import ItemRecord


class MemoryItems:
    """A thread-safe dict of :class:`ItemRecord`; counts every ``record`` call in ``writes``."""

    def __init__(self) -> None:
        self._items: dict[str, ItemRecord] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.total_items: int | None = None
        self.total_bytes: int | None = None

    def record(self, key: str, status: str = "done", *, bytes: int = 0, checksum: str | None = None,
               detail: Any = None) -> None:
        with self._lock:
            self._items[key] = ItemRecord(key, status, bytes, checksum, detail)
            self.writes += 1

    def flush(self) -> None:
        return None

    def get(self, key: str) -> ItemRecord | None:
        with self._lock:
            return self._items.get(key)

    def keys(self, status: str | None = "done") -> set[str]:
        with self._lock:
            return {k for k, r in self._items.items() if status is None or r.status == status}

    def iter(self, status: str | None = None) -> Iterator[ItemRecord]:
        with self._lock:
            records = list(self._items.values())
        return iter([r for r in records if status is None or r.status == status])

    def count(self, status: str | None = "done") -> int:
        return len(self.keys(status))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def set_total(self, items: int | None = None, bytes: int | None = None) -> None:
        self.total_items, self.total_bytes = items, bytes


class MemoryMemo:
    """A step's memo in a dict."""

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)


