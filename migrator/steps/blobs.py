"""Blob storage migration: presync while the tenant is live, delta sync in the window, put live, verify.

All three copying kinds share one routine, :func:`transfer`. It reads both inventories, decides per blob
whether the destination already holds the same content (size and MD5, or size and "written after the source
last changed" where the source has no MD5), and copies only the rest, ``concurrency`` blobs at a time:

* server-side (``start_copy_from_url`` with a SAS minted just in time) when the source is reachable by URL and
  carries a Content-MD5 that the copy takes along;
* otherwise streamed through this process in constant memory: small blobs in one request, large ones in
  blocks (``stage_block`` + ``commit_block_list``) whose ids derive from the source version, so after a restart
  the uncommitted blocks already at the destination are kept and only the rest are sent.

Within one attempt the inventories are read once: ``check`` lists both sides and keeps what it read (the blobs
to copy, up to :data:`SURVEY_LIMIT`), ``plan``/``apply`` work from that, and ``verify`` lists the destination once
more and compares it with the source inventory of the attempt. A new attempt (a retry, a resume) reads afresh.

Every destination blob gets a Content-MD5 (computed while streaming, checked against the source's when it has
one), and keeps the source's content type and metadata. Each finished blob is recorded in ``ctx.items``; a
resumed step skips recorded blobs whose source is unchanged, and the inventory diff skips everything else that
is already in place, so no completed blob is sent twice.
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Literal, TypeVar

from pydantic import Field
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
from migrator.step import CheckResult, Estimate, ItemRecord, Params, PlanResult, Step, StepContext

MiB = 1024 * 1024
#: Assumed rates for plan estimates before anything was measured.
_ASSUMED_BLOBS_PER_S = 200.0
_ASSUMED_BYTES_PER_S = 50.0 * MiB
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
    #: Seconds between copy-status polls of a pending server-side copy.
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


class PresyncParams(TransferParams):
    pass


class SyncParams(TransferParams):
    #: What to do with destination blobs whose source is gone: delete them, or keep them and report them.
    on_source_deleted: Literal["delete", "keep"] = "delete"


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


# -- inventory diff -------------------------------------------------------------------------------------------


def same_content(src: BlobInfo, dst: BlobInfo) -> bool:
    """Whether ``dst`` holds what ``src`` holds, judged from properties alone (no content read)."""
    if src.size != dst.size:
        return False
    if src.md5 is not None:
        return dst.md5 == src.md5
    # No MD5 at the source: the copy is current when it was written strictly after the source last changed
    # (storage clocks tick in whole seconds, so "the same second" counts as changed).
    if src.last_modified is None or dst.last_modified is None:
        return False
    return dst.md5 is not None and dst.last_modified > src.last_modified


@dataclass(slots=True)
class Compact:
    """What the diff keeps of a destination blob: small, since an inventory may hold 200,000 of them."""

    size: int
    md5: bytes | None
    last_modified: float | None


def destination_inventory(store: BlobStore) -> dict[str, Compact]:
    """Name -> size, MD5, last change of every blob in ``store``: one listing, without metadata."""
    return {b.name: Compact(b.size, b.md5, b.last_modified) for b in store.list(metadata=False)}


def _as_info(name: str, c: Compact) -> BlobInfo:
    return BlobInfo(name=name, size=c.size, md5=c.md5, last_modified=c.last_modified)


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def redacted_names(ctx: StepContext, names: list[str]) -> str:
    """Blob names for a message: personal data masked, at most a screenful."""
    shown = ", ".join(ctx.redactor.redact(repr(n)) for n in names[:_MAX_LISTED])
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
        text += f", {rate_n:.0f} blobs/s, {rate_b / MiB:.1f} MiB/s"
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
            url = self.src.copy_source_url(info.name)
            if url is not None:
                return self._server_side(info, url)
        if self.dst.supports_blocks and info.size > p.large_blob_threshold:
            return self._in_blocks(info)
        return self._streamed(info)

    def _check_md5(self, info: BlobInfo, md5: bytes) -> None:
        if info.md5 is not None and md5 != info.md5:
            raise TransientError(
                f"blob {self.ctx.redactor.redact(repr(info.name))} in {self.src.describe()}: the content read does "
                "not match its Content-MD5", hint="the source changed while it was copied; the copy is retried")

    def _server_side(self, info: BlobInfo, url: str) -> CopyResult:
        status: str | None = self.dst.start_copy(info.name, url)
        if status == "success":
            # A synchronous copy carries the source's properties (Content-MD5 included) as they were when it
            # ran; verify compares them with what we recorded.
            return CopyResult(md5=info.md5 or b"", sent=0, server_side=True)
        while status == "pending":
            self.ctx.raise_if_cancelled()
            self.ctx.clock.sleep(self.params.copy_poll_interval)
            status, description = self.dst.copy_status(info.name)
        if status != "success":
            _, description = self.dst.copy_status(info.name)
            raise PermanentError(f"server-side copy of blob {self.ctx.redactor.redact(repr(info.name))} into "
                                 f"{self.dst.describe()} ended {status}: {description or 'no reason given'}")
        copied = self.dst.info(info.name)
        if copied is None or copied.size != info.size or copied.md5 != info.md5:
            raise TransientError(f"server-side copy of blob {self.ctx.redactor.redact(repr(info.name))} into "
                                 f"{self.dst.describe()} does not match the source (size or MD5)",
                                 hint="the source changed during the copy; retried")
        return CopyResult(md5=info.md5 or b"", sent=0, server_side=True)

    def _streamed(self, info: BlobInfo) -> CopyResult:
        if info.size <= self.params.large_blob_threshold:
            with self.src.open_read(info.name) as stream:
                data = stream.read()
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            self._check_md5(info, md5)
            self.dst.write(info.name, data, length=len(data), content_type=info.content_type,
                           metadata=info.metadata, md5=md5)
            return CopyResult(md5=md5, sent=len(data))
        # A large blob to a store without blocks (a folder): stream it through, hashing on the way.
        hashing = _HashingReader(self.src.open_read(info.name))
        with hashing:
            written = self.dst.write(info.name, hashing,  # type: ignore[arg-type]  # read() is all write uses
                                     length=info.size, content_type=info.content_type,
                                     metadata=info.metadata, md5=info.md5)
        md5 = hashing.digest.digest()
        self._check_md5(info, md5)
        return CopyResult(md5=written.md5 or md5, sent=info.size)

    def _in_blocks(self, info: BlobInfo) -> CopyResult:
        ids = block_ids(info, self.params.block_size)
        staged = self.dst.staged_blocks(info.name)
        digest = hashlib.md5(usedforsecurity=False)
        futures: list[Future[None]] = []
        sent = resumed = 0
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
                    if staged.get(block_id) == len(data):
                        resumed += 1
                        continue
                    self._block_slots.acquire()
                    futures.append(self._block_pool.submit(stage, block_id, data))
                    sent += len(data)
        finally:
            for future in futures:
                future.exception()  # wait for every block in flight, even when stopping
        if failure:
            raise failure[0]
        md5 = digest.digest()
        self._check_md5(info, md5)
        self.dst.commit_blocks(info.name, ids, content_type=info.content_type, metadata=info.metadata, md5=md5)
        return CopyResult(md5=md5, sent=sent, resumed_blocks=resumed)


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


@dataclass
class Attempt:
    """What one attempt of a transfer step learnt, passed from check to apply to verify."""

    survey: Survey | None = None
    source: dict[str, Compact] | None = None  # the source inventory apply worked from
    listing_seconds: float | None = None  # how long check took to list both sides (for the plan's estimate)


def survey(ctx: StepContext, src: BlobStore, dst: BlobStore, *, limit: int = SURVEY_LIMIT) -> Survey | None:
    """Both inventories compared; None as soon as more than ``limit`` blobs need copying (not kept then)."""
    inventory = destination_inventory(dst)
    source: dict[str, Compact] = {}
    pending: list[tuple[BlobInfo, Compact | None]] = []
    unchanged = 0
    for info in src.list():
        ctx.raise_if_cancelled()
        have = inventory.pop(info.name, None)
        source[info.name] = Compact(info.size, info.md5, info.last_modified)
        if have is not None and same_content(info, _as_info(info.name, have)):
            unchanged += 1
            continue
        pending.append((info, have))
        if len(pending) > limit:
            return None
    return Survey(pending=pending, unchanged=unchanged, extra=sorted(inventory), source=source)


def _open_pair(ctx: StepContext, params: TransferParams | VerifyParams, *,
               confirm: bool = True) -> tuple[BlobStore, BlobStore]:
    """Both stores; ``confirm`` first proves both containers answer (skipped when check just did)."""
    src = open_blob_store(params.source, ctx, concurrency=params.concurrency)
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency,
                          create=params.destination.kind == "folder" and not ctx.dry_run)
    if confirm and isinstance(dst, AzureBlobStore):
        dst.ensure_container()  # a missing container or a wrong key fails here, before anything is written
    if confirm and isinstance(src, AzureBlobStore):
        src.ensure_container()
    return src, dst


def _check_names_fit(ctx: StepContext, src: BlobStore, dst: BlobStore, names: Iterator[str] | None = None) -> None:
    """A folder destination must be able to hold every source name: refuse before the first write."""
    if isinstance(dst, FolderBlobStore):
        for name in names if names is not None else (info.name for info in src.list(metadata=False)):
            check_relative_name(name, where=dst.describe())


def _pending(src: BlobStore, dst_inventory: dict[str, Compact], diff: Diff) -> Iterator[BlobInfo]:
    """Source blobs that need copying; pops every source name from ``dst_inventory`` (what is left is extra)."""
    for info in src.list():
        have = dst_inventory.pop(info.name, None)
        if have is not None and same_content(info, _as_info(info.name, have)):
            diff.unchanged += 1
            continue
        diff.to_copy += 1
        diff.to_copy_bytes += info.size
        if len(diff.sample) < _MAX_LISTED:
            diff.sample.append(info.name)
        yield info


def compute_diff(src: BlobStore, dst: BlobStore) -> Diff:
    diff = Diff()
    inventory = destination_inventory(dst)
    for _ in _pending(src, inventory, diff):
        pass
    diff.extra = sorted(inventory)
    return diff


def _retrying(params: TransferParams, ctx: StepContext) -> Retrying:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        return float(hinted) if hinted else min(0.5 * 2 ** (state.attempt_number - 1), 15.0)

    return Retrying(retry=retry_if_exception(lambda e: is_retryable(e) and not isinstance(e, Cancelled)),
                    stop=stop_after_attempt(params.attempts_per_blob), wait=wait,
                    sleep=ctx.clock.sleep, reraise=True)


def transfer(ctx: StepContext, params: TransferParams, *, label: str,
             extra: Literal["delete", "keep"] = "keep", attempt: Attempt | None = None) -> dict[str, Any]:
    """Copies what differs from source to destination; returns the step outputs.

    With a :class:`Survey` from this attempt's check (in ``attempt``) it works from that; otherwise it lists
    both sides itself, streaming the source. Either way ``attempt.source`` ends up holding the source inventory
    for verify.
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
    inventory: dict[str, Compact] = {}
    source: dict[str, Compact] = {}

    def listed() -> Iterator[tuple[BlobInfo, Compact | None]]:
        """Source blobs not already in place, each with what the destination has of it."""
        if seen is not None:
            diff.unchanged = seen.unchanged
            source.update(seen.source)
            yield from seen.pending
            return
        inventory.update(destination_inventory(dst))
        for info in src.list():
            have = inventory.pop(info.name, None)
            source[info.name] = Compact(info.size, info.md5, info.last_modified)
            if have is not None and same_content(info, _as_info(info.name, have)):
                diff.unchanged += 1
                continue
            yield info, have

    def work(info: BlobInfo, created: bool) -> None:
        try:
            if errors:
                return
            result = retrying(copier.copy, info)
            ctx.items.record(info.name, "done", bytes=info.size, checksum=b64(result.md5),
                             detail={"created": created, "server_side": result.server_side,
                                     "resumed_blocks": result.resumed_blocks})
            progress.add(blobs=1, bytes=info.size, sent=result.sent, server_side=int(result.server_side))
        except BaseException as exc:
            errors.append(exc)
        finally:
            slots.release()

    try:
        for info, have in listed():
            ctx.raise_if_cancelled()
            if errors:
                break
            record = done_before.get(info.name)
            if record is not None and have is not None and record.bytes == info.size == have.size and \
                    (info.md5 is None or b64(info.md5) == record.checksum) and b64(have.md5) == record.checksum:
                # Finished by an earlier attempt of this step and the source has not changed since.
                skipped_by_checkpoint += 1
                continue
            diff.to_copy += 1
            diff.to_copy_bytes += info.size
            slots.acquire()
            pool.submit(work, info, have is None)
        progress.total_blobs = diff.to_copy
        progress.total_bytes = diff.to_copy_bytes
        ctx.items.set_total(items=diff.to_copy, bytes=diff.to_copy_bytes)
    finally:
        pool.shutdown(wait=True)
        copier.close()
        ctx.items.flush()
    if errors:
        raise _first_error(errors)
    ctx.raise_if_cancelled()
    diff.extra = seen.extra if seen is not None else sorted(inventory)
    attempt.source = source
    deleted = 0
    if diff.extra and extra == "delete":
        for name in diff.extra:
            ctx.raise_if_cancelled()
            dst.delete(name)
            ctx.items.record(name, "deleted")
            deleted += 1
        ctx.items.flush()
    elif diff.extra:
        ctx.event("blobs.extra", f"{len(diff.extra)} blob(s) in {dst.describe()} have no source; kept",
                  count=len(diff.extra))
    progress.report()
    return {
        "count": diff.unchanged + diff.to_copy + skipped_by_checkpoint,
        "copied": progress.blobs,
        "bytes_copied": progress.bytes,
        "bytes_sent": progress.bytes_sent,
        "server_side": progress.server_side,
        "unchanged": diff.unchanged + skipped_by_checkpoint,
        "deleted": deleted,
        "kept_without_source": len(diff.extra) if extra == "keep" else 0,
    }


