"""The params of the blob step kinds, checked when the playbook loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from migrator.providers.blob import BlobEndpoint
from migrator.step import Params

MiB = 1024 * 1024


class TransferParams(Params):
    source: BlobEndpoint
    destination: BlobEndpoint
    #: Blobs (and, for large blobs, blocks) in flight at once; the HTTP connection pool is sized to it.
    concurrency: int = Field(8, ge=1, le=128)
    #: Blobs larger than this go in blocks of ``block_size``, staged in parallel, and resume block by block; those
    #: up to it in one Put Blob (from a folder; from a container only up to 8 MiB, what is read into memory). Below
    #: 256 MiB one request is as fast as blocks and a failure costs at most a few seconds of resending.
    large_blob_threshold: int = Field(256 * MiB, ge=1)
    block_size: int = Field(4 * MiB, ge=64 * 1024, le=100 * MiB)
    #: Copy server-side (the storage service reads the source by URL) where possible.
    server_side_copy: bool = True
    #: Longest wait between copy-status polls of a pending server-side copy (the first comes after 50 ms).
    copy_poll_interval: float = Field(1.0, gt=0)
    #: Accepted for playbooks written before, and no longer used: a blob copy is retried in two layers only, each
    #: request by its store (the endpoint's ``retry_total``) and the step by the runner (its ``retry``).
    attempts_per_blob: int = Field(4, ge=1)
    #: For the plan only, on a step that runs after a presync which has not run yet (the destination still
    #: lacks most of the source): the share of the source expected to change in between, so that the estimate
    #: is the delta this step will copy, not a full copy. None: what the destination lacks now.
    planned_change: float | None = Field(None, ge=0, le=1)
    #: With ``planned_change``: also count the source blobs modified within this many hours before the plan
    #: (a measured proxy for what changes between presync and window); the larger share wins.
    planned_recent_hours: float | None = Field(None, gt=0)
    #: Work from the inventory an earlier transfer step of this run process left of a container it wrote, and
    #: leave this destination's for the steps after (see the module doc). Off: this step lists both sides itself
    #: and leaves nothing behind.
    reuse_listing: bool = True


class PresyncParams(TransferParams):
    pass


class SyncParams(TransferParams):
    #: What to do with destination blobs whose source is gone: delete them, or keep them and report them.
    on_source_deleted: Literal["delete", "keep"] = "delete"
    #: A container filled from the destination (the live container a put live fills from the backup): a blob the
    #: source lost is deleted there too, before its copy at the destination. Only such a blob, one the destination
    #: held and the source no longer has: nothing the destination never had is ever deleted there.
    also_delete_from: BlobEndpoint | None = None

    @model_validator(mode="after")
    def _deletions_only_where_deleted(self) -> SyncParams:
        if self.also_delete_from is not None and self.on_source_deleted != "delete":
            raise ValueError("also_delete_from needs on_source_deleted: delete")
        return self


class PutLiveParams(TransferParams):
    #: Whether blobs in the live container that the backup does not have are deleted (off: they are reported).
    delete_extra: bool = False


class VerifyParams(Params):
    source: BlobEndpoint
    destination: BlobEndpoint
    #: Compare MD5s; where a side has no stored Content-MD5 the content is read and hashed.
    compare_md5: bool = True
    #: Also compare content type and metadata.
    compare_properties: bool = True
    concurrency: int = Field(8, ge=1, le=128)
    #: Which source blobs without a stored MD5 are read and hashed. ``changed`` (the default): only those whose
    #: version token differs from the one the destination copy recorded (or that have none); a file with the
    #: same size, mtime, ctime and inode as when it was hashed during the copy has the same content, since any
    #: write gives it a new ctime, which user space cannot set back. ``all``: every one of them, for file
    #: systems whose ctime or inode numbers cannot be trusted (some network shares, FAT).
    rehash: Literal["changed", "all"] = "changed"
    #: Work from the destination's inventory this run process kept (what the transfer steps before listed, wrote
    #: and read back: see ``migrator.steps.blobs.reuse``) instead of listing the destination again; the source is
    #: always listed. Off (the default): both sides listed afresh, so the proof reads the whole world. On: the
    #: proof of the destination is the run's own, and an outside write to it since the step that kept it is not
    #: seen; for a read-only window whose destination only the run writes. Needs ``compare_properties: false``
    #: (a kept inventory holds no content types); without a kept inventory (a resumed run) it lists.
    reuse_listing: bool = False

    @model_validator(mode="after")
    def _kept_inventory_without_properties(self) -> VerifyParams:
        if self.reuse_listing and self.compare_properties:
            raise ValueError("reuse_listing needs compare_properties: false (a kept inventory holds no content "
                             "types or metadata to compare)")
        return self
