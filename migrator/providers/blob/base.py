"""The narrow interface every blob store offers the steps: list, read, write, delete, by blob name.

Stores that can do more say so: ``supports_blocks`` (stage blocks, list the uncommitted ones after a restart,
commit a list) for block-level resume of large blobs, ``copy_source_url`` / ``start_copy`` for server-side
copies, and ``reports_versions`` for stores whose listing carries a content version token (a folder: size,
modification and change times, inode) that lets a copy's MD5 be reused instead of reading the blob again.
Names are always relative to the store's prefix.
"""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

COPY_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    """What an inventory knows of one blob. ``md5`` is the Content-MD5 (16 bytes) when the store has one."""

    name: str
    size: int
    md5: bytes | None = None
    etag: str | None = None
    last_modified: float | None = None  # POSIX seconds
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: A token that changes whenever the content may have changed, from stores that have one
    #: (``reports_versions``); None elsewhere.
    version: str | None = None


class BlobStore(ABC):
    """A container of blobs: an Azure Storage container, or a folder tree on a self-hosted file store."""

    @abstractmethod
    def describe(self) -> str:
        """Where this is, for messages ("account src, container tenant-files"); never a secret."""

    @abstractmethod
    def list(self, prefix: str = "", *, metadata: bool = True) -> Iterator[BlobInfo]:
        """Every blob under ``prefix``, streamed (an inventory may hold hundreds of thousands).

        ``metadata=False`` says the caller needs no metadata (or content type); a store may then list cheaper.
        """

    @abstractmethod
    def info(self, name: str) -> BlobInfo | None:
        """One blob's properties, or None when it does not exist."""

    @abstractmethod
    def open_read(self, name: str) -> BinaryIO:
        """A stream of the blob's content, read in constant memory."""

    @abstractmethod
    def write(self, name: str, data: bytes | BinaryIO, *, length: int | None = None,
              content_type: str | None = None, metadata: Mapping[str, str] | None = None,
              md5: bytes | None = None) -> BlobInfo:
        """Writes a whole blob (replacing it)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Removes a blob; no error when it is already gone."""

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as stream:
            return stream.read()

    # Optional capabilities: a store that lacks one keeps these defaults.

    #: Whether ``stage_block``/``staged_blocks``/``commit_blocks`` work (block-level resume of large blobs).
    supports_blocks: bool = False

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        raise NotImplementedError(f"{self.describe()}: blocks are not supported")

    def staged_blocks(self, name: str) -> dict[str, int]:
        """Uncommitted blocks of ``name`` (id -> size): what a restart can keep."""
        raise NotImplementedError(f"{self.describe()}: blocks are not supported")

    def commit_blocks(self, name: str, block_ids: builtins.list[str], *, content_type: str | None = None,
                      metadata: Mapping[str, str] | None = None, md5: bytes | None = None) -> BlobInfo:
        raise NotImplementedError(f"{self.describe()}: blocks are not supported")

    #: Whether a stream written without an MD5 (``write`` with ``md5=None`` and a length) goes in one request
    #: whose body the service hashes, the result carrying that MD5 (and ``set_metadata`` works).
    hashes_streamed_writes: bool = False

    def set_metadata(self, name: str, metadata: Mapping[str, str], *, etag: str | None) -> None:
        """Replaces the metadata of ``name``, only while its ETag is still ``etag`` (where given); a blob written
        since fails (a transient error: the copy is retried). Stores with blocks have it."""
        raise NotImplementedError(f"{self.describe()}: metadata cannot be set on its own")

    #: Whether reading a blob a second time costs no more than a local file read (a folder): a blob too large to
    #: hold in memory may then be read once to hash it and again to send it in one request.
    rereadable: bool = False

    #: Whether ``list``/``info`` report a ``version`` token and ``version_after_read`` can confirm it.
    reports_versions: bool = False

    def version_after_read(self, name: str, stream: BinaryIO) -> str | None:
        """The version of ``name`` as seen through ``stream`` (opened by ``open_read``) once it has been read.

        Equal to the version listed before the read only when nothing wrote the blob in between, so that the
        bytes read are that version's. None from stores without versions.
        """
        return None

    def trusts_version(self, version: str) -> bool:
        """Whether ``version``, read just now, may be recorded with the MD5 of the bytes read: no later write can
        leave the blob with the same version (a folder: its last change is older than a timestamp tick)."""
        return True

    def inventory_identity(self) -> tuple[str, str] | None:
        """Which blobs this store sees, for an inventory kept in memory between steps: the container's address
        (never a credential) and the prefix inside it. None for stores whose listing is cheap enough to make
        every time (a folder: a directory walk)."""
        return None

    def copy_source_url(self, name: str, *, into: BlobStore | None = None) -> str | None:
        """A URL the store ``into`` can copy ``name`` from server-side, or None. It carries a SAS minted just in
        time, except where ``into`` is in the same account and authorizes the read with its own credential."""
        return None

    def start_copy(self, name: str, source_url: str) -> str:
        """Starts a server-side copy into ``name``; returns its status ("success", "pending"...)."""
        raise NotImplementedError(f"{self.describe()}: server-side copy is not supported")

    def copy_status(self, name: str) -> tuple[str | None, str | None]:
        """(status, description) of the last server-side copy into ``name``; (None, None) when there was none."""
        return None, None

    def compute_md5(self, name: str) -> bytes:
        """The MD5 of the content, read through (for stores or blobs without a stored Content-MD5)."""
        digest = hashlib.md5(usedforsecurity=False)
        with self.open_read(name) as stream:
            while chunk := stream.read(COPY_CHUNK):
                digest.update(chunk)
        return digest.digest()

    def close(self) -> None:
        """Releases connections; the store is not used afterwards."""
        return None
