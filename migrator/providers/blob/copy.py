"""The copy engine: one blob from one store to another, server-side, streamed, or in resumable blocks.

Server-side (``start_copy_from_url`` with a SAS minted just in time) when the source is reachable by URL and carries
a Content-MD5 that the copy takes along; otherwise streamed through this process in constant memory: up to the
transfer's ``large_blob_threshold`` in one Put Blob, above it in blocks (``stage_block`` + ``commit_block_list``,
staged in parallel) whose ids derive from the source version, so after a restart the uncommitted blocks already at
the destination are kept and only the rest are sent. A blob of up to :data:`IN_MEMORY_PUT` is read into memory;
a larger one is sent in one Put Blob only from a source whose reads can be checked for changes (a local file,
``rereadable``): streamed once as the body, the service computing its MD5 (:meth:`BlobCopier._put_once`). From
any other source it goes in blocks.

Each byte is hashed once (MD5): by this process for a blob in memory or in blocks, by the service for a streamed
Put Blob. The whole blob's digest is the Content-MD5 every destination blob gets (checked against the source's
when it has one); a Put Blob from memory carries it for the service to check, blocks do not carry their own (the
transport, TLS on Azure, protects them on the way; a block left from an earlier attempt is kept only when its
id, tied to the source version, and its size match). Copies keep the source's content type and
metadata. A source with version tokens (a folder: size, mtime, ctime,
inode) also gets :data:`SOURCE_VERSION_KEY` in the copy's metadata: the version the bytes were read from and their
MD5, recorded only when the file's token was the same before and after the read.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from migrator.errors import MigratorError, PermanentError, TransientError
from migrator.providers.blob.azure import AzureBlobStore
from migrator.providers.blob.base import BlobInfo, BlobStore
from migrator.secrets import blob_label

#: Blobs up to this size are read into memory and sent in one request; larger ones are streamed.
IN_MEMORY_PUT = 8 * 1024 * 1024

#: Destination metadata naming the source version a copy was read from, and the MD5 of what was read.
SOURCE_VERSION_KEY = "migrator_source_version"


def source_token(version: str, md5: bytes) -> str:
    """The value of :data:`SOURCE_VERSION_KEY`: the source version and the MD5 of the bytes read from it."""
    return f"{version}:{md5.hex()}"


class CopySettings(Protocol):
    """How blobs are copied (a transfer step's params have these)."""

    @property
    def concurrency(self) -> int: ...  # blobs, and blocks, in flight at once

    @property
    def large_blob_threshold(self) -> int: ...  # larger blobs go in blocks of block_size

    @property
    def block_size(self) -> int: ...

    @property
    def server_side_copy(self) -> bool: ...

    @property
    def copy_poll_interval(self) -> float: ...  # longest wait between copy-status polls


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
    version = hashlib.sha256(f"{info.etag}|{info.size}|{info.last_modified}|{info.version}|{block_size}"
                             .encode()).hexdigest()
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
    """Copies single blobs from ``src`` to ``dst``, as a transfer decides; thread-safe. Each request is retried by
    the store (:mod:`~migrator.providers.blob.retry`); a copy that fails anyway fails the transfer's attempt."""

    def __init__(self, settings: CopySettings, src: BlobStore, dst: BlobStore, *,
                 raise_if_cancelled: Callable[[], None], sleep: Callable[[float], None]) -> None:
        self.params = settings
        self._raise_if_cancelled = raise_if_cancelled
        self._sleep = sleep
        self.src = src
        self.dst = dst
        # Blocks in flight across all blobs: bounds memory to about concurrency x block_size.
        self._block_slots = threading.BoundedSemaphore(settings.concurrency)
        self._block_pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="blob-block")

    def close(self) -> None:
        self._block_pool.shutdown(wait=True, cancel_futures=True)

    def copy(self, info: BlobInfo) -> CopyResult:
        p = self.params
        if p.server_side_copy and info.md5 is not None and isinstance(self.dst, AzureBlobStore):
            url = self.src.copy_source_url(info.name, into=self.dst)
            if url is not None:
                return self._server_side(info, url)
        # One Put Blob up to the threshold from a source read twice for free; from any other, up to what is read
        # into memory. Above, blocks: staged in parallel, resumed block by block.
        single_put = p.large_blob_threshold if self.src.rereadable else min(IN_MEMORY_PUT, p.large_blob_threshold)
        for _ in range(_READS_PER_COPY):
            try:
                if self.dst.supports_blocks and info.size > single_put:
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
            self._raise_if_cancelled()
            self._sleep(delay)
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
        if info.size > IN_MEMORY_PUT and self.dst.supports_blocks:
            return self._put_once(info) if self.dst.hashes_streamed_writes else self._read_twice(info)
        if info.size <= min(IN_MEMORY_PUT, self.params.large_blob_threshold):
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

    def _put_once(self, info: BlobInfo) -> CopyResult:
        """One Put Blob of a rereadable source too large to hold in memory, read once and not hashed here: the
        service computes the MD5 of the body it received (TLS protects it on the way), stores it as the copy's
        Content-MD5 and returns it. The version token then goes on the copy with that MD5 (Set Blob Metadata, on
        condition that the copy is still the one written: a 412 means it was overwritten since, and the copy is
        retried). Killed in between, the copy has no token and is sent again or hashed by verify. A destination
        that returns no MD5 after all gets the copy again, hashed here (:meth:`_read_twice`)."""
        with self.src.open_read(info.name) as stream:
            written = self.dst.write(info.name, _Exactly(stream, info.size),  # type: ignore[arg-type]  # read/seek
                                     length=info.size, content_type=info.content_type,
                                     metadata=self._metadata(info, None), md5=None)
            if written.md5 is None:
                return self._read_twice(info)
            md5 = written.md5
            token = self._token(info, stream, md5)
        self._check_md5(info, md5)
        if token is not None:
            try:
                self.dst.set_metadata(info.name, self._metadata(info, token), etag=written.etag)
            except PermanentError as exc:
                if getattr(exc.__cause__, "status_code", None) == 412:
                    raise _ChangedWhileRead(info.name) from exc  # written by someone else since: copied again
                raise
        return CopyResult(md5=md5, sent=info.size, token=token, size=info.size)

    def _read_twice(self, info: BlobInfo) -> CopyResult:
        """One Put Blob of a rereadable source too large to hold in memory: hashed in a first read, streamed as the
        body in a second with that Content-MD5 (the service refuses a body that does not match it)."""
        with self.src.open_read(info.name) as stream:
            md5 = hashlib.file_digest(stream, _md5).digest()  # type: ignore[arg-type]  # a binary file
            token = self._token(info, stream, md5)
            self._check_md5(info, md5)
            stream.seek(0)
            try:
                self.dst.write(info.name, _Exactly(stream, info.size),  # type: ignore[arg-type]  # read/seek/tell
                               length=info.size, content_type=info.content_type,
                               metadata=self._metadata(info, token), md5=md5)
            except MigratorError as exc:
                if getattr(exc.__cause__, "error_code", None) == "Md5Mismatch":
                    raise _ChangedWhileRead(info.name) from exc  # written between the two reads
                raise
            if info.version is not None and self.src.version_after_read(info.name, stream) != info.version:
                raise _ChangedWhileRead(info.name)
        return CopyResult(md5=md5, sent=info.size, token=token, size=info.size)

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
                    self._raise_if_cancelled()
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


def _md5() -> hashlib._Hash:
    return hashlib.md5(usedforsecurity=False)


class _Exactly:
    """``length`` bytes of a seekable stream, as a request body: a source that ends early (truncated since it was
    hashed) raises :class:`_ChangedWhileRead` instead of leaving the request short; one that grew is cut."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self._stream, self._length = stream, length
        self._start = stream.tell()

    def read(self, size: int = -1) -> bytes:
        left = self._length - (self._stream.tell() - self._start)
        if left <= 0:
            return b""
        data = self._stream.read(left if size is None or size < 0 else min(size, left))
        if not data:
            raise _ChangedWhileRead("the source ended early")
        return data

    def tell(self) -> int:
        return self._stream.tell() - self._start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(self._start + offset, whence) - self._start


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
