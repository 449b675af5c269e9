"""Blob storage migration: presync while the tenant is live, delta sync in the window, put live, verify.

The package, by job:

* :mod:`~migrator.steps.blobs.params` — the kinds' params;
* :mod:`~migrator.steps.blobs.inventory` — listing both sides at once, and the diff (what is already in place);
* :mod:`~migrator.steps.blobs.reuse` — the inventories a run process keeps of the containers it writes;
* :mod:`~migrator.steps.blobs.attempt` — one attempt of a transfer step, from its check to its verify;
* :mod:`~migrator.steps.blobs.transfer` — copy (by the copy engine of :mod:`migrator.providers.blob.copy`) and
  delete what differs, plan it, undo it;
* :mod:`~migrator.steps.blobs.verify` — read back what an attempt wrote, or compare both sides end to end;
* :mod:`~migrator.steps.blobs.estimates` — the plan's seconds;
* :mod:`~migrator.steps.blobs.kinds` — ``blobs.presync``, ``blobs.sync``, ``blobs.put_live``, ``blobs.verify``.

Every name other code imports from ``migrator.steps.blobs`` is re-exported here.
"""

from __future__ import annotations

from migrator.providers.blob.copy import SOURCE_VERSION_KEY, BlobCopier, CopyResult, block_ids, source_token
from migrator.steps.blobs.attempt import Attempt, Attempts
from migrator.steps.blobs.estimates import (
    HASH_SAMPLE,
    ListingSides,
    hash_probe,
    listing_seconds,
    listings_overlap,
    transfer_estimate,
    verify_estimate,
)
from migrator.steps.blobs.inventory import SURVEY_LIMIT, CachedInventory, Compact, Diff, Survey, same_content
from migrator.steps.blobs.kinds import Presync, PutLive, Sync, Verify
from migrator.steps.blobs.params import MiB, PresyncParams, PutLiveParams, SyncParams, TransferParams, VerifyParams
from migrator.steps.blobs.reuse import INVENTORY_CACHE_KEY, Claim, InventoryCache
from migrator.steps.blobs.transfer import Progress, StaleInventory, transfer
from migrator.steps.blobs.verify import VERIFY_BY_PROPERTIES_SHARE, compare_inventories, reads_back

__all__ = [
    "HASH_SAMPLE",
    "INVENTORY_CACHE_KEY",
    "SOURCE_VERSION_KEY",
    "SURVEY_LIMIT",
    "VERIFY_BY_PROPERTIES_SHARE",
    "Attempt",
    "Attempts",
    "BlobCopier",
    "CachedInventory",
    "Claim",
    "Compact",
    "CopyResult",
    "Diff",
    "InventoryCache",
    "ListingSides",
    "MiB",
    "Presync",
    "PresyncParams",
    "Progress",
    "PutLive",
    "PutLiveParams",
    "StaleInventory",
    "Survey",
    "Sync",
    "SyncParams",
    "TransferParams",
    "Verify",
    "VerifyParams",
    "block_ids",
    "compare_inventories",
    "hash_probe",
    "listing_seconds",
    "listings_overlap",
    "reads_back",
    "same_content",
    "source_token",
    "transfer",
    "transfer_estimate",
    "verify_estimate",
]
