"""Inventories of blob containers, listed (both sides at once) or kept, and the diff between them.

A transfer reads both inventories and decides per blob whether the destination already holds the same content
(:func:`same_content`): by MD5, else by the source version a copy recorded (:data:`SOURCE_VERSION_KEY`), else by
modification time. ``check`` lists both sides at the same time and keeps what it read (the blobs to copy, up to
:data:`SURVEY_LIMIT`) in a :class:`Survey` for the rest of its attempt.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from migrator.providers.blob import (
    AzureBlobStore,
    BlobInfo,
    BlobStore,
    FolderBlobStore,
    check_relative_name,
    open_blob_store,
)
from migrator.providers.blob.copy import SOURCE_VERSION_KEY, source_token
from migrator.secrets import blob_label
from migrator.step import StepContext
from migrator.steps.blobs.params import SyncParams, TransferParams, VerifyParams

__all__ = ["SOURCE_VERSION_KEY", "source_token"]

_MAX_LISTED = 20


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


def recorded_token(blob: BlobInfo | Compact) -> str | None:
    return blob.recorded if isinstance(blob, Compact) else blob.metadata.get(SOURCE_VERSION_KEY)


def same_content(src: BlobInfo | Compact, dst: BlobInfo | Compact) -> bool:
    """Whether ``dst`` holds what ``src`` holds, judged from properties alone (no content read)."""
    if src.size != dst.size:
        return False
    if src.md5 is not None:
        return dst.md5 == src.md5
    recorded = recorded_token(dst)
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
            # Kept with metadata: ``blobs.verify`` with ``reuse_listing`` proves a copy by the source version it
            # recorded, also where this step's source (a backup container) has no versions of its own.
            return destination_inventory(dst, metadata=src.reports_versions or reuse.keep, keep=reuse.keep)
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


@dataclass
class CachedInventory:
    """A container's inventory as a transfer step of this run process left it. ``metadata``: listed with metadata,
    each blob with its content type and metadata (:func:`kept`), so it can serve as a copy source too."""

    blobs: dict[str, Compact]
    metadata: bool


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
        return src.reports_versions or self.keep

    def used(self, src: BlobStore) -> bool:
        return self.source_inventory() is not None or self.destination_for(src) is not None


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def redacted_names(ctx: StepContext, names: list[str]) -> str:
    """Blob names for a message, each by its label (:func:`~migrator.secrets.blob_label`), at most a screenful."""
    shown = ", ".join(blob_label(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


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


def open_pair(ctx: StepContext, params: TransferParams | VerifyParams, *,
               confirm: bool = True) -> tuple[BlobStore, BlobStore]:
    """Both stores; ``confirm`` first proves both containers answer (skipped when check just did)."""
    src = open_blob_store(params.source, ctx, concurrency=params.concurrency)
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency,
                          create=params.destination.kind == "folder" and not ctx.dry_run)
    if confirm:
        confirm_reachable(src, dst)
    return src, dst


def confirm_reachable(src: BlobStore, dst: BlobStore) -> None:
    """Proves both containers answer: a missing container or a wrong key fails here, before anything is written."""
    if isinstance(dst, AzureBlobStore):
        dst.ensure_container()
    if isinstance(src, AzureBlobStore):
        src.ensure_container()


def also_store(ctx: StepContext, params: TransferParams) -> BlobStore | None:
    """The store a sync deletes what the source lost from as well (``also_delete_from``), or None."""
    endpoint = params.also_delete_from if isinstance(params, SyncParams) else None
    return open_blob_store(endpoint, ctx, concurrency=params.concurrency) if endpoint is not None else None


def check_names_fit(ctx: StepContext, src: BlobStore, dst: BlobStore, names: Iterator[str] | None = None) -> None:
    """A folder destination must be able to hold every source name: refuse before the first write."""
    if isinstance(dst, FolderBlobStore):
        for name in names if names is not None else (info.name for info in src.list(metadata=False)):
            check_relative_name(name, where=dst.describe())