def _first_error(errors: list[BaseException]) -> BaseException:
    # A permanent error explains more than the transient ones it may have caused in sibling workers.
    for exc in errors:
        if isinstance(exc, MigratorError) and not exc.retryable:
            return exc
    return errors[0]


def _plan(ctx: StepContext, params: TransferParams, *, extra: str, what: str, seen: Survey | None = None,
          listing: float | None = None) -> PlanResult:
    """What a transfer would do: from ``seen`` (what check just read) when given, else from fresh listings."""
    src, dst = _open_pair(ctx, params, confirm=seen is None)
    _check_names_fit(ctx, src, dst, iter(seen.source) if seen is not None else None)
    started = time.perf_counter()
    if seen is not None:
        diff = Diff(to_copy=len(seen.pending), to_copy_bytes=sum(info.size for info, _ in seen.pending),
                    unchanged=seen.unchanged, extra=seen.extra)
        source = seen.source
    else:
        diff = compute_diff(src, dst)
        listing = time.perf_counter() - started
        source = {b.name: Compact(b.size, b.md5, b.last_modified) for b in src.list(metadata=False)}
    # The destination listed on its own: what of the measured listing was the destination's.
    started = time.perf_counter()
    dst_count = len(destination_inventory(dst))
    dst_listing = time.perf_counter() - started
    src_listing = max((listing or 0.0) - dst_listing, 0.0)
    sides = ListingSides(src_kind=params.source.kind, src_count=len(source), src_seconds=src_listing,
                         dst_kind=params.destination.kind, dst_count=dst_count, dst_seconds=dst_listing)
    will_hold = _planned_holdings(ctx).get(params.source.cache_key())
    done_now = not diff.to_copy and not (diff.extra and extra == "delete")  # what check finds now
    estimate, diff, projected = transfer_estimate(params, diff, sides, source, will_hold)
    # What the destination holds once this step ran, for the steps after it that read it (a put live from the
    # backup this presync fills).
    _planned_holdings(ctx)[params.destination.cache_key()] = projected
    changes = []
    if diff.to_copy:
        changes.append(f"copy {diff.to_copy} blob(s), {diff.to_copy_bytes} bytes, from {src.describe()} to "
                       f"{dst.describe()}")
    if diff.extra and extra == "delete":
        changes.append(f"delete {len(diff.extra)} blob(s) from {dst.describe()} that are gone at the source")
    details: dict[str, Any] = {"unchanged": diff.unchanged, "to_copy": diff.to_copy, "extra": len(diff.extra)}
    if done_now:
        # The dry-run counts a step its check finds done as free, yet the run checks and verifies it again, and an
        # earlier step may still give it work (a presync filling its source): what the run spends on it.
        details["run_seconds"] = estimate.seconds
    if not changes:
        result = PlanResult.nothing(f"{what}: all {diff.unchanged} blob(s) already in place", **details)
        # Nothing to copy, yet the run lists both sides (check) and the destination again (verify).
        result.estimate = estimate
        if diff.extra:
            result.reason += f"; {len(diff.extra)} destination blob(s) without a source are kept"
        return result
    return PlanResult(changes=changes, reason=f"{what}: {diff.unchanged} blob(s) already in place",
                      estimate=estimate, details=details)


