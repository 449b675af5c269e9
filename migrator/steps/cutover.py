"""The old import path of ``database.write_guard``: it lives in :mod:`migrator.steps.database.write_guard`."""

from __future__ import annotations

from migrator.steps.database.write_guard import WriteGuard, WriteGuardParams

__all__ = ["WriteGuard", "WriteGuardParams"]
