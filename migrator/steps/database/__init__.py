"""Database step kinds: read-only switch, portable backup to blob storage, resumable restore, fingerprints, the
window's delta sync, the cutover write guard and the BACPAC import.

``database.read_only`` → ``database.backup`` → ``database.restore`` → ``database.verify`` is the path that works
for every target (Azure SQL Database cannot restore a native SQL Server backup); ``database.sync`` moves what
changed since inside the window; ``database.write_guard`` keeps a rollback from losing the new instance's writes.
A kind is a page of its own module here; the SQL is in the dialects (:mod:`migrator.providers.database`), the
formats in :mod:`migrator.providers.database.backup`. No step writes SQL or asks which dialect it has.
No row value is ever logged or written to an output: only table names, counts and checksums.
"""

from __future__ import annotations

from migrator.providers.database.schema import same_portable_form
from migrator.steps.database.backup import Backup, BackupParams
from migrator.steps.database.bacpac import ImportBacpac, ImportBacpacParams
from migrator.steps.database.common import (
    DbCosts,
    SourceProfile,
    TargetCosts,
    chunk_count,
    connected,
    fingerprint,
    measure_db,
    measure_target,
    probe_fetch_rate,
    probe_read_rate,
    read_chunk_rows,
    source_profile,
    timed,
)
from migrator.steps.database.read_only import ReadOnly, ReadOnlyParams
from migrator.steps.database.restore import Restore, RestoreParams
from migrator.steps.database.sync import KeyRange, RangeDiff, Sync, SyncParams, diff_lines, key_ranges, sync_seconds
from migrator.steps.database.verify import Verify, VerifyParams
from migrator.steps.database.write_guard import WriteGuard, WriteGuardParams

__all__ = [
    "Backup", "BackupParams", "DbCosts", "ImportBacpac", "ImportBacpacParams", "KeyRange", "RangeDiff", "ReadOnly",
    "ReadOnlyParams", "Restore", "RestoreParams", "SourceProfile", "Sync", "SyncParams", "TargetCosts", "Verify",
    "VerifyParams", "WriteGuard", "WriteGuardParams", "chunk_count", "connected", "diff_lines",
    "fingerprint", "key_ranges", "measure_db", "measure_target", "probe_fetch_rate", "probe_read_rate",
    "read_chunk_rows", "same_portable_form", "source_profile", "sync_seconds", "timed",
]
