"""The old import path of ``database.sync`` and its helpers: they live in :mod:`migrator.steps.database.sync`."""

from __future__ import annotations

from migrator.steps.database.sync import KeyRange, RangeDiff, Sync, SyncParams, diff_lines, key_ranges, sync_seconds

__all__ = ["KeyRange", "RangeDiff", "Sync", "SyncParams", "diff_lines", "key_ranges", "sync_seconds"]