#: Seconds per blob of listing an Azure container, for a container the plan cannot time with blobs in it (a new
#: cloud container a presync fills only in the run): a local storage emulator on 2 cores lists 1,000 blobs
#: (one page, parsed by the SDK) in 80-150 ms.
_ASSUMED_AZURE_LIST_SECONDS_PER_BLOB = 110e-6
#: The same for a folder tree (a directory walk and a stat per file): 1,000 files in 13-16 ms.
_ASSUMED_FOLDER_LIST_SECONDS_PER_BLOB = 15e-6
#: A listing of fewer blobs than this times the request more than the blobs: the assumed rate is used instead.
_MIN_LISTED_TO_MEASURE = 100
#: Source blobs ``blobs.verify``'s plan reads and hashes, as the run does, to time hashing.
HASH_SAMPLE = 48
_PLANNED_KEY = "blobs.plan.will_hold"


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


def transfer_estimate(params: TransferParams, diff: Diff, sides: ListingSides, source: Mapping[str, Compact],
                      will_hold: tuple[int, int] | None = None) -> tuple[Estimate, Diff, tuple[int, int]]:
    """Seconds of a transfer in the run, the diff it would work from, and the blobs and bytes the destination
    then holds.

    Listings, counted as the step makes them: ``check`` lists the source and the destination once, ``apply``
    works from what check read (it lists both again only beyond :data:`SURVEY_LIMIT` blobs to copy), and
    ``verify`` lists the destination once more. Each listing is timed on its side now and projected to the
    blobs that side will hold: a source an earlier step of this plan fills (``will_hold``) holds what that step
    leaves there; a destination a presync before this step fills (``planned_change``, the destination lacking
    more than that share) holds the whole source. Then only the expected delta is copied: that share of the
    source, or, with ``planned_recent_hours``, the share modified that recently when larger.
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
    # check lists both sides (apply again beyond SURVEY_LIMIT), verify the destination as the step leaves it.
    again = 2 if blobs > SURVEY_LIMIT else 1
    listings = again * listing_seconds(src_count, sides.src_count, sides.src_seconds, src_rate) \
        + again * listing_seconds(dst_before, sides.dst_count, sides.dst_seconds, dst_rate) \
        + listing_seconds(dst_after, sides.dst_count, sides.dst_seconds, dst_rate)
    seconds = listings + blobs / _ASSUMED_BLOBS_PER_S + nbytes / _ASSUMED_BYTES_PER_S
    basis = (f"listings {listings:.2f} s: {again} of {src_count} source blob(s) at {src_how}, {again} of "
             f"{dst_before} and 1 of {dst_after} destination blob(s) at {dst_how} (timed now: {sides.src_count} "
             f"and {sides.dst_count} blob(s) in {sides.src_seconds * 1000:.0f} and "
             f"{sides.dst_seconds * 1000:.0f} ms)")
    basis = "; ".join([*parts, basis])
    basis += f"; copies at an assumed {_ASSUMED_BLOBS_PER_S:.0f} blobs/s and {_ASSUMED_BYTES_PER_S / MiB:.0f} MiB/s"
    return Estimate(seconds=seconds, items=blobs, bytes=nbytes, basis=basis), diff, (dst_after, src_bytes)


def _check(ctx: StepContext, params: TransferParams, *, extra: str, attempt: Attempt) -> CheckResult:
    """Done when nothing is left to copy (or delete). Keeps what it read in ``attempt`` for apply and verify."""
    attempt.survey = attempt.source = None
    src, dst = _open_pair(ctx, params)
    started = time.perf_counter()
    seen = survey(ctx, src, dst)
    attempt.listing_seconds = time.perf_counter() - started
    if seen is None:
        return CheckResult(False, f"more than {SURVEY_LIMIT} blob(s) still to copy to {dst.describe()}")
    attempt.survey = seen
    attempt.source = seen.source
    if seen.pending:
        return CheckResult(False, f"{len(seen.pending)} blob(s), for example "
                                  f"{ctx.redactor.redact(repr(seen.pending[0][0].name))}, still to copy to "
                                  f"{dst.describe()}")
    if seen.extra and extra == "delete":
        return CheckResult(False, f"{len(seen.extra)} blob(s) to delete at {dst.describe()}")
    attempt.survey = None  # nothing for apply to do; verify still gets the source inventory
    return CheckResult(True, f"all {seen.unchanged} blob(s) already in place at {dst.describe()}",
                       outputs={"count": seen.unchanged, "copied": 0, "bytes_copied": 0, "bytes_sent": 0,
                                "server_side": 0, "unchanged": seen.unchanged, "deleted": 0,
                                "kept_without_source": 0 if extra == "delete" else len(seen.extra)})


def verify_transfer(ctx: StepContext, params: TransferParams, source: dict[str, Compact]) -> list[str]:
    """Differences between the destination, listed afresh once, and the source inventory this attempt used.

    Sizes always; MD5s where the source has one. A source blob without an MD5 (a folder, or a block upload)
    passes when this step copied it and the destination's Content-MD5 is the MD5 computed from the bytes read,
    or when it was left alone because the destination copy carries an MD5 and was written after the source last
    changed (the step's own "done" rule). Reading every such source blob again is ``blobs.verify``'s job.
    """
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency)
    inventory = destination_inventory(dst)
    missing: list[str] = []
    size: list[str] = []
    content: list[str] = []
    done: dict[str, ItemRecord] | None = None  # read once, and only when a source blob has no MD5
    for name, want in source.items():
        have = inventory.pop(name, None)
        if have is None:
            missing.append(name)
        elif have.size != want.size:
            size.append(name)
        elif want.md5 is not None:
            if have.md5 != want.md5:
                content.append(name)
        else:
            if done is None:
                done = {r.key: r for r in ctx.items.iter("done")}
            record = done.get(name)
            if record is not None and record.status == "done" and record.checksum is not None \
                    and record.bytes == want.size:
                if b64(have.md5) != record.checksum:
                    content.append(name)
            elif not same_content(_as_info(name, want), _as_info(name, have)):
                content.append(name)
    return _problems(ctx, missing, sorted(inventory), size, content, [])


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
    removed = 0
    not_undone = 0
    for record in ctx.items.iter(None):
        if record.status == "done" and isinstance(record.detail, Mapping) and record.detail.get("created"):
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
                        properties: bool = False) -> list[str]:
    """Differences between source and destination: missing, extra, size, MD5 (and properties) mismatches."""
    src, dst = _open_pair(ctx, params)
    inventory: dict[str, BlobInfo] = {b.name: b for b in dst.list(metadata=True)} if properties else {}
    compact = destination_inventory(dst) if not properties else {}
    missing: list[str] = []
    size: list[str] = []
    content: list[str] = []
    props: list[str] = []
    to_hash: list[tuple[BlobInfo, BlobInfo]] = []
    for info in src.list(metadata=properties):
        ctx.raise_if_cancelled()
        if properties:
            other = inventory.pop(info.name, None)
        else:
            have = compact.pop(info.name, None)
            other = _as_info(info.name, have) if have is not None else None
        if other is None:
            missing.append(info.name)
        elif other.size != info.size:
            size.append(info.name)
        elif md5 and (info.md5 is None or other.md5 is None):
            to_hash.append((info, other))
        elif md5 and info.md5 != other.md5:
            content.append(info.name)
        if properties and other is not None and (
                (info.content_type or "application/octet-stream") != (other.content_type or "application/octet-stream")
                or dict(info.metadata) != dict(other.metadata)):
            props.append(info.name)
    if to_hash:
        with ThreadPoolExecutor(getattr(params, "concurrency", 8)) as pool:
            def differs(pair: tuple[BlobInfo, BlobInfo]) -> bool:
                a, b = pair
                return (a.md5 or src.compute_md5(a.name)) != (b.md5 or dst.compute_md5(b.name))
            for pair, bad in zip(to_hash, pool.map(differs, to_hash), strict=True):
                if bad:
                    content.append(pair[0].name)
    return _problems(ctx, missing, sorted(inventory if properties else compact), size, content, props)


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
    """Seconds of ``blobs.verify`` in the run: one listing of each side and the hashing, as ``apply`` does them.

    The destination is listed as it will be: a put live planned before fills it (the dry-run's notes), or, when it
    lacks most source blobs now, it will hold the source's. Its copies then carry an MD5 (every transfer writes
    one), so the run hashes the source blobs without one (and the destination blobs already there without one);
    a sample of them is read and hashed now, the way the run does, and the time scaled by blob count.
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
    listing = src_seconds + listing_seconds(dst_count, len(have), dst_seconds, dst_rate)
    basis = (f"listings {listing:.2f} s: {len(listed)} source blob(s) in {src_seconds * 1000:.0f} ms (timed) and "
             f"{dst_count} at the destination ({how}) at {dst_how}")
    to_hash = [i for i in listed if i.md5 is None or (i.name in have and have[i.name].md5 is None)]
    hashing = 0.0
    if params.compare_md5 and to_hash:
        took, sampled = hash_probe(ctx, src, to_hash, params.concurrency)
        hashing = took * len(to_hash) / sampled
        basis += (f"; {len(to_hash)} blob(s) to read and hash, {sampled} hashed now in {took * 1000:.0f} ms "
                  f"({params.concurrency} threads), {hashing:.2f} s")
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
        self._attempt = Attempt()
        return _check(ctx, self.params, extra=self._extra(), attempt=self._attempt)

    def plan(self, ctx: StepContext) -> PlanResult:
        seen, listing, self._attempt = self._attempt.survey, self._attempt.listing_seconds, Attempt()
        return _plan(ctx, self.params, extra=self._extra(), what=self.label, seen=seen, listing=listing)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        return transfer(ctx, self.params, label=self.label, extra=self._extra(), attempt=self._attempt)

    def _differences(self, ctx: StepContext) -> list[str]:
        """Source against destination: against this attempt's source inventory when there is one."""
        source, self._attempt = self._attempt.source, Attempt()
        if source is None:
            return compare_inventories(ctx, self.params, md5=True)
        return verify_transfer(ctx, self.params, source)

    def compensate(self, ctx: StepContext) -> None:
        _compensate(ctx, self.params)


class Presync(_TransferStep[PresyncParams]):
    """Copies every source blob to the cloud backup container while the tenant is still live.

    Changes: writes blobs into the destination container (never deletes).
    Done when: every source blob is at the destination with the same size and MD5 (or, for a source without
    MD5, written after the source last changed); per-blob checkpoints make a resume skip finished blobs and
    uncommitted blocks make a large blob resume where it stopped.
    Undone by: deleting the blobs this run created at the destination.
    """

    kind = "blobs.presync"
    Params = PresyncParams
    summary = "copy every blob to the cloud backup container while the tenant is live"
    label = "presync"

    def verify(self, ctx: StepContext) -> None:
        # The tenant is live, so new blobs may have appeared since: prove what this step copied, not more.
        self._attempt = Attempt()
        dst = open_blob_store(self.params.destination, ctx, concurrency=self.params.concurrency)
        inventory = destination_inventory(dst)
        wrong = []
        for record in ctx.items.iter("done"):
            have = inventory.get(record.key)
            if have is None or have.size != record.bytes or b64(have.md5) != record.checksum:
                wrong.append(record.key)
        if wrong:
            raise VerificationFailed(f"{self.step_id}: {len(wrong)} copied blob(s) are missing or differ at "
                                     f"{dst.describe()}: {redacted_names(ctx, sorted(wrong))}",
                                     step_id=self.step_id)


class Sync(_TransferStep[SyncParams]):
    """Copies blobs that are new or changed since the last sync, and handles blobs deleted at the source.

    Changes: writes new and changed blobs into the destination; deletes destination blobs whose source is
    gone (or keeps and reports them, ``on_source_deleted: keep``).
    Done when: the destination inventory equals the source's (names, sizes, MD5).
    Undone by: deleting the blobs this run created; overwritten and deleted blobs stay as they are (the
    source still has them).
    """

    kind = "blobs.sync"
    Params = SyncParams
    summary = "copy blobs added or changed since the presync; remove those deleted at the source"
    label = "delta sync"

    def _extra(self) -> Literal["delete", "keep"]:
        return self.params.on_source_deleted

    def verify(self, ctx: StepContext) -> None:
        problems = self._differences(ctx)
        if self.params.on_source_deleted == "keep":
            problems = [p for p in problems if "only at the destination" not in p]
        if problems:
            raise VerificationFailed(f"{self.step_id}: source and destination differ: " + "; ".join(problems),
                                     step_id=self.step_id)


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

    def verify(self, ctx: StepContext) -> None:
        problems = self._differences(ctx)
        if not self.params.delete_extra:
            problems = [p for p in problems if "only at the destination" not in p]
        if problems:
            raise VerificationFailed(f"{self.step_id}: backup and live container differ: " + "; ".join(problems),
                                     step_id=self.step_id)


class Verify(Step[VerifyParams]):
    """Compares source and destination inventories (names, sizes, MD5, and content type and metadata).

    Changes: nothing; it only reads (a blob without a stored MD5 is read through and hashed).
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
        # Changes nothing, yet takes time: both listings, and hashing where a side stores no MD5.
        started = time.perf_counter()
        listed = list(src.list(metadata=self.params.compare_properties))
        src_seconds = time.perf_counter() - started
        started = time.perf_counter()
        have = destination_inventory(dst)
        dst_seconds = time.perf_counter() - started
        result = PlanResult(changes=[], reason=f"read-only: compares {self.params.source.describe()} with "
                                               f"{self.params.destination.describe()}")
        result.estimate = verify_estimate(ctx, self.params, src, listed, src_seconds, have, dst_seconds)
        result.details = {"run_seconds": result.estimate.seconds}
        return result

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        problems = compare_inventories(ctx, self.params, md5=self.params.compare_md5,
                                       properties=self.params.compare_properties)
        if problems:
            raise VerificationFailed(f"{self.step_id}: inventories differ: " + "; ".join(problems),
                                     step_id=self.step_id)
        return {"identical": True}

    def verify(self, ctx: StepContext) -> None:
        return None


__all__ = ["Presync", "PutLive", "Sync", "Verify", "compare_inventories", "same_content", "transfer"]
