"""Proof that a destination holds what its source does: after one transfer attempt, and end to end.

``verify`` of a transfer reads back only what ``apply`` wrote or deleted (one Get Blob Properties each), or, when
that is more than :data:`VERIFY_BY_PROPERTIES_SHARE` of the destination, lists the destination once more. Blobs
``check`` found in place were proven by its own listing a moment before. ``blobs.verify`` compares both sides
listed afresh (:func:`compare_inventories`), hashing only source files whose version changed since their copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from migrator.providers.blob import BlobInfo, BlobStore, open_blob_store
from migrator.providers.blob.copy import SOURCE_VERSION_KEY, CopyResult, source_token
from migrator.step import ItemRecord, StepContext
from migrator.steps.blobs.attempt import Attempt
from migrator.steps.blobs.inventory import (
    CachedInventory,
    Compact,
    Listings,
    also_store,
    b64,
    destination_inventory,
    kept,
    list_both,
    open_pair,
    recorded_token,
    redacted_names,
    same_content,
)
from migrator.steps.blobs.params import TransferParams, VerifyParams

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


def compare_inventories(ctx: StepContext, params: VerifyParams | TransferParams, *, md5: bool = True,
                        properties: bool = False, rehash: Literal["changed", "all"] = "changed",
                        destination: Callable[[BlobStore, BlobStore], dict[str, Compact] | None] | None = None
                        ) -> list[str]:
    """Differences between source and destination: missing, extra, size, MD5 (and properties) mismatches.

    Both sides are listed once, side by side; or, where ``destination`` gives the destination's inventory (a kept
    one: ``VerifyParams.reuse_listing``), only the source. A source blob without an MD5 is read and hashed,
    except, with ``rehash="changed"``, when the destination copy recorded the source version it was read from and
    the source still has that version: then the MD5 recorded with it is the source's (see
    ``VerifyParams.rehash``).
    """
    src, dst = open_pair(ctx, params)
    tokens = md5 and rehash == "changed" and src.reports_versions
    full: dict[str, BlobInfo] = {}
    compacts: dict[str, Compact] = {}
    given = destination(src, dst) if destination is not None and not properties else None
    if properties:
        listings: Listings[Any] = list_both(src, lambda: {b.name: b for b in dst.list(metadata=True)})
        full = listings.destination()
    elif given is not None:
        listings = list_both(src, lambda: given, src_metadata=False)
        compacts = listings.destination()
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
                and recorded_token(other) == source_token(info.version, other.md5):
            pass  # read from this very version, and hashed then
        elif md5 and (info.md5 is None or other.md5 is None):
            to_hash.append((info, other))
        elif md5 and info.md5 != other.md5:
            content.append(info.name)
        if properties and isinstance(other, BlobInfo) and (
                (info.content_type or "application/octet-stream") != (other.content_type or "application/octet-stream")
                or _own_metadata(info) != _own_metadata(other)):
            props.append(info.name)
    content.extend(_rehashed_differences(src, dst, to_hash, getattr(params, "concurrency", 8)))
    return _problems(ctx, missing, sorted(full if properties else compacts), size, content, props)


def _rehashed_differences(src: BlobStore, dst: BlobStore, pairs: list[tuple[BlobInfo, BlobInfo | Compact]],
                          concurrency: int) -> list[str]:
    """The names, in order, of the pairs whose content differs once the side without an MD5 is read and hashed."""
    if not pairs:
        return []

    def differs(pair: tuple[BlobInfo, BlobInfo | Compact]) -> bool:
        a, b = pair
        return (a.md5 or src.compute_md5(a.name)) != (b.md5 or dst.compute_md5(a.name))

    with ThreadPoolExecutor(concurrency) as pool:
        return [pair[0].name for pair, bad in zip(pairs, pool.map(differs, pairs), strict=True) if bad]


def _own_metadata(info: BlobInfo) -> dict[str, str]:
    """The blob's metadata without what the migration itself records."""
    return {k: v for k, v in info.metadata.items() if k != SOURCE_VERSION_KEY}


def verify_attempt(ctx: StepContext, params: TransferParams, attempt: Attempt, *,
                   extra: Literal["delete", "keep"]) -> list[str]:
    """What is wrong after ``attempt`` of a transfer, reading the destination once (see the module doc); notes in
    the attempt what the destination then holds, for it to keep. Blobs only at the destination count only where
    the step removes them (``extra == "delete"``)."""
    problems = _differences(ctx, params, attempt)
    if extra == "keep":
        problems = [p for p in problems if "only at the destination" not in p]
    return problems + _left_behind(ctx, params, attempt)


def _differences(ctx: StepContext, params: TransferParams, attempt: Attempt) -> list[str]:
    if attempt.source is None:  # no check in this attempt (a direct call): compare everything
        return compare_inventories(ctx, params, md5=True)
    if attempt.written is None:
        return []  # check found everything in place a moment ago: its listing is the proof
    changed = len(attempt.written) + len(attempt.deleted)
    if reads_back(changed, max(attempt.dst_listed, len(attempt.source))):
        problems, found = verify_written(ctx, params, attempt.written, attempt.deleted)
        if attempt.keep and attempt.destination is not None:
            inventory = attempt.destination  # this attempt's own (taken out of the cache, or listed)
            for name, info in found.items():
                if info is None:
                    inventory.pop(name, None)
                else:
                    inventory[name] = kept(info)
            attempt.remember = CachedInventory(inventory, attempt.dst_metadata)
        return problems
    problems, listed = verify_transfer(ctx, params, attempt.source, attempt.written,
                                       metadata=attempt.dst_metadata, keep=attempt.keep)
    attempt.remember = CachedInventory(listed, attempt.dst_metadata)
    return problems


def _left_behind(ctx: StepContext, params: TransferParams, attempt: Attempt) -> list[str]:
    """A sync with ``also_delete_from``: each blob this attempt deleted there, read back: gone."""
    also = also_store(ctx, params)
    names = attempt.also_deleted
    if also is None or not names:
        return []
    with ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-verify") as pool:
        found = list(pool.map(also.info, names))
    still = sorted({name for name, info in zip(names, found, strict=True) if info is not None})
    return [f"{len(still)} deleted but still in {also.describe()}: {redacted_names(ctx, still)}"] if still else []
