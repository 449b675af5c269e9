"""Blob storage migration: presync while the tenant is live, delta sync in the window, put live, verify.

All three copying kinds share one routine, :func:`transfer`. It reads both inventories, decides per blob
whether the destination already holds the same content (:func:`same_content`), and copies only the rest,
``concurrency`` blobs at a time:

* server-side (``start_copy_from_url`` with a SAS minted just in time) when the source is reachable by URL and
  carries a Content-MD5 that the copy takes along;
* otherwise streamed through this process in constant memory: small blobs in one request, large ones in
  blocks (``stage_block`` + ``commit_block_list``) whose ids derive from the source version, so after a restart
  the uncommitted blocks already at the destination are kept and only the rest are sent.

Within one attempt each container is listed once. ``check`` lists both sides at the same time and keeps what it
read (the blobs to copy, up to :data:`SURVEY_LIMIT`); ``plan``/``apply`` work from that; ``verify`` reads back
only what ``apply`` wrote or deleted (one Get Blob Properties each), or, when that is more than
:data:`VERIFY_BY_PROPERTIES_SHARE` of the destination, lists the destination once more. Blobs ``check`` found
in place were proven by its own listing a moment before. A new attempt (a retry, a resume) reads afresh.

Every destination blob gets a Content-MD5 (computed while streaming, checked against the source's when it has
one), and keeps the source's content type and metadata. A source without MD5s but with version tokens (a folder:
size, mtime, ctime, inode) also gets :data:`SOURCE_VERSION_KEY` in the copy's metadata: the version the bytes
were read from and their MD5, recorded only when the file's token was the same before and after the read. While
the source still has that version, its MD5 is known without reading it: the delta sync compares tokens (which
also catches a change whose modification time was restored) and ``blobs.verify`` reads and hashes only the
source files whose token changed. Server-side copies carry the metadata along, so the live container has the
tokens too. Each finished blob is recorded in ``ctx.items``; a resumed step skips recorded blobs whose source is
unchanged, and the inventory diff skips everything else that is already in place, so no completed blob is sent
twice.

Deletions: a source blob gone by the time it is read (deleted or renamed after the listing) is a deletion, not an
error: it is recorded ("vanished") and the step goes on. ``blobs.sync`` removes what the source lost from its
destination and, with ``also_delete_from``, from the container filled from that destination (the live
container): it knows exactly which blobs the source lost (its destination, the backup, holds only what the
migration copied there from the source), so nothing the migration never had is deleted there.

Across the steps of one run, each Azure container a transfer step writes is listed once (:class:`InventoryCache`,
in ``ctx.resources``): a transfer step that finished its apply and verify leaves its destination's inventory there
(what its listing gave, updated with what it wrote or deleted and read back, or the listing its verify made), and
the next transfer step with that container as its source or destination works from it instead of listing again.
In the Workspace 365 playbook the presync steps leave the backup and the live container, so inside the read-only
window ``blobs.sync`` lists only the source folder and ``blobs.put_live`` lists nothing. The rules that keep this
safe:

* it lives only in the memory of one run process: a resumed run, a new process, lists again, and so does every
  step when ``reuse_listing: false``;
* only destinations are kept: containers the run writes itself. A container only read (a source no step writes)
  and folders (a directory walk is cheap) are always listed;
* an attempt takes the inventories of both its containers out of the cache when its check starts and puts them
  back only when its verify passed, so any failed attempt drops them and its retry lists both sides: an outside
  change shows up then. A verify that fails after working from a kept inventory is retried for that reason;
* a copy whose source blob turns out missing or changed (an outside change to a kept inventory) fails the attempt
  with a retryable error, and the retry lists;
* two steps writing one container at the same time (any prefixes) keep neither's inventory, and a step that writes
  a container without keeping its inventory (``reuse_listing: false``, a rollback) drops what the cache held of it;
* ``blobs.verify`` never uses it: it always lists the destination and the source, so the end-to-end proof reads
  the world. A kept inventory can therefore at most leave out work that ``blobs.verify`` then names.

The dry-run cannot hold anything (it applies nothing): its estimates count no listing of a container that an
earlier transfer step of the same plan lists and writes, as the run will reuse that inventory.
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Generic, Literal, TypeVar

from pydantic import Field, model_validator
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from migrator.errors import (
    Cancelled,
    MigratorError,
    PermanentError,
    TransientError,
    VerificationFailed,
    is_retryable,
)
from migrator.providers.blob import BlobEndpoint, BlobInfo, BlobStore, check_relative_name, open_blob_store
from migrator.providers.blob.azure import AzureBlobStore
from migrator.providers.blob.folder import FolderBlobStore
from migrator.secrets import blob_label
from migrator.step import CheckResult, Estimate, ItemRecord, Params, PlanResult, Step, StepContext

MiB = 1024 * 1024
#: Assumed rates for plan estimates before anything was measured: a local storage emulator on 2 cores takes a
#: small blob (one Put Blob, or one server-side copy within an account) in about 2 ms with 4 in flight, and
#: large ones in blocks at about 200 MiB/s.
_ASSUMED_BLOBS_PER_S = 500.0
_ASSUMED_BYTES_PER_S = 200.0 * MiB
_MAX_LISTED = 20


# -- params ---------------------------------------------------------------------------------------------------


class TransferParams(Params):
    source: BlobEndpoint
    destination: BlobEndpoint
    #: Blobs (and, for large blobs, blocks) in flight at once; the HTTP connection pool is sized to it.
    concurrency: int = Field(8, ge=1, le=128)
    #: Blobs larger than this go in blocks of ``block_size`` and resume block by block.
    large_blob_threshold: int = Field(8 * MiB, ge=1)
    block_size: int = Field(4 * MiB, ge=64 * 1024, le=100 * MiB)
    #: Copy server-side (the storage service reads the source by URL) where possible.
    server_side_copy: bool = True
    #: Longest wait between copy-status polls of a pending server-side copy (the first comes after 50 ms).
    copy_poll_interval: float = Field(1.0, gt=0)
    #: Attempts per blob for transient faults, on top of the SDK's own per-request retries.
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


# -- inventory diff -------------------------------------------------------------------------------------------

#: Destination metadata naming the source version a copy was read from, and the MD5 of what was read.
SOURCE_VERSION_KEY = "migrator_source_version"


def source_token(version: str, md5: bytes) -> str:
    """The value of :data:`SOURCE_VERSION_KEY`: the source version and the MD5 of the bytes read from it."""
    return f"{version}:{md5.hex()}"


@dataclass(slots=True)
class Compact:
    """What the diff keeps of a blob: small, since an inventory may hold 200,000 of them.

    ``version`` is the source's version token (source side); ``recorded`` the :data:`SOURCE_VERSION_KEY` of a
    destination copy (destination side, when listed with metadata).
    """

    size: int
    md5: bytes | None
    last_modified: float | None
    version: str | None = None
    recorded: str | None = None
    #: Only in an inventory a later step may reuse as a copy source: what a copy takes from the listing.
    etag: str | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] | None = None


def compact(info: BlobInfo) -> Compact:
    return Compact(info.size, info.md5, info.last_modified, info.version, info.metadata.get(SOURCE_VERSION_KEY))


def kept(info: BlobInfo) -> Compact:
    """``info`` as an inventory kept for later steps holds it: with what a copy from it needs."""
    return Compact(info.size, info.md5, info.last_modified, info.version, info.metadata.get(SOURCE_VERSION_KEY),
                   info.etag, info.content_type, info.metadata)


def as_info(name: str, blob: Compact) -> BlobInfo:
    """A blob of a kept inventory, as its listing gave it."""
    return BlobInfo(name=name, size=blob.size, md5=blob.md5, etag=blob.etag, last_modified=blob.last_modified,
                    content_type=blob.content_type, metadata=blob.metadata or {}, version=blob.version)


def _recorded(blob: BlobInfo | Compact) -> str | None:
    return blob.recorded if isinstance(blob, Compact) else blob.metadata.get(SOURCE_VERSION_KEY)


def same_content(src: BlobInfo | Compact, dst: BlobInfo | Compact) -> bool:
    """Whether ``dst`` holds what ``src`` holds, judged from properties alone (no content read)."""
    if src.size != dst.size:
        return False
    if src.md5 is not None:
        return dst.md5 == src.md5
    recorded = _recorded(dst)
    if src.version is not None and recorded is not None:
        # The copy says which source version it was read from: current exactly when the source still has it
        # (a change with its modification time restored counts as a change).
        return dst.md5 is not None and recorded == source_token(src.version, dst.md5)
    # No MD5 nor a recorded version: the copy is current when it was written strictly after the source last
    # changed (storage clocks tick in whole seconds, so "the same second" counts as changed).
    if src.last_modified is None or dst.last_modified is None:
        return False
    return dst.md5 is not None and dst.last_modified > src.last_modified


def destination_inventory(store: BlobStore, *, metadata: bool = False, keep: bool = False) -> dict[str, Compact]:
    """Name -> size, MD5, last change of every blob in ``store``: one listing. With ``metadata`` (a source with
    version tokens) the listing includes metadata, for the copies' recorded source versions. With ``keep`` each
    blob holds all a later step needs to copy from it (:func:`kept`)."""
    if keep:
        return {b.name: kept(b) for b in store.list(metadata=metadata)}
    if not metadata:
        return {b.name: Compact(b.size, b.md5, b.last_modified) for b in store.list(metadata=False)}
    return {b.name: Compact(b.size, b.md5, b.last_modified, None, b.metadata.get(SOURCE_VERSION_KEY))
            for b in store.list(metadata=True)}


#: A source blob waiting for the destination listing that runs beside it: at most this many are held.
_LISTING_BUFFER = 10_000


D = TypeVar("D")


@dataclass
class Listings(Generic[D]):
    """Both listings of a diff, run side by side: the source streamed, the destination into a dict.

    ``source`` yields the source blobs; ``destination()`` waits for the destination inventory. The source is
    read ahead into a buffer of at most :data:`_LISTING_BUFFER` blobs while the destination is still being
    listed, so the two overlap (a folder walk beside a storage listing costs about the longer of the two) in
    bounded memory. ``src_seconds``/``dst_seconds`` time each side on its own (for the plan's estimates).
    """

    source: Iterator[BlobInfo]
    destination: Callable[[], dict[str, D]]
    src_seconds: float = 0.0
    dst_seconds: float = 0.0


def list_both(src: BlobStore, list_destination: Callable[[], dict[str, D]], *,
              src_metadata: bool = True) -> Listings[D]:
    """Starts ``list_destination`` in a thread of its own and the source listing here (see :class:`Listings`)."""
    timed: dict[str, float] = {}
    # Handed over through this holder, not the future, so that the caller owns the only reference (it pops
    # entries as it goes, and a dict kept alive by the future would double the inventory's memory).
    holder: list[dict[str, D]] = []

    def in_background() -> None:
        started = time.perf_counter()
        try:
            holder.append(list_destination())
        finally:
            timed["dst"] = time.perf_counter() - started

    pool = ThreadPoolExecutor(1, thread_name_prefix="blob-list")
    future = pool.submit(in_background)
    pool.shutdown(wait=False)
    listings: Listings[D] = Listings(iter(()), lambda: {})
    listing = src.list(metadata=src_metadata)
    buffered: list[BlobInfo] = []

    def next_source() -> BlobInfo | None:
        started = time.perf_counter()
        info = next(listing, None)
        listings.src_seconds += time.perf_counter() - started
        return info

    while len(buffered) < _LISTING_BUFFER and not future.done():
        info = next_source()
        if info is None:
            break
        buffered.append(info)

    def source() -> Iterator[BlobInfo]:
        yield from buffered
        buffered.clear()
        while (info := next_source()) is not None:
            yield info

    def destination() -> dict[str, D]:
        future.result()  # raises what the listing raised
        listings.dst_seconds = timed["dst"]
        return holder.pop()

    listings.source, listings.destination = source(), destination
    return listings


def diff_listings(src: BlobStore, dst: BlobStore, reuse: Reuse | None = None) -> Listings[Compact]:
    """Both listings of a transfer's diff: the destination with metadata when the source has versions.

    A side ``reuse`` holds an inventory of is not listed: its blobs come from that inventory (never changed here).
    """
    reuse = reuse or Reuse()
    cached_dst = reuse.destination_for(src)
    if cached_dst is not None:
        def list_destination() -> dict[str, Compact]:
            return cached_dst
    else:
        def list_destination() -> dict[str, Compact]:
            return destination_inventory(dst, metadata=src.reports_versions, keep=reuse.keep)
    cached_src = reuse.source_inventory()
    if cached_src is None:
        return list_both(src, list_destination)
    listings: Listings[Compact] = Listings((as_info(name, blob) for name, blob in cached_src.items()), lambda: {})

    def destination() -> dict[str, Compact]:
        started = time.perf_counter()
        inventory = list_destination()
        listings.dst_seconds = time.perf_counter() - started
        return inventory

    listings.destination = destination
    return listings


# -- the run's inventory cache --------------------------------------------------------------------------------

#: ``ctx.resources`` key of the run process's :class:`InventoryCache`.
INVENTORY_CACHE_KEY = "blobs.inventory_cache"

Identity = tuple[str, str]  # a container's address (never a credential), and the prefix inside it


@dataclass
class CachedInventory:
    """A container's inventory as a transfer step of this run process left it. ``metadata``: listed with metadata,
    each blob with its content type and metadata (:func:`kept`), so it can serve as a copy source too."""

    blobs: dict[str, Compact]
    metadata: bool


@dataclass
class Claim:
    """One attempt's hold on a container of the cache: what it took out, and whether it may put it back."""

    identity: Identity
    entry: CachedInventory | None
    epoch: int
    writer: bool
    #: Another step wrote the container while this claim began: nothing this attempt saw may be kept.
    shared: bool = False
    open: bool = True


def _overlap(a: str, b: str) -> bool:
    """Whether two prefixes of one container see some of the same blobs."""
    a, b = a.strip("/"), b.strip("/")
    return not a or not b or a == b or a.startswith(b + "/") or b.startswith(a + "/")


class InventoryCache:
    """The inventories of the Azure containers this run process listed and then changed itself, by identity.

    Thread-safe: steps on parallel branches share it. An attempt ``claim``s its destination (taking out what is
    kept of that container, under any prefix that overlaps) and ``borrow``s its source; when its verify passed it
    ``settle``s both, which keeps the destination's new inventory and returns the source's unless another step
    wrote that container meanwhile (each container has an epoch, moved by every writer's claim and every drop).
    A failed attempt never settles: what it took is gone, and its next check ``abandon``s the claims.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Identity, CachedInventory] = {}
        self._epochs: dict[str, int] = {}
        self._writers: dict[str, int] = {}

    def peek(self, identity: Identity | None) -> CachedInventory | None:
        """What is kept of ``identity``, left in place (for a plan, which changes nothing)."""
        if identity is None:
            return None
        with self._lock:
            return self._entries.get(identity)

    def _take_overlapping(self, identity: Identity) -> CachedInventory | None:
        container, prefix = identity
        own = self._entries.pop(identity, None)
        for other in [k for k in self._entries if k[0] == container and _overlap(k[1], prefix)]:
            del self._entries[other]
        return own

    def claim(self, identity: Identity) -> Claim:
        """A transfer attempt about to write ``identity``: takes out what is kept of that container (its own
        inventory is returned with the claim), and notes that it is being written."""
        container = identity[0]
        with self._lock:
            shared = self._writers.get(container, 0) > 0
            self._writers[container] = self._writers.get(container, 0) + 1
            self._epochs[container] = epoch = self._epochs.get(container, 0) + 1
            return Claim(identity, self._take_overlapping(identity), epoch, writer=True, shared=shared)

    def borrow(self, identity: Identity) -> Claim:
        """A transfer attempt about to read ``identity`` as its source: takes its inventory out until it settles."""
        container = identity[0]
        with self._lock:
            return Claim(identity, self._entries.pop(identity, None), self._epochs.get(container, 0),
                         writer=False, shared=self._writers.get(container, 0) > 0)

    def settle(self, claim: Claim, inventory: CachedInventory | None) -> bool:
        """The attempt passed its verify: keeps ``inventory`` for the claimed container (a writer's), or returns
        the borrowed one; not when another step wrote the container meanwhile. Whether anything was kept."""
        if not claim.open:
            return False
        claim.open = False
        container = claim.identity[0]
        with self._lock:
            untouched = not claim.shared and self._epochs.get(container, 0) == claim.epoch
            if claim.writer:
                self._writers[container] -= 1
                if untouched and inventory is not None:
                    self._take_overlapping(claim.identity)
                    self._entries[claim.identity] = inventory
                    return True
                return False
            if untouched and claim.entry is not None and not self._writers.get(container) \
                    and claim.identity not in self._entries:
                self._entries[claim.identity] = claim.entry
                return True
            return False

    def abandon(self, claim: Claim) -> None:
        """The attempt failed: what it took stays out, and whatever it saw of the container is stale."""
        if not claim.open:
            return
        claim.open = False
        container = claim.identity[0]
        with self._lock:
            if claim.writer:
                self._writers[container] -= 1
            self._epochs[container] = self._epochs.get(container, 0) + 1
            self._take_overlapping(claim.identity)

    def drop(self, identity: Identity) -> None:
        """Something wrote ``identity`` without keeping its inventory (a rollback): forgets that container."""
        with self._lock:
            self._epochs[identity[0]] = self._epochs.get(identity[0], 0) + 1
            self._take_overlapping(identity)


def inventory_cache(ctx: StepContext) -> InventoryCache:
    """The run process's :class:`InventoryCache` (made on first use)."""
    with _CACHE_LOCK:
        cache = ctx.resources.get(INVENTORY_CACHE_KEY)
        if not isinstance(cache, InventoryCache):
            cache = ctx.resources[INVENTORY_CACHE_KEY] = InventoryCache()
    return cache


_CACHE_LOCK = threading.Lock()


@dataclass
class Reuse:
    """The kept inventories one listing may work from: ``source``/``destination`` (taken by the attempt, or
    peeked at by a plan). ``keep``: a destination listed afresh keeps what a later copy from it needs."""

    source: CachedInventory | None = None
    destination: CachedInventory | None = None
    keep: bool = False

    def source_inventory(self) -> dict[str, Compact] | None:
        """The source's blobs, when kept with what a copy needs (listed with metadata)."""
        return self.source.blobs if self.source is not None and self.source.metadata else None

    def destination_for(self, src: BlobStore) -> dict[str, Compact] | None:
        """The destination's blobs, when kept with what the diff against ``src`` compares (a source with
        versions needs the recorded ones: a listing with metadata)."""
        entry = self.destination
        if entry is None or (src.reports_versions and not entry.metadata):
            return None
        return entry.blobs

    def destination_metadata(self, src: BlobStore) -> bool:
        """Whether the destination inventory a diff against ``src`` works from holds metadata (a kept one as it
        was listed, a fresh listing when the source has versions)."""
        if self.destination is not None and self.destination_for(src) is not None:
            return self.destination.metadata
        return src.reports_versions

    def used(self, src: BlobStore) -> bool:
        return self.source_inventory() is not None or self.destination_for(src) is not None


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def redacted_names(ctx: StepContext, names: list[str]) -> str:
    """Blob names for a message, each by its label (:func:`~migrator.secrets.blob_label`), at most a screenful."""
    shown = ", ".join(blob_label(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# -- progress -------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Blobs and bytes done, rate and ETA, reported through ``ctx.progress`` at most once a second."""

    ctx: StepContext
    label: str
    total_blobs: int | None = None
    total_bytes: int | None = None
    blobs: int = 0
    bytes: int = 0
    bytes_sent: int = 0
    server_side: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, blobs: int = 0, bytes: int = 0, sent: int = 0, server_side: int = 0) -> None:
        with self._lock:
            self.blobs += blobs
            self.bytes += bytes
            self.bytes_sent += sent
            self.server_side += server_side
            now = time.monotonic()
            if now - self._last < 1.0:
                return
            self._last = now
        self.report()

    def message(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate_b, rate_n = self.bytes / elapsed, self.blobs / elapsed
        text = f"{self.label}: {self.blobs}"
        text += f"/{self.total_blobs} blobs" if self.total_blobs is not None else " blobs"
        text += f", {self.bytes / MiB:.1f}"
        text += f"/{self.total_bytes / MiB:.1f} MiB" if self.total_bytes is not None else " MiB"
        text += f", {rate_n:.0f} blobs/s"
        if self.bytes_sent:
            # a transfer rate of the bytes this process sent: a server-side copy sends none (the storage service
            # copies it), and its size over the time of a request is no rate at all
            text += f", {self.bytes_sent / elapsed / MiB:.1f} MiB/s"
        if self.total_blobs is not None and self.total_bytes is not None and (rate_b > 0 or rate_n > 0):
            left_n = (self.total_blobs - self.blobs) / rate_n if rate_n else 0.0
            left_b = (self.total_bytes - self.bytes) / rate_b if rate_b else 0.0
            text += f", ETA {max(left_n, left_b):.0f} s"
        return text

    def report(self) -> None:
        self.ctx.progress(self.message())


# -- copying one blob -----------------------------------------------------------------------------------------


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def block_ids(info: BlobInfo, block_size: int) -> list[str]:
    """Block ids for ``info``: equal length, and tied to the source version so stale blocks never match."""
    version = hashlib.sha256(f"{info.etag}|{info.size}|{info.last_modified}|{block_size}".encode()).hexdigest()
    count = max(1, -(-info.size // block_size))
    return [base64.b64encode(f"{version[:16]}-{i:06d}".encode()).decode() for i in range(count)]


@dataclass
class CopyResult:
    md5: bytes
    sent: int  # bytes this process uploaded (0 for a server-side copy)
    server_side: bool = False
    resumed_blocks: int = 0
    token: str | None = None  # the SOURCE_VERSION_KEY the copy recorded, if any
    size: int = 0  # the size copied (the source's, as read)


class _ChangedWhileRead(Exception):
    """The source's version after the read differs from the one listed: the bytes may be of neither."""


#: Reads of a source blob that keeps changing while it is read, before the copy is retried later.
_READS_PER_COPY = 3
#: Seconds before the first copy-status poll of a pending server-side copy (doubling up to copy_poll_interval).
_FIRST_COPY_POLL = 0.05


class BlobCopier:
    """Copies single blobs from ``src`` to ``dst`` as :func:`transfer` decides; thread-safe."""

    def __init__(self, ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> None:
        self.ctx = ctx
        self.params = params
        self.src = src
        self.dst = dst
        # Blocks in flight across all blobs: bounds memory to about concurrency x block_size.
        self._block_slots = threading.BoundedSemaphore(params.concurrency)
        self._block_pool = ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-block")

    def close(self) -> None:
        self._block_pool.shutdown(wait=True, cancel_futures=True)

    def copy(self, info: BlobInfo) -> CopyResult:
        p = self.params
        if p.server_side_copy and info.md5 is not None and isinstance(self.dst, AzureBlobStore):
            url = self.src.copy_source_url(info.name, into=self.dst)
            if url is not None:
                return self._server_side(info, url)
        for _ in range(_READS_PER_COPY):
            try:
                if self.dst.supports_blocks and info.size > p.large_blob_threshold:
                    return self._in_blocks(info)
                return self._streamed(info)
            except _ChangedWhileRead:
                fresh = self.src.info(info.name)
                if fresh is None:
                    raise PermanentError(f"blob {blob_label(info.name)} disappeared from "
                                         f"{self.src.describe()} while it was copied") from None
                info = fresh
        raise TransientError(f"blob {blob_label(info.name)} in {self.src.describe()} kept "
                             "changing while it was read", hint="it is being written to; the copy is retried")

    def _check_md5(self, info: BlobInfo, md5: bytes) -> None:
        if info.md5 is not None and md5 != info.md5:
            raise TransientError(
                f"blob {blob_label(info.name)} in {self.src.describe()}: the content read does "
                "not match its Content-MD5", hint="the source changed while it was copied; the copy is retried")

    def _token(self, info: BlobInfo, stream: BinaryIO, md5: bytes) -> str | None:
        """The version token to record with the copy (the version listed, confirmed after reading); raises
        :class:`_ChangedWhileRead` when the source changed since it was listed."""
        if info.version is None:
            return None
        if self.src.version_after_read(info.name, stream) != info.version:
            raise _ChangedWhileRead(info.name)
        if not self.src.trusts_version(info.version):
            return None  # changed a moment ago: a write later in the same timestamp tick would keep the version
        return source_token(info.version, md5)

    def _metadata(self, info: BlobInfo, token: str | None) -> Mapping[str, str]:
        """The source's metadata for the copy: from a store without versions as it is (a backup's copies carry
        the version recorded when the original was read), from one with versions with this read's token."""
        if not self.src.reports_versions:
            return info.metadata
        metadata = {k: v for k, v in info.metadata.items() if k != SOURCE_VERSION_KEY}
        if token is not None:
            metadata[SOURCE_VERSION_KEY] = token
        return metadata

    def _server_side(self, info: BlobInfo, url: str) -> CopyResult:
        status: str | None = self.dst.start_copy(info.name, url)
        if status == "success":
            # A synchronous copy carries the source's properties (Content-MD5 and metadata included) as they were
            # when it ran; verify compares them with what we recorded.
            return CopyResult(md5=info.md5 or b"", sent=0, server_side=True, size=info.size,
                              token=info.metadata.get(SOURCE_VERSION_KEY))
        # A pending copy is polled promptly at first (a copy within an account usually ends in milliseconds),
        # then less and less often, up to copy_poll_interval.
        delay = min(_FIRST_COPY_POLL, self.params.copy_poll_interval)
        while status == "pending":
            self.ctx.raise_if_cancelled()
            self.ctx.clock.sleep(delay)
            delay = min(delay * 2, self.params.copy_poll_interval)
            status, description = self.dst.copy_status(info.name)
        if status != "success":
            _, description = self.dst.copy_status(info.name)
            raise PermanentError(f"server-side copy of blob {blob_label(info.name)} into "
                                 f"{self.dst.describe()} ended {status}: {description or 'no reason given'}")
        copied = self.dst.info(info.name)
        if copied is None or copied.size != info.size or copied.md5 != info.md5:
            raise TransientError(f"server-side copy of blob {blob_label(info.name)} into "
                                 f"{self.dst.describe()} does not match the source (size or MD5)",
                                 hint="the source changed during the copy; retried")
        return CopyResult(md5=info.md5 or b"", sent=0, server_side=True, size=info.size,
                          token=info.metadata.get(SOURCE_VERSION_KEY))

    def _streamed(self, info: BlobInfo) -> CopyResult:
        if info.size <= self.params.large_blob_threshold:
            with self.src.open_read(info.name) as stream:
                data = stream.read()
                md5 = hashlib.md5(data, usedforsecurity=False).digest()
                token = self._token(info, stream, md5)
            self._check_md5(info, md5)
            self.dst.write(info.name, data, length=len(data), content_type=info.content_type,
                           metadata=self._metadata(info, token), md5=md5)
            return CopyResult(md5=md5, sent=len(data), token=token, size=len(data))
        # A large blob to a store without blocks (a folder): stream it through, hashing on the way. No version is
        # recorded (it would have to be written before the read confirms it); the copy is checked all the same.
        hashing = _HashingReader(self.src.open_read(info.name))
        with hashing:
            written = self.dst.write(info.name, hashing,  # type: ignore[arg-type]  # read() is all write uses
                                     length=info.size, content_type=info.content_type,
                                     metadata=self._metadata(info, None), md5=info.md5)
            md5 = hashing.digest.digest()
            self._token(info, hashing.stream, md5)
        self._check_md5(info, md5)
        return CopyResult(md5=written.md5 or md5, sent=info.size, size=info.size)

    def _in_blocks(self, info: BlobInfo) -> CopyResult:
        ids = block_ids(info, self.params.block_size)
        staged = self.dst.staged_blocks(info.name)
        digest = hashlib.md5(usedforsecurity=False)
        futures: list[Future[None]] = []
        sent = resumed = size = 0
        failure: list[BaseException] = []

        def stage(block_id: str, data: bytes) -> None:
            try:
                if not failure:
                    self.dst.stage_block(info.name, block_id, data)
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                self._block_slots.release()

        try:
            with self.src.open_read(info.name) as stream:
                for block_id in ids:
                    self.ctx.raise_if_cancelled()
                    if failure:
                        break
                    data = _read_exactly(stream, self.params.block_size)
                    digest.update(data)
                    size += len(data)
                    if staged.get(block_id) == len(data):
                        resumed += 1
                        continue
                    self._block_slots.acquire()
                    futures.append(self._block_pool.submit(stage, block_id, data))
                    sent += len(data)
                md5 = digest.digest()
                token = None if failure else self._token(info, stream, md5)
        finally:
            for future in futures:
                future.exception()  # wait for every block in flight, even when stopping
        if failure:
            raise failure[0]
        self._check_md5(info, md5)
        self.dst.commit_blocks(info.name, ids, content_type=info.content_type, metadata=self._metadata(info, token),
                               md5=md5)
        return CopyResult(md5=md5, sent=sent, resumed_blocks=resumed, token=token, size=size)


class _HashingReader:
    """Wraps a stream and hashes what is read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        return data

    def __enter__(self) -> _HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


# -- the shared transfer --------------------------------------------------------------------------------------


@dataclass
class Diff:
    """What a transfer would do; built while listing, so it is counted, not kept, for the copies."""

    to_copy: int = 0
    to_copy_bytes: int = 0
    unchanged: int = 0
    extra: list[str] = field(default_factory=list)  # at the destination only
    sample: list[str] = field(default_factory=list)


#: At most this many blobs to copy are kept from check for apply; beyond it apply lists the source again
#: (a first presync of a large tenant), so memory stays bounded.
SURVEY_LIMIT = 20_000


@dataclass
class Survey:
    """Both inventories as ``check`` read them, reused by ``apply`` and ``verify`` of the same attempt.

    The step instance keeps one only from its ``check`` to the end of that attempt: every attempt (and every
    resume) reads the world again.
    """

    pending: list[tuple[BlobInfo, Compact | None]]  # source blob, and what the destination has of it
    unchanged: int
    extra: list[str]  # at the destination only
    source: dict[str, Compact]  # the whole source inventory, for verify
    dst_listed: int = 0  # blobs the destination listing held
    to_copy: int = 0  # blobs (and bytes) to copy, counted even where ``pending`` is not kept
    to_copy_bytes: int = 0
    src_seconds: float = 0.0  # each listing timed on its own
    dst_seconds: float = 0.0
    #: The destination inventory as listed (or reused), unchanged: what a later step may reuse.
    destination: dict[str, Compact] = field(default_factory=dict)


@dataclass
class Attempt:
    """What one attempt of a transfer step learnt, passed from check to apply to verify."""

    survey: Survey | None = None
    source: dict[str, Compact] | None = None  # the source inventory apply worked from
    #: What apply wrote (name -> the copy) and deleted in this attempt; None until apply ran.
    written: dict[str, CopyResult] | None = None
    deleted: list[str] = field(default_factory=list)
    dst_listed: int = 0  # blobs in the destination listing this attempt worked from
    #: This attempt's holds on the run's inventory cache (taken in check, settled when verify passed).
    src_claim: Claim | None = None
    dst_claim: Claim | None = None
    keep: bool = False  # the destination's inventory is to be kept for later steps
    #: The destination inventory this attempt worked from, and whether it was listed with metadata.
    destination: dict[str, Compact] | None = None
    dst_metadata: bool = False
    reused: bool = False  # a side came from the cache instead of a listing
    #: What the destination holds once verify passed, to keep for later steps.
    remember: CachedInventory | None = None
    #: A sync with ``also_delete_from``: this attempt's hold on that container's kept inventory, the blobs it
    #: deleted there, and those an earlier run of the step deleted at the destination but left there (check).
    also_claim: Claim | None = None
    also_deleted: list[str] = field(default_factory=list)
    also_left: list[str] | None = None

    def reuse(self) -> Reuse:
        return Reuse(self.src_claim.entry if self.src_claim else None,
                     self.dst_claim.entry if self.dst_claim else None, keep=self.keep)

    def abandon(self, ctx: StepContext) -> None:
        """Lets go of what a failed (or superseded) attempt took from the cache."""
        for claim in (self.src_claim, self.dst_claim, self.also_claim):
            if claim is not None:
                inventory_cache(ctx).abandon(claim)

    def settle(self, ctx: StepContext) -> None:
        """The attempt passed: leaves the destination's inventory (and the borrowed source's) for later steps."""
        cache = inventory_cache(ctx)
        if self.src_claim is not None:
            cache.settle(self.src_claim, None)
        if self.dst_claim is not None:
            cache.settle(self.dst_claim, self.remember if self.keep else None)
        if self.also_claim is not None:
            # What was kept of the other container, less what this attempt deleted there (and proved gone).
            kept_there = self.also_claim.entry
            if kept_there is not None:
                for name in self.also_deleted:
                    kept_there.blobs.pop(name, None)
            cache.settle(self.also_claim, kept_there)


def survey(ctx: StepContext, src: BlobStore, dst: BlobStore, *, limit: int | None = SURVEY_LIMIT,
           reuse: Reuse | None = None) -> Survey | None:
    """Both inventories compared (listed side by side, or reused: ``reuse``); None as soon as more than ``limit``
    blobs need copying (not kept then). With ``limit=None`` the blobs to copy are counted, not kept (the dry-run's
    plan). Neither inventory is changed (a reused one stays as the cache holds it)."""
    listings = diff_listings(src, dst, reuse)
    inventory = listings.destination()
    dst_listed = len(inventory)
    source: dict[str, Compact] = {}
    pending: list[tuple[BlobInfo, Compact | None]] = []
    unchanged = to_copy = to_copy_bytes = 0
    for info in listings.source:
        ctx.raise_if_cancelled()
        have = inventory.get(info.name)
        source[info.name] = compact(info)
        if have is not None and same_content(info, have):
            unchanged += 1
            continue
        to_copy += 1
        to_copy_bytes += info.size
        if limit is None:
            continue
        pending.append((info, have))
        if len(pending) > limit:
            return None
    return Survey(pending=pending, unchanged=unchanged, extra=sorted(inventory.keys() - source.keys()),
                  source=source, dst_listed=dst_listed, to_copy=to_copy, to_copy_bytes=to_copy_bytes,
                  src_seconds=listings.src_seconds, dst_seconds=listings.dst_seconds, destination=inventory)


def _open_pair(ctx: StepContext, params: TransferParams | VerifyParams, *,
               confirm: bool = True) -> tuple[BlobStore, BlobStore]:
    """Both stores; ``confirm`` first proves both containers answer (skipped when check just did)."""
    src = open_blob_store(params.source, ctx, concurrency=params.concurrency)
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency,
                          create=params.destination.kind == "folder" and not ctx.dry_run)
    if confirm:
        _confirm(src, dst)
    return src, dst


def _confirm(src: BlobStore, dst: BlobStore) -> None:
    """Proves both containers answer: a missing container or a wrong key fails here, before anything is written."""
    if isinstance(dst, AzureBlobStore):
        dst.ensure_container()
    if isinstance(src, AzureBlobStore):
        src.ensure_container()


def _claim(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore, attempt: Attempt) -> None:
    """At the start of an attempt (not in a dry-run): takes both containers' kept inventories out of the run's
    cache (the destination's as its writer), so that any failure of the attempt drops them."""
    cache = inventory_cache(ctx)
    dst_id, src_id = dst.inventory_identity(), src.inventory_identity()
    if dst_id is not None:
        attempt.dst_claim = cache.claim(dst_id)
        attempt.keep = params.reuse_listing
        if not params.reuse_listing:
            attempt.dst_claim.entry = None  # taken out (this step writes the container) but not used
    if src_id is not None and src_id != dst_id and params.reuse_listing:
        attempt.src_claim = cache.borrow(src_id)
    also = _also_store(ctx, params)
    also_id = also.inventory_identity() if also is not None else None
    if also_id is not None:
        # Written too (deletions): held like the destination, and what is kept of it is updated, not dropped.
        attempt.also_claim = cache.claim(also_id)
        if not params.reuse_listing:
            attempt.also_claim.entry = None
    attempt.reused = attempt.reuse().used(src)


def _also_store(ctx: StepContext, params: TransferParams) -> BlobStore | None:
    """The store a sync deletes what the source lost from as well (``also_delete_from``), or None."""
    endpoint = params.also_delete_from if isinstance(params, SyncParams) else None
    return open_blob_store(endpoint, ctx, concurrency=params.concurrency) if endpoint is not None else None


def _left_in_also(ctx: StepContext, params: TransferParams, also: BlobStore, attempt: Attempt,
                  skip: set[str]) -> list[str]:
    """Blobs this step deleted at the destination earlier (the source had lost them) that ``also`` still holds:
    a step run before with no ``also_delete_from``, taken up again (``resume --rerun``). Looked up one by one
    (they are few), or in the kept inventory of ``also``; ``skip``: those this attempt deletes anyway."""
    names = sorted(ctx.items.keys("deleted") - skip)
    if not names:
        return []
    kept_there = attempt.also_claim.entry if attempt.also_claim is not None else None
    if kept_there is not None:
        return [name for name in names if name in kept_there.blobs]
    with ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-verify") as pool:
        found = list(pool.map(also.info, names))
    return [name for name, info in zip(names, found, strict=True) if info is not None]


def _peek(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> Reuse:
    """What a plan may work from: the kept inventories as they are (a plan inside a run process; none in a
    dry-run of its own), left in the cache."""
    if not params.reuse_listing:
        return Reuse()
    cache = ctx.resources.get(INVENTORY_CACHE_KEY)
    if not isinstance(cache, InventoryCache):
        return Reuse()
    src_id, dst_id = src.inventory_identity(), dst.inventory_identity()
    return Reuse(cache.peek(src_id) if src_id != dst_id else None, cache.peek(dst_id))


def _check_names_fit(ctx: StepContext, src: BlobStore, dst: BlobStore, names: Iterator[str] | None = None) -> None:
    """A folder destination must be able to hold every source name: refuse before the first write."""
    if isinstance(dst, FolderBlobStore):
        for name in names if names is not None else (info.name for info in src.list(metadata=False)):
            check_relative_name(name, where=dst.describe())


def _retrying(params: TransferParams, ctx: StepContext) -> Retrying:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        return float(hinted) if hinted else min(0.5 * 2 ** (state.attempt_number - 1), 15.0)

    return Retrying(retry=retry_if_exception(lambda e: is_retryable(e) and not isinstance(e, Cancelled)),
                    stop=stop_after_attempt(params.attempts_per_blob), wait=wait,
                    sleep=ctx.clock.sleep, reraise=True)


def _finished_earlier(src: BlobStore, record: ItemRecord | None, info: BlobInfo, have: Compact | None) -> bool:
    """Whether an earlier attempt of this step copied ``info`` and the source has not changed since, although
    the inventory diff alone cannot tell (a source without MD5 whose copy is from the same second).

    A source with version tokens never needs this: a copy whose recorded version is current is unchanged for
    the diff already, and one without (or with another) may be of other content of the same size.
    """
    if record is None or have is None or src.reports_versions:
        return False
    if not (record.bytes == info.size == have.size and b64(have.md5) == record.checksum):
        return False
    return info.md5 is None or b64(info.md5) == record.checksum


def transfer(ctx: StepContext, params: TransferParams, *, label: str,
             extra: Literal["delete", "keep"] = "keep", attempt: Attempt | None = None) -> dict[str, Any]:
    """Copies what differs from source to destination; returns the step outputs.

    With a :class:`Survey` from this attempt's check (in ``attempt``) it works from that; otherwise it lists
    both sides itself (or takes what the attempt holds of the run's kept inventories), streaming the source.
    Either way ``attempt`` ends up holding the source inventory, the destination's, and what was written and
    deleted, for verify.
    """
    attempt = attempt if attempt is not None else Attempt()
    seen = attempt.survey
    attempt.survey = None
    src, dst = _open_pair(ctx, params, confirm=seen is None)
    _check_names_fit(ctx, src, dst, iter(seen.source) if seen is not None else None)
    done_before = {r.key: r for r in ctx.items.iter("done")}
    diff = Diff()
    progress = Progress(ctx, label)
    copier = BlobCopier(ctx, params, src, dst)
    retrying = _retrying(params, ctx)
    slots = threading.BoundedSemaphore(params.concurrency * 2)
    errors: list[BaseException] = []
    skipped_by_checkpoint = 0
    pool = ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-copy")
    source: dict[str, Compact] = {}
    written: dict[str, CopyResult] = {}
    vanished: list[str] = []
    attempt.written, attempt.deleted, attempt.also_deleted = written, [], []
    from_cache = attempt.reuse().source_inventory() is not None
    also = _also_store(ctx, params)

    def listed() -> Iterator[tuple[BlobInfo, Compact | None]]:
        """Source blobs not already in place, each with what the destination has of it."""
        if seen is not None:
            diff.unchanged = seen.unchanged
            attempt.dst_listed = seen.dst_listed
            attempt.destination = seen.destination
            source.update(seen.source)
            yield from seen.pending
            return
        reuse = attempt.reuse()
        listings = diff_listings(src, dst, reuse)
        inventory = attempt.destination = listings.destination()
        attempt.dst_listed = len(inventory)
        attempt.dst_metadata = reuse.destination_metadata(src)
        for info in listings.source:
            have = inventory.get(info.name)
            source[info.name] = compact(info)
            if have is not None and same_content(info, have):
                diff.unchanged += 1
                continue
            yield info, have

    def work(info: BlobInfo, have: Compact | None) -> None:
        try:
            if errors:
                return
            try:
                result = retrying(copier.copy, info)
            except Exception as exc:
                if from_cache or not _gone_from(src, info.name, exc):
                    raise
                gone(info.name, have)
                return
            written[info.name] = result
            ctx.items.record(info.name, "done", bytes=info.size, checksum=b64(result.md5),
                             detail={"created": have is None, "server_side": result.server_side,
                                     "resumed_blocks": result.resumed_blocks})
            progress.add(blobs=1, bytes=info.size, sent=result.sent, server_side=int(result.server_side))
        except BaseException as exc:
            errors.append(_stale_source(ctx, src, info, exc) if from_cache else exc)
        finally:
            slots.release()

    def gone(name: str, have: Compact | None) -> None:
        """A source blob listed a moment ago and gone when read (deleted or renamed meanwhile): a deletion, not an
        error. A step that removes what the source lost removes its copy; any other records it and goes on (the
        next delta sync removes the copy, if there is one)."""
        vanished.append(name)
        if extra == "delete" and have is not None:
            delete_everywhere(name)
            return
        earlier = done_before.get(name)
        created = earlier is not None and isinstance(earlier.detail, Mapping) and bool(earlier.detail.get("created"))
        ctx.items.record(name, "vanished", detail={"created": True} if created else None)

    def delete_everywhere(name: str) -> None:
        """Deletes a blob the source lost: first where it was copied on from the destination (``also``), so that
        a stop between the two leaves the destination's copy for the next attempt's diff to find again."""
        if also is not None:
            also.delete(name)
            attempt.also_deleted.append(name)
        dst.delete(name)
        attempt.deleted.append(name)
        ctx.items.record(name, "deleted")

    def remove(name: str, everywhere: bool = True) -> None:
        try:
            if errors:
                return
            if everywhere:
                delete_everywhere(name)
            elif also is not None:
                also.delete(name)
                attempt.also_deleted.append(name)
        except BaseException as exc:
            errors.append(exc)
        finally:
            slots.release()

    deleting = False
    try:
        for info, have in listed():
            ctx.raise_if_cancelled()
            if errors:
                break
            if _finished_earlier(src, done_before.get(info.name), info, have):
                skipped_by_checkpoint += 1
                continue
            diff.to_copy += 1
            diff.to_copy_bytes += info.size
            slots.acquire()
            pool.submit(work, info, have)
        progress.total_blobs = diff.to_copy
        progress.total_bytes = diff.to_copy_bytes
        ctx.items.set_total(items=diff.to_copy, bytes=diff.to_copy_bytes)
        diff.extra = seen.extra if seen is not None else sorted((attempt.destination or {}).keys() - source.keys())
        deleting = bool(diff.extra) and extra == "delete" and not errors
        if deleting:
            for name in diff.extra:
                ctx.raise_if_cancelled()
                if errors:
                    break
                slots.acquire()
                pool.submit(remove, name)
        if also is not None and not errors:
            if attempt.also_left is None:
                attempt.also_left = _left_in_also(ctx, params, also, attempt,
                                                  {*diff.extra, *attempt.also_deleted})
            for name in attempt.also_left:
                ctx.raise_if_cancelled()
                if errors:
                    break
                slots.acquire()
                pool.submit(remove, name, False)
    finally:
        pool.shutdown(wait=True)
        copier.close()
        ctx.items.flush()
    if errors:
        raise _first_error(errors)
    ctx.raise_if_cancelled()
    for name in vanished:
        source.pop(name, None)
    attempt.source = source
    if vanished:
        ctx.event("blobs.vanished", f"{len(vanished)} source blob(s) were gone when read (deleted or renamed since "
                                    "they were listed): taken as deleted", count=len(vanished))
    if diff.extra and not deleting:
        ctx.event("blobs.extra", f"{len(diff.extra)} blob(s) in {dst.describe()} have no source; kept",
                  count=len(diff.extra))
    progress.report()
    return {
        "count": diff.unchanged + diff.to_copy + skipped_by_checkpoint - len(vanished),
        "copied": progress.blobs,
        "bytes_copied": progress.bytes,
        "bytes_sent": progress.bytes_sent,
        "server_side": progress.server_side,
        "unchanged": diff.unchanged + skipped_by_checkpoint,
        "deleted": len(attempt.deleted),
        "also_deleted": len(attempt.also_deleted),
        "vanished": len(vanished),
        "kept_without_source": len(diff.extra) if extra == "keep" else 0,
    }


def _gone_from(src: BlobStore, name: str, exc: Exception) -> bool:
    """Whether a copy failed because its source blob is gone since it was listed: the error is not worth a retry
    and the source no longer has the blob."""
    if is_retryable(exc) or isinstance(exc, Cancelled):
        return False
    try:
        return src.info(name) is None
    except Exception:
        return False


class StaleInventory(TransientError):
    """A copy source is not as the inventory kept from an earlier step had it: something outside this run changed
    the container. Retried by the step, whose next attempt lists again."""


def _stale_source(ctx: StepContext, src: BlobStore, info: BlobInfo, exc: BaseException) -> BaseException:
    """``exc`` of a copy whose source blob came from a kept inventory: a :class:`StaleInventory` when the blob is
    gone or differs now (the attempt fails and its retry lists the source), else ``exc`` itself."""
    if not isinstance(exc, Exception) or isinstance(exc, Cancelled):
        return exc
    try:
        now = src.info(info.name)
    except Exception:
        return exc
    if now is not None and now.size == info.size and now.md5 == info.md5:
        return exc
    stale = StaleInventory(f"blob {blob_label(info.name)} is "
                           f"{'gone from' if now is None else 'not the same in'} {src.describe()} since an earlier "
                           f"step of this run listed it (changed outside the run)",
                           hint="the step is tried again and lists the container afresh")
    stale.__cause__ = exc
    return stale


def _first_error(errors: list[BaseException]) -> BaseException:
    # A permanent error explains more than the transient ones it may have caused in sibling workers.
    for exc in errors:
        if isinstance(exc, MigratorError) and not exc.retryable:
            return exc
    return errors[0]


def _plan(ctx: StepContext, params: TransferParams, *, extra: str, what: str, seen: Survey | None = None) -> PlanResult:
    """What a transfer would do: from ``seen`` (what check just read) when given, else from fresh listings (or the
    inventories the run process keeps, for a plan inside a run)."""
    src, dst = _open_pair(ctx, params, confirm=seen is None)
    _check_names_fit(ctx, src, dst, iter(seen.source) if seen is not None else None)
    if seen is None:
        seen = survey(ctx, src, dst, limit=None, reuse=_peek(ctx, params, src, dst))
        assert seen is not None
    diff = Diff(to_copy=seen.to_copy, to_copy_bytes=seen.to_copy_bytes, unchanged=seen.unchanged, extra=seen.extra)
    source = seen.source
    sides = ListingSides(src_kind=params.source.kind, src_count=len(source), src_seconds=seen.src_seconds,
                         dst_kind=params.destination.kind, dst_count=seen.dst_listed, dst_seconds=seen.dst_seconds)
    will_hold = _planned_holdings(ctx).get(params.source.cache_key())
    done_now = not diff.to_copy and not (diff.extra and extra == "delete")  # what check finds now
    estimate, diff, projected = transfer_estimate(params, diff, sides, source, will_hold,
                                                  reused=_reused_in_run(ctx, params, src, dst))
    # What the destination holds once this step ran, for the steps after it that read it (a put live from the
    # backup this presync fills), and that the run keeps its inventory for them.
    _planned_holdings(ctx)[params.destination.cache_key()] = projected
    _note_kept(ctx, params, src, dst)
    changes = []
    if diff.to_copy:
        changes.append(f"copy {diff.to_copy} blob(s), {diff.to_copy_bytes} bytes, from {src.describe()} to "
                       f"{dst.describe()}")
    if diff.extra and extra == "delete":
        also = _also_store(ctx, params)
        changes.append(f"delete {len(diff.extra)} blob(s) from {dst.describe()} that are gone at the source"
                       + (f", and from {also.describe()} where it has them" if also is not None else ""))
    details: dict[str, Any] = {"unchanged": diff.unchanged, "to_copy": diff.to_copy, "extra": len(diff.extra)}
    if done_now:
        # The dry-run counts a step its check finds done as free, yet the run checks it again, and an earlier step
        # may still give it work (a presync filling its source): what the run spends on it.
        details["run_seconds"] = estimate.seconds
    if not changes:
        result = PlanResult.nothing(f"{what}: all {diff.unchanged} blob(s) already in place", **details)
        # Nothing to copy, yet the run lists both sides (check).
        result.estimate = estimate
        if diff.extra:
            result.reason += f"; {len(diff.extra)} destination blob(s) without a source are kept"
        return result
    return PlanResult(changes=changes, reason=f"{what}: {diff.unchanged} blob(s) already in place",
                      estimate=estimate, details=details)


#: Seconds per blob of listing an Azure container, for a container the plan cannot time with blobs in it (a new
#: cloud container a presync fills only in the run): a local storage emulator on 2 cores lists 1,000 blobs
#: (one page) in 60-100 ms, 5,000 in 400-500 ms (its own CPU, serializing the page, is most of it).
_ASSUMED_AZURE_LIST_SECONDS_PER_BLOB = 85e-6
#: The same for a folder tree (a directory walk and a stat per file): 1,000 files in 13-16 ms.
_ASSUMED_FOLDER_LIST_SECONDS_PER_BLOB = 15e-6
#: A listing of fewer blobs than this times the request more than the blobs: the assumed rate is used instead.
_MIN_LISTED_TO_MEASURE = 100
#: Source blobs ``blobs.verify``'s plan reads and hashes, as the run does, to time hashing.
HASH_SAMPLE = 48
_PLANNED_KEY = "blobs.plan.will_hold"


_PLANNED_KEPT_KEY = "blobs.plan.kept"


def _planned_kept(ctx: StepContext) -> dict[Identity, bool]:
    """Container -> whether with metadata: the inventories the transfer steps planned so far leave in the run's
    cache for the steps after them (the dry-run's own notes, in ``ctx.resources``; nothing is kept in a plan)."""
    kept = ctx.resources.get(_PLANNED_KEPT_KEY)
    if not isinstance(kept, dict):
        kept = ctx.resources[_PLANNED_KEPT_KEY] = {}
    return kept


def _reused_in_run(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> tuple[bool, bool]:
    """Whether the run will work from a kept inventory of the source, and of the destination, instead of listing
    it: one is kept now (a plan inside the run process), or a transfer step planned before this one leaves it."""
    if not params.reuse_listing:
        return False, False
    now = _peek(ctx, params, src, dst)
    notes = _planned_kept(ctx)
    src_id, dst_id = src.inventory_identity(), dst.inventory_identity()
    src_kept = now.source_inventory() is not None or (
        src_id is not None and src_id != dst_id and notes.get(src_id) is True)
    dst_kept = now.destination_for(src) is not None or (
        dst_id is not None and dst_id in notes and (notes[dst_id] or not src.reports_versions))
    return src_kept, dst_kept


def _note_kept(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> None:
    """After planning a transfer: the run keeps its destination's inventory (with ``reuse_listing``), and no
    longer any other of that container (it writes there)."""
    dst_id = dst.inventory_identity()
    if dst_id is None:
        return
    notes = _planned_kept(ctx)
    before = notes.get(dst_id, False)
    for other in [k for k in notes if k[0] == dst_id[0] and _overlap(k[1], dst_id[1])]:
        del notes[other]
    if params.reuse_listing:
        notes[dst_id] = src.reports_versions or before


def _planned_holdings(ctx: StepContext) -> dict[str, tuple[int, int]]:
    """Endpoint -> (blobs, bytes) it will hold once the transfer steps planned so far ran (the dry-run's own
    notes, in ``ctx.resources``; a container a presync fills is empty while the plan runs)."""
    holdings = ctx.resources.get(_PLANNED_KEY)
    if not isinstance(holdings, dict):
        holdings = ctx.resources[_PLANNED_KEY] = {}
    return holdings


@dataclass(frozen=True)
class ListingSides:
    """Both listings as the plan timed them: kind of store, blobs listed, seconds."""

    src_kind: str
    src_count: int
    src_seconds: float
    dst_kind: str
    dst_count: int
    dst_seconds: float

    def per_blob(self, side: Literal["src", "dst"]) -> tuple[float, str]:
        """Seconds per blob of listing ``side``: timed on that side, or on the other side when it is the same
        kind of store, when either held enough blobs; else the assumed rate of its kind."""
        kind = self.src_kind if side == "src" else self.dst_kind
        candidates = [(self.src_count, self.src_seconds, "source"), (self.dst_count, self.dst_seconds,
                                                                      "destination")]
        if side == "dst":
            candidates.reverse()
        for count, seconds, name in candidates:
            same_kind = (self.src_kind if name == "source" else self.dst_kind) == kind
            if same_kind and count >= _MIN_LISTED_TO_MEASURE:
                return seconds / count, f"{seconds / count * 1e6:.0f} us a blob (timed on the {name})"
        rate = _ASSUMED_AZURE_LIST_SECONDS_PER_BLOB if kind == "azure" else _ASSUMED_FOLDER_LIST_SECONDS_PER_BLOB
        return rate, f"{rate * 1e6:.0f} us a blob (assumed for {kind})"


def listing_seconds(count: int, measured_count: int, measured_seconds: float, per_blob: float) -> float:
    """One listing of ``count`` blobs: the timed listing, plus the blobs it did not hold at ``per_blob``."""
    return measured_seconds + max(count - measured_count, 0) * per_blob


#: Seconds per blob ``verify`` reads back (Get Blob Properties, ``concurrency`` at a time): a local storage emulator
#: on 2 cores answers 50 in 40-80 ms.
_ASSUMED_READ_BACK_SECONDS = 1.2e-3


def listings_overlap(source: BlobEndpoint, destination: BlobEndpoint) -> bool:
    """Whether the two listings of a diff, run side by side, cost about the longer one: different services (a
    folder walk beside a storage listing, two storage accounts). Two containers of one account share the service,
    and two folder walks this process's CPU: they cost their sum."""
    if source.kind != destination.kind:
        return True
    if source.kind == "folder" or source.account_url is None or destination.account_url is None:
        return False
    return source.account_url.rstrip("/") != destination.account_url.rstrip("/")


def transfer_estimate(params: TransferParams, diff: Diff, sides: ListingSides, source: Mapping[str, Compact],
                      will_hold: tuple[int, int] | None = None, *,
                      reused: tuple[bool, bool] = (False, False)) -> tuple[Estimate, Diff, tuple[int, int]]:
    """Seconds of a transfer in the run, the diff it would work from, and the blobs and bytes the destination
    then holds.

    Listings, counted as the step makes them: ``check`` lists the source and the destination side by side (the
    longer of the two where they are different services, else their sum: :func:`listings_overlap`), ``apply``
    works from what check read (it lists both again only beyond :data:`SURVEY_LIMIT` blobs to copy), and
    ``verify`` reads back each blob copied (:func:`reads_back`, at :data:`_ASSUMED_READ_BACK_SECONDS` each) or,
    beyond that share of the destination, lists it once more. Each listing is timed on its side now and projected
    to the
    blobs that side will hold: a source an earlier step of this plan fills (``will_hold``) holds what that step
    leaves there; a destination a presync before this step fills (``planned_change``, the destination lacking
    more than that share) holds the whole source. Then only the expected delta is copied: that share of the
    source, or, with ``planned_recent_hours``, the share modified that recently when larger. A side the run takes
    from the inventory an earlier step of it keeps (``reused``: source, destination) is not listed at all.
    """
    src_count, src_bytes = len(source), sum(c.size for c in source.values())
    parts = []
    if will_hold is not None and will_hold[0] > src_count:
        # An earlier step of this plan fills the source: the transfer copies what the destination then lacks.
        lacking = max(will_hold[0] - diff.unchanged, 0)
        diff = Diff(to_copy=lacking, to_copy_bytes=max(will_hold[1] - (src_bytes - diff.to_copy_bytes), 0),
                    unchanged=diff.unchanged, extra=diff.extra)
        src_count, src_bytes = will_hold
        parts.append(f"the source will hold {src_count} blob(s) after the steps before")
    blobs, nbytes = diff.to_copy, diff.to_copy_bytes
    dst_before, dst_after = sides.dst_count, sides.dst_count + blobs
    if params.planned_change is not None and src_count and blobs > params.planned_change * src_count:
        share = params.planned_change
        how = f"{share:.0%} expected to change after the presync"
        if params.planned_recent_hours is not None:
            since = time.time() - params.planned_recent_hours * 3600
            recent = sum(1 for c in source.values() if c.last_modified is not None and c.last_modified >= since)
            if recent / src_count > share:
                share = recent / src_count
                how = f"{share:.0%} modified in the last {params.planned_recent_hours:g} h"
        blobs, nbytes = math.ceil(share * src_count), round(share * src_bytes)
        dst_before = dst_after = max(sides.dst_count, src_count)  # the presync fills it before this step runs
        parts.append(f"delta only: {how} ({blobs} of {src_count} blob(s))")
    src_rate, src_how = sides.per_blob("src")
    dst_rate, dst_how = sides.per_blob("dst")
    # check lists both sides (apply again beyond SURVEY_LIMIT), verify reads back the copies or lists once more.
    again = 2 if blobs > SURVEY_LIMIT else 1
    src_listing = 0.0 if reused[0] else listing_seconds(src_count, sides.src_count, sides.src_seconds, src_rate)
    dst_listing = 0.0 if reused[1] else listing_seconds(dst_before, sides.dst_count, sides.dst_seconds, dst_rate)
    overlap = listings_overlap(params.source, params.destination)
    check = max(src_listing, dst_listing) if overlap else src_listing + dst_listing
    if reads_back(blobs, dst_after):
        verify, verify_how = blobs * _ASSUMED_READ_BACK_SECONDS, f"{blobs} copies read back"
    else:
        verify = listing_seconds(dst_after, sides.dst_count, sides.dst_seconds, dst_rate)
        verify_how = f"{dst_after} destination blob(s) listed again"
    listings = again * check + verify
    seconds = listings + blobs / _ASSUMED_BLOBS_PER_S + nbytes / _ASSUMED_BYTES_PER_S
    src_what = "kept by an earlier step: not listed" if reused[0] else f"at {src_how}"
    dst_what = "kept by an earlier step: not listed" if reused[1] else f"at {dst_how}"
    basis = (f"listings {listings:.2f} s: {again} x {src_count} source blob(s) {src_what} "
             f"{'beside' if overlap else 'and'} {dst_before} destination blob(s) {dst_what} (timed now: "
             f"{sides.src_count} and {sides.dst_count} blob(s) in {sides.src_seconds * 1000:.0f} and "
             f"{sides.dst_seconds * 1000:.0f} ms); verify {verify:.2f} s: {verify_how}")
    basis = "; ".join([*parts, basis])
    basis += f"; copies at an assumed {_ASSUMED_BLOBS_PER_S:.0f} blobs/s and {_ASSUMED_BYTES_PER_S / MiB:.0f} MiB/s"
    return Estimate(seconds=seconds, items=blobs, bytes=nbytes, basis=basis), diff, (dst_after, src_bytes)


def _check(ctx: StepContext, params: TransferParams, *, extra: str, attempt: Attempt) -> CheckResult:
    """Done when nothing is left to copy (or delete). Keeps what it read in ``attempt`` for apply and verify.

    In a run it first takes both containers' kept inventories out of the run's cache (:func:`_claim`) and works
    from them; a dry-run only looks at them.
    """
    attempt.survey = attempt.source = None
    src, dst = _open_pair(ctx, params, confirm=False)
    if ctx.dry_run:
        reuse = _peek(ctx, params, src, dst)
    else:
        _claim(ctx, params, src, dst, attempt)
        reuse = attempt.reuse()
    _confirm(src, dst)
    seen = survey(ctx, src, dst, reuse=reuse)
    attempt.dst_metadata = reuse.destination_metadata(src)
    if seen is None:
        return CheckResult(False, f"more than {SURVEY_LIMIT} blob(s) still to copy to {dst.describe()}")
    attempt.survey = seen
    attempt.source = seen.source
    attempt.dst_listed = seen.dst_listed
    attempt.destination = seen.destination
    if seen.pending:
        return CheckResult(False, f"{len(seen.pending)} blob(s), for example "
                                  f"{blob_label(seen.pending[0][0].name)}, still to copy to "
                                  f"{dst.describe()}")
    if seen.extra and extra == "delete":
        return CheckResult(False, f"{len(seen.extra)} blob(s) to delete at {dst.describe()}")
    also = _also_store(ctx, params)
    if also is not None:
        attempt.also_left = _left_in_also(ctx, params, also, attempt, set(seen.extra))
        if attempt.also_left:
            return CheckResult(False, f"{len(attempt.also_left)} blob(s) the source lost still to delete at "
                                      f"{also.describe()}")
    # Nothing for apply to do: the survey stays for the dry-run's plan (apply, which then does not run, would
    # drop it). In a run this listing is the proof, so the destination's inventory is kept as it is now.
    if not ctx.dry_run:
        attempt.remember = CachedInventory(seen.destination, attempt.dst_metadata)
        attempt.settle(ctx)
    return CheckResult(True, f"all {seen.unchanged} blob(s) already in place at {dst.describe()}",
                       outputs={"count": seen.unchanged, "copied": 0, "bytes_copied": 0, "bytes_sent": 0,
                                "server_side": 0, "unchanged": seen.unchanged, "deleted": 0, "also_deleted": 0,
                                "vanished": 0,
                                "kept_without_source": 0 if extra == "delete" else len(seen.extra)})


#: ``verify`` of a transfer reads back each blob ``apply`` wrote or deleted (Get Blob Properties, ``concurrency``
#: at a time) while they are at most this share of the destination, and lists the destination once more beyond:
#: one properties read costs about as much as listing 10-25 blobs (on Azure and on a local emulator alike).
VERIFY_BY_PROPERTIES_SHARE = 0.05


def reads_back(changed: int, destination_blobs: int) -> bool:
    """Whether verify reads back ``changed`` blobs one by one rather than listing ``destination_blobs``."""
    return changed <= VERIFY_BY_PROPERTIES_SHARE * destination_blobs


def verify_written(ctx: StepContext, params: TransferParams, written: Mapping[str, CopyResult],
                   deleted: list[str]) -> tuple[list[str], dict[str, BlobInfo | None]]:
    """Each blob this attempt wrote, read back: there, with the size, Content-MD5 and recorded source version
    of the copy; and each blob it deleted, gone. The blobs ``check`` found in place were proven by its listing.
    Returns the differences and what was read back (None: not there)."""
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency)
    names = [*written, *deleted]
    with ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-verify") as pool:
        found = list(pool.map(dst.info, names))
    missing: list[str] = []
    extra: list[str] = []
    size: list[str] = []
    content: list[str] = []
    for name, have in zip(names, found, strict=True):
        want = written.get(name)
        if want is None:
            if have is not None:
                extra.append(name)
        elif have is None:
            missing.append(name)
        elif have.size != want.size:
            size.append(name)
        elif have.md5 != want.md5 or (want.token is not None and have.metadata.get(SOURCE_VERSION_KEY) != want.token):
            content.append(name)
    return _problems(ctx, missing, extra, size, content, []), dict(zip(names, found, strict=True))


def verify_transfer(ctx: StepContext, params: TransferParams, source: dict[str, Compact],
                    written: Mapping[str, CopyResult] | None = None, *, metadata: bool = False,
                    keep: bool = False) -> tuple[list[str], dict[str, Compact]]:
    """Differences between the destination, listed afresh once, and the source inventory this attempt used;
    and that listing (with metadata when the source has versions, or ``metadata``; ``keep``: as a later step
    reuses it).

    Sizes always. A blob this attempt wrote must carry the Content-MD5 of its copy; any other must hold the
    source's content by the diff's own rule (:func:`same_content`: the same MD5, or the current source version
    recorded with its MD5), or, for a source without either, be what an earlier attempt of this step recorded
    having copied. Reading every source blob without an MD5 again is ``blobs.verify``'s job.
    """
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency)
    src = open_blob_store(params.source, ctx, concurrency=params.concurrency)
    inventory = destination_inventory(dst, metadata=src.reports_versions or metadata, keep=keep)
    written = written or {}
    missing: list[str] = []
    size: list[str] = []
    content: list[str] = []
    done: dict[str, ItemRecord] | None = None  # read once, and only when needed
    for name, want in source.items():
        have = inventory.get(name)
        copy = written.get(name)
        if have is None:
            missing.append(name)
        elif have.size != want.size:
            size.append(name)
        elif copy is not None:
            if have.md5 != copy.md5:
                content.append(name)
        elif same_content(want, have):
            continue
        elif want.md5 is not None:
            content.append(name)
        else:
            if done is None:
                done = {r.key: r for r in ctx.items.iter("done")}
            record = done.get(name)
            if record is None or record.checksum is None or record.bytes != want.size \
                    or b64(have.md5) != record.checksum:
                content.append(name)
    return _problems(ctx, missing, sorted(inventory.keys() - source.keys()), size, content, []), inventory


def _problems(ctx: StepContext, missing: list[str], extra: list[str], size: list[str], content: list[str],
              props: list[str]) -> list[str]:
    problems = []
    for label, names in (("missing at the destination", missing), ("only at the destination", extra),
                         ("size differs", size), ("MD5 differs", content),
                         ("content type or metadata differ", props)):
        if names:
            problems.append(f"{len(names)} {label}: {redacted_names(ctx, sorted(names))}")
    return problems


def _compensate(ctx: StepContext, params: TransferParams) -> None:
    """Deletes the blobs this run created at the destination; overwritten or deleted ones cannot come back."""
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency)
    identity = dst.inventory_identity()
    if identity is not None:
        inventory_cache(ctx).drop(identity)  # what the run kept of it is about to be wrong
    removed = 0
    not_undone = 0
    for record in ctx.items.iter(None):
        # A copy this run created and whose source vanished later is still this run's (kept as "vanished").
        if record.status in ("done", "vanished") and isinstance(record.detail, Mapping) \
                and record.detail.get("created"):
            dst.delete(record.key)
            ctx.items.record(record.key, "compensated")
            removed += 1
        elif record.status in ("done", "deleted"):
            not_undone += 1
    ctx.items.flush()
    ctx.event("blobs.compensated", f"removed {removed} blob(s) this run created in {dst.describe()}",
              removed=removed, not_undone=not_undone)
    if not_undone:
        ctx.log.warning("%d blob(s) were overwritten or deleted in %s and cannot be restored; the source still "
                        "holds them", not_undone, dst.describe())


def compare_inventories(ctx: StepContext, params: VerifyParams | TransferParams, *, md5: bool = True,
                        properties: bool = False, rehash: Literal["changed", "all"] = "changed") -> list[str]:
    """Differences between source and destination: missing, extra, size, MD5 (and properties) mismatches.

    Both sides are listed once, side by side. A source blob without an MD5 is read and hashed, except, with
    ``rehash="changed"``, when the destination copy recorded the source version it was read from and the source
    still has that version: then the MD5 recorded with it is the source's (see ``VerifyParams.rehash``).
    """
    src, dst = _open_pair(ctx, params)
    tokens = md5 and rehash == "changed" and src.reports_versions
    full: dict[str, BlobInfo] = {}
    compacts: dict[str, Compact] = {}
    if properties:
        listings: Listings[Any] = list_both(src, lambda: {b.name: b for b in dst.list(metadata=True)})
        full = listings.destination()
    else:
        listings = list_both(src, lambda: destination_inventory(dst, metadata=tokens), src_metadata=False)
        compacts = listings.destination()
    missing: list[str] = []
    size: list[str] = []
    content: list[str] = []
    props: list[str] = []
    to_hash: list[tuple[BlobInfo, BlobInfo | Compact]] = []
    for info in listings.source:
        ctx.raise_if_cancelled()
        other: BlobInfo | Compact | None = full.pop(info.name, None) if properties else compacts.pop(info.name, None)
        if other is None:
            missing.append(info.name)
            continue
        if other.size != info.size:
            size.append(info.name)
        elif md5 and info.md5 is None and tokens and info.version is not None and other.md5 is not None \
                and _recorded(other) == source_token(info.version, other.md5):
            pass  # read from this very version, and hashed then
        elif md5 and (info.md5 is None or other.md5 is None):
            to_hash.append((info, other))
        elif md5 and info.md5 != other.md5:
            content.append(info.name)
        if properties and isinstance(other, BlobInfo) and (
                (info.content_type or "application/octet-stream") != (other.content_type or "application/octet-stream")
                or _own_metadata(info) != _own_metadata(other)):
            props.append(info.name)
    if to_hash:
        with ThreadPoolExecutor(getattr(params, "concurrency", 8)) as pool:
            def differs(pair: tuple[BlobInfo, BlobInfo | Compact]) -> bool:
                a, b = pair
                return (a.md5 or src.compute_md5(a.name)) != (b.md5 or dst.compute_md5(a.name))
            for pair, bad in zip(to_hash, pool.map(differs, to_hash), strict=True):
                if bad:
                    content.append(pair[0].name)
    return _problems(ctx, missing, sorted(full if properties else compacts), size, content, props)


def _own_metadata(info: BlobInfo) -> dict[str, str]:
    """The blob's metadata without what the migration itself records."""
    return {k: v for k, v in info.metadata.items() if k != SOURCE_VERSION_KEY}


def hash_probe(ctx: StepContext, src: BlobStore, blobs: list[BlobInfo], concurrency: int,
               sample: int = HASH_SAMPLE) -> tuple[float, int]:
    """Seconds to read and hash a sample of ``blobs`` as ``compare_inventories`` does (``compute_md5`` in a pool of
    ``concurrency`` threads), and the sample's size; blobs taken evenly across the list."""
    if not blobs:
        return 0.0, 0
    chosen = blobs[::max(1, len(blobs) // sample)][:sample]
    with ThreadPoolExecutor(concurrency) as pool:
        # Threads started first: the run starts them once for all its blobs, not once for the sample.
        list(pool.map(lambda _: None, range(concurrency * 2)))
        started = time.perf_counter()
        list(pool.map(lambda info: src.compute_md5(info.name), chosen))
        took = time.perf_counter() - started
    return took, len(chosen)


def verify_estimate(ctx: StepContext, params: VerifyParams, src: BlobStore, listed: list[BlobInfo],
                    src_seconds: float, have: Mapping[str, Compact], dst_seconds: float) -> Estimate:
    """Seconds of ``blobs.verify`` in the run: both listings, side by side, and the hashing, as ``apply`` does them.

    The destination is listed as it will be: a transfer planned before fills it (the dry-run's notes), or, when
    it lacks most source blobs now, it will hold the source's. Its copies then carry an MD5 (every transfer writes
    one) and, from a source with versions, the version they were read from: the run hashes only the source blobs
    without an MD5 whose copy will not have recorded their current version (with ``rehash: all``, every one of
    them), and the destination blobs already there without an MD5. A sample of those is read and hashed now, the
    way the run does, and the time scaled by blob count.
    """
    sides = ListingSides(src_kind=params.source.kind, src_count=len(listed), src_seconds=src_seconds,
                         dst_kind=params.destination.kind, dst_count=len(have), dst_seconds=dst_seconds)
    planned = _planned_holdings(ctx).get(params.destination.cache_key())
    dst_count = len(have)
    if planned is not None and planned[0] > dst_count:
        dst_count, how = planned[0], "as the steps before leave it"
    elif len(have) * 2 < len(listed):
        dst_count, how = len(listed), "once filled from the source"
    else:
        how = "as it is"
    dst_rate, dst_how = sides.per_blob("dst")
    dst_listing = listing_seconds(dst_count, len(have), dst_seconds, dst_rate)
    overlap = listings_overlap(params.source, params.destination)
    listing = max(src_seconds, dst_listing) if overlap else src_seconds + dst_listing
    basis = (f"listings {listing:.2f} s: {len(listed)} source blob(s) in {src_seconds * 1000:.0f} ms (timed) "
             f"{'beside' if overlap else 'and'} {dst_count} at the destination ({how}) at {dst_how}")
    tokens = params.rehash == "changed" and src.reports_versions
    refilled = planned is not None  # transfers planned before write (or rewrite) the destination's copies

    def hashed(info: BlobInfo) -> bool:
        copy = have.get(info.name)
        if info.md5 is not None:
            return copy is not None and copy.md5 is None and not refilled
        if not tokens or info.version is None:
            return True
        if copy is not None and copy.md5 is not None and copy.recorded == source_token(info.version, copy.md5):
            return False
        return not refilled

    to_hash = [i for i in listed if hashed(i)] if params.compare_md5 else []
    hashing = 0.0
    if to_hash:
        took, sampled = hash_probe(ctx, src, to_hash, params.concurrency)
        hashing = took * len(to_hash) / sampled
        basis += (f"; {len(to_hash)} blob(s) to read and hash, {sampled} hashed now in {took * 1000:.0f} ms "
                  f"({params.concurrency} threads), {hashing:.2f} s")
    elif params.compare_md5 and tokens:
        basis += "; no blob to read: every copy records the source version it was read from"
    return Estimate(seconds=listing + hashing, items=len(listed), bytes=sum(i.size for i in to_hash), basis=basis)


# -- the step kinds -------------------------------------------------------------------------------------------


TP = TypeVar("TP", bound=TransferParams)


class _TransferStep(Step[TP]):
    """What the three copying kinds share: check, plan and apply over :func:`transfer`, one attempt at a time."""

    label: ClassVar[str]

    def __init__(self, step_id: str, params: TP) -> None:
        super().__init__(step_id, params)
        self._attempt = Attempt()

    def _extra(self) -> Literal["delete", "keep"]:
        return "keep"

    def check(self, ctx: StepContext) -> CheckResult:
        # A new attempt: whatever the one before took from the run's cache and did not settle (it failed) is
        # let go, so this one lists what it cannot trust.
        self._attempt.abandon(ctx)
        self._attempt = Attempt()
        return _check(ctx, self.params, extra=self._extra(), attempt=self._attempt)

    def plan(self, ctx: StepContext) -> PlanResult:
        seen, self._attempt = self._attempt.survey, Attempt()
        return _plan(ctx, self.params, extra=self._extra(), what=self.label, seen=seen)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        return transfer(ctx, self.params, label=self.label, extra=self._extra(), attempt=self._attempt)

    def _differences(self, ctx: StepContext) -> list[str]:
        """What is wrong at the destination after this attempt, reading it once (see the module doc); notes what
        the destination then holds, for :meth:`_passed` to keep."""
        attempt = self._attempt
        if attempt.source is None:  # no check in this attempt (a direct call): compare everything
            return compare_inventories(ctx, self.params, md5=True)
        if attempt.written is None:
            return []  # check found everything in place a moment ago: its listing is the proof
        changed = len(attempt.written) + len(attempt.deleted)
        if reads_back(changed, max(attempt.dst_listed, len(attempt.source))):
            problems, found = verify_written(ctx, self.params, attempt.written, attempt.deleted)
            if attempt.keep and attempt.destination is not None:
                inventory = attempt.destination  # this attempt's own (taken out of the cache, or listed)
                for name, info in found.items():
                    if info is None:
                        inventory.pop(name, None)
                    else:
                        inventory[name] = kept(info)
                attempt.remember = CachedInventory(inventory, attempt.dst_metadata)
            return problems
        problems, listed = verify_transfer(ctx, self.params, attempt.source, attempt.written,
                                           metadata=attempt.dst_metadata, keep=attempt.keep)
        attempt.remember = CachedInventory(listed, attempt.dst_metadata)
        return problems

    def _differ(self) -> str:
        """How a failed verify begins, after the step id."""
        raise NotImplementedError

    def _left_behind(self, ctx: StepContext) -> list[str]:
        """A sync with ``also_delete_from``: each blob this attempt deleted there, read back: gone."""
        also = _also_store(ctx, self.params)
        names = self._attempt.also_deleted
        if also is None or not names:
            return []
        with ThreadPoolExecutor(self.params.concurrency, thread_name_prefix="blob-verify") as pool:
            found = list(pool.map(also.info, names))
        still = sorted({name for name, info in zip(names, found, strict=True) if info is not None})
        return [f"{len(still)} deleted but still in {also.describe()}: {redacted_names(ctx, still)}"] if still else []

    def verify(self, ctx: StepContext) -> None:
        # Blobs only at the destination count only where the step removes them (``_extra() == "delete"``).
        problems = self._differences(ctx)
        if self._extra() == "keep":
            problems = [p for p in problems if "only at the destination" not in p]
        problems += self._left_behind(ctx)
        if problems:
            raise self._failed(f"{self.step_id}: {self._differ()}: " + "; ".join(problems))
        self._passed(ctx)

    def _failed(self, message: str) -> VerificationFailed:
        """The verify failure; worth a retry (which lists both sides) when the attempt worked from a kept
        inventory, since an outside change to it would look just like this."""
        reused = self._attempt.reused  # its claims stay unsettled: the next check lets go of them
        return VerificationFailed(message + ("; the step lists both sides again on retry" if reused else ""),
                                  step_id=self.step_id, retryable=reused)

    def _passed(self, ctx: StepContext) -> None:
        """Verify passed: the attempt leaves what it knows of its containers for the steps after it."""
        attempt, self._attempt = self._attempt, Attempt()
        attempt.settle(ctx)

    def compensate(self, ctx: StepContext) -> None:
        _compensate(ctx, self.params)


class Presync(_TransferStep[PresyncParams]):
    """Copies every source blob to the cloud backup container while the tenant is still live.

    Changes: writes blobs into the destination container (never deletes).
    Done when: every source blob is at the destination with the same size and MD5 (or, for a source without
    MD5, a copy that recorded the source's current version, or else written after the source last changed);
    per-blob checkpoints make a resume skip finished blobs and uncommitted blocks make a large blob resume where
    it stopped. Verify reads back what this attempt copied, or lists the destination once when that is many.
    A source blob gone between the listing and the read (the tenant is live: deleted or renamed meanwhile) is
    recorded as vanished and left to the delta sync, which removes what the source lost.
    Undone by: deleting the blobs this run created at the destination.
    """

    kind = "blobs.presync"
    Params = PresyncParams
    summary = "copy every blob to the cloud backup container while the tenant is live"
    label = "presync"

    def _differ(self) -> str:
        # The tenant is live, so blobs may have appeared or gone since check listed the source: verify proves
        # what this attempt copied (and what check found in place), against that listing, not more.
        return f"copied blob(s) are missing or differ at {self.params.destination.describe()}"


class Sync(_TransferStep[SyncParams]):
    """Copies blobs that are new or changed since the last sync, and handles blobs deleted at the source.

    Changes: writes new and changed blobs into the destination; deletes destination blobs whose source is
    gone (or keeps and reports them, ``on_source_deleted: keep``), and with ``also_delete_from`` deletes each of
    those from that container too (first there, then at the destination, then the checkpoint: a stop anywhere
    leaves the destination's copy for the next diff, or the checkpoint for the next check). A source blob gone
    between the listing and the read (deleted or renamed meanwhile) counts as deleted.
    Done when: the destination inventory equals the source's (names, sizes, MD5), and no blob this step deleted
    at the destination is left in ``also_delete_from``.
    Undone by: deleting the blobs this run created; overwritten and deleted blobs stay as they are (the
    source still has them, or lost them).
    """

    kind = "blobs.sync"
    Params = SyncParams
    summary = "copy blobs added or changed since the presync; remove those deleted at the source"
    label = "delta sync"

    def _extra(self) -> Literal["delete", "keep"]:
        return self.params.on_source_deleted

    def _differ(self) -> str:
        return "source and destination differ"


class PutLive(_TransferStep[PutLiveParams]):
    """Puts the backup live: server-side copies from the backup container into the new instance's container.

    Changes: writes blobs into the live container (``start_copy_from_url``, polling the copy status; streamed
    where the backup is not reachable by URL); deletes blobs the backup lacks only with ``delete_extra``.
    Done when: every backup blob is in the live container with the same size and MD5.
    Undone by: deleting the blobs this run created in the live container.
    """

    kind = "blobs.put_live"
    Params = PutLiveParams
    summary = "server-side copy of the backup container into the new instance's live container"
    label = "put live"

    def _extra(self) -> Literal["delete", "keep"]:
        return "delete" if self.params.delete_extra else "keep"

    def _differ(self) -> str:
        return "backup and live container differ"


class Verify(Step[VerifyParams]):
    """Compares source and destination inventories (names, sizes, MD5, and content type and metadata).

    Changes: nothing; it only reads: both listings, side by side (never an inventory an earlier step kept: this is
    the end-to-end proof), and the content of a source blob without a stored MD5 unless its copy recorded the
    version it was read from and the source still has it (``rehash``).
    Done when: the inventories match; otherwise it fails naming the differences.
    Undone by: nothing to undo.
    """

    kind = "blobs.verify"
    Params = VerifyParams
    summary = "compare source and destination blob inventories by name, size and MD5"

    def check(self, ctx: StepContext) -> CheckResult:
        return CheckResult(False, "verification always runs")

    def plan(self, ctx: StepContext) -> PlanResult:
        src, dst = _open_pair(ctx, self.params)
        # Changes nothing, yet takes time: both listings, and hashing where the MD5 is not known otherwise.
        # Each side timed on its own here (the run lists them side by side).
        started = time.perf_counter()
        listed = list(src.list(metadata=self.params.compare_properties))
        src_seconds = time.perf_counter() - started
        started = time.perf_counter()
        have = destination_inventory(dst, metadata=src.reports_versions)
        dst_seconds = time.perf_counter() - started
        result = PlanResult(changes=[], reason=f"read-only: compares {self.params.source.describe()} with "
                                               f"{self.params.destination.describe()}")
        result.estimate = verify_estimate(ctx, self.params, src, listed, src_seconds, have, dst_seconds)
        result.details = {"run_seconds": result.estimate.seconds}
        return result

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        problems = compare_inventories(ctx, self.params, md5=self.params.compare_md5,
                                       properties=self.params.compare_properties, rehash=self.params.rehash)
        if problems:
            raise VerificationFailed(f"{self.step_id}: inventories differ: " + "; ".join(problems),
                                     step_id=self.step_id)
        return {"identical": True}

    def verify(self, ctx: StepContext) -> None:
        return None


__all__ = ["Presync", "PutLive", "Sync", "Verify", "compare_inventories", "same_content", "transfer"]
