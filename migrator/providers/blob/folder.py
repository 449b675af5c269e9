"""A folder tree as a blob store: the self-hosted file store on the source side (or a local target).

A blob name is a relative path with ``/`` separators. Names that would leave the root (``..`` segments,
absolute paths, empty segments, NUL) are refused with an :class:`~migrator.errors.InputError` before anything
is written, and the resolved path is checked against the root as well (symlinks included; once per directory
for the store's lifetime, a run).

What a folder cannot hold itself (content type, metadata, a known MD5) lives in a sidecar JSON file under
``.blobmeta/`` in the root; a sidecar MD5 counts only while the file's size and mtime still match it.
Writes go to a temporary file beside the target and are renamed into place, so a reader never sees half a blob.

Every listed file carries a version token: its size, modification time, status-change time (ctime) and inode
number. User space can set a modification time back (``touch -d``, ``cp -p``, ``rsync -t``) but not a ctime:
any write, rename over or metadata change gives the file a new ctime, so an unchanged token means unchanged
content. Timestamps tick coarsely (a jiffy on Linux, more on some network file systems), so two writes within
one tick could leave the same token: a token read less than :data:`SETTLE_SECONDS` after the file's last change
is not trusted (``trusts_version``), since a write later in the same tick would not change it. A clock on the
file server that runs behind this machine's by more than that margin would defeat it: use ``rehash: all`` there.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import mimetypes
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from migrator.errors import InputError, PermanentError, ProviderError, TransientError, is_retryable
from migrator.providers.blob.base import COPY_CHUNK, BlobInfo, BlobStore
from migrator.secrets import blob_label, os_error_text

META_DIR = ".blobmeta"
_DRIVE = re.compile(r"^[A-Za-z]:($|[/\\])")
_TMP_SUFFIX = ".migrator-tmp"
#: A version token read less than this many seconds after the file last changed is not trusted (module doc).
SETTLE_SECONDS = 1.0


def version_token(stat: os.stat_result) -> str:
    """Size, modification and status-change times (ns) and inode: changes whenever the content may have."""
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}-{stat.st_ctime_ns:x}-{stat.st_ino:x}"


class FolderBlobStore(BlobStore):
    """Blobs as files under ``root`` (optionally under ``prefix`` inside it)."""

    reports_versions = True
    rereadable = True

    def __init__(self, root: str | os.PathLike[str], prefix: str = "", *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise InputError(f"blob folder {self.root} does not exist or is not a directory",
                             hint="check the endpoint's path (and that the share is mounted)")
        self._real_root = self.root.resolve()
        self._inside: set[str] = set()  # directories whose resolved path was found inside the root
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_relative_name(self.prefix, where=str(self.root))

    def describe(self) -> str:
        return f"folder {self.root}" + (f", prefix {self.prefix}" if self.prefix else "")

    # -- names and paths -----------------------------------------------------------------------------------

    def _full_name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def path_of(self, name: str) -> Path:
        """The file that holds ``name``; refuses names that would leave the root."""
        check_relative_name(name, where=self.describe())
        path = self.root / self._full_name(name)
        parent = path.parent
        key = os.fspath(parent)
        if key in self._inside:  # resolved once per directory: a resolve per blob costs more than its upload
            return path
        try:
            parent.resolve().relative_to(self._real_root)
        except ValueError:
            raise InputError(f"blob name {blob_label(name)} resolves outside {self.describe()}",
                             hint="a symbolic link inside the folder points elsewhere; remove it") from None
        self._inside.add(key)
        return path

    def _meta_path(self, name: str) -> Path:
        return self.root / META_DIR / (self._full_name(name) + ".json")

    def _read_meta(self, name: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self._meta_path(name).read_text("utf-8"))
            return meta
        except (OSError, ValueError):
            return {}

    # -- reading -------------------------------------------------------------------------------------------

    def _info_from(self, name: str, filename: str, stat: os.stat_result, *, has_meta: bool | None = None) -> BlobInfo:
        if has_meta is None:
            has_meta = (self.root / META_DIR).is_dir()
        meta = self._read_meta(name) if has_meta else {}
        md5 = None
        if meta.get("md5") and meta.get("size") == stat.st_size and meta.get("mtime_ns") == stat.st_mtime_ns:
            md5 = base64.b64decode(meta["md5"])
        return BlobInfo(
            name=name,
            size=stat.st_size,
            md5=md5,
            etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
            last_modified=stat.st_mtime,
            content_type=meta.get("content_type") or mimetypes.guess_type(filename)[0]
            or "application/octet-stream",
            metadata=dict(meta.get("metadata") or {}),
            version=version_token(stat),
        )

    def list(self, prefix: str = "", *, metadata: bool = True) -> Iterator[BlobInfo]:
        base = self.root / self.prefix if self.prefix else self.root
        if not base.is_dir():
            return
        has_meta = (self.root / META_DIR).is_dir()  # once per listing: a self-hosted source usually has none
        yield from self._walk(os.fspath(base), "", prefix, has_meta, top=not self.prefix)

    def _walk(self, directory: str, rel: str, prefix: str, has_meta: bool, *, top: bool) -> Iterator[BlobInfo]:
        """A directory's files (sorted), then its subdirectories, depth first, as ``os.walk`` orders them; with
        ``os.scandir`` and plain strings (no path objects per file), one stat per file. Symbolic links to
        directories are not followed; the sidecar tree at the root is not part of the inventory."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):  # removed while we walked
            return
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.is_symlink() and not (top and entry.name == META_DIR):
                        subdirs.append(entry)
                    continue
            except OSError:
                continue
            if entry.name.endswith(_TMP_SUFFIX):
                continue
            name = rel + entry.name
            if prefix and not name.startswith(prefix):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # removed while we walked (or a dangling link)
                continue
            yield self._info_from(name, entry.name, stat, has_meta=has_meta)
        for entry in subdirs:
            yield from self._walk(entry.path, f"{rel}{entry.name}/", prefix, has_meta, top=False)

    def info(self, name: str) -> BlobInfo | None:
        path = self.path_of(name)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):  # gone (a folder on its path replaced by a file, too)
            return None
        if not path.is_file():
            return None
        return self._info_from(name, path.name, stat)

    def open_read(self, name: str) -> BinaryIO:
        try:
            return open(self.path_of(name), "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise PermanentError(f"blob {blob_label(name)} not found in {self.describe()}") from None
        except OSError as exc:
            raise _os_error(exc, f"reading blob {blob_label(name)} in {self.describe()}") from None

    def version_after_read(self, name: str, stream: BinaryIO) -> str | None:
        # The open file itself: a rename over the path or an unlink changes this inode's ctime as well.
        return version_token(os.fstat(stream.fileno()))

    def trusts_version(self, version: str) -> bool:
        changed_ns = int(version.split("-")[2], 16)
        return time.time_ns() - changed_ns >= SETTLE_SECONDS * 1e9

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, name: str, data: bytes | BinaryIO, *, length: int | None = None,
              content_type: str | None = None, metadata: Mapping[str, str] | None = None,
              md5: bytes | None = None) -> BlobInfo:
        try:
            return self._write(name, data, content_type=content_type, metadata=metadata, md5=md5)
        except OSError as exc:  # its text quotes the paths, that is the blob's name
            raise _os_error(exc, f"writing blob {blob_label(name)} to {self.describe()}") from None

    def _write(self, name: str, data: bytes | BinaryIO, *, content_type: str | None,
               metadata: Mapping[str, str] | None, md5: bytes | None) -> BlobInfo:
        path = self.path_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with open(tmp, "wb") as out:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    out.write(data)
                    digest.update(data)
                else:
                    while chunk := data.read(COPY_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            if md5 is not None and digest.digest() != md5:
                raise PermanentError(f"blob {blob_label(name)}: content does not match its MD5 while writing to "
                                     f"{self.describe()}", hint="the source changed while it was read; retry")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        stat = path.stat()
        meta_path = self._meta_path(name)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({
            "content_type": content_type, "metadata": dict(metadata or {}),
            "md5": base64.b64encode(digest.digest()).decode(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        }), "utf-8")
        return self._info_from(name, path.name, stat)

    def delete(self, name: str) -> None:
        for path in (self.path_of(name), self._meta_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def compute_md5(self, name: str) -> bytes:
        info = self.info(name)
        if info is not None and info.md5 is not None:
            return info.md5
        return super().compute_md5(name)


def _os_error(exc: OSError, action: str) -> ProviderError:
    """A provider error for ``exc`` without the paths it quotes (file names are blob names, personal data)."""
    message = f"{action}: {os_error_text(exc)}"
    return TransientError(message) if is_retryable(exc) else PermanentError(message)


def check_relative_name(name: str, *, where: str) -> None:
    """Refuses a blob name that is not a plain relative path (``..``, absolute, empty segments, NUL)."""
    problem = None
    if not name:
        problem = "is empty"
    elif "\x00" in name:
        problem = "contains a NUL character"
    elif name.startswith("/") or name.startswith("\\") or _DRIVE.match(name) is not None:
        problem = "is an absolute path"
    else:
        segments = name.replace("\\", "/").split("/")
        if any(s == ".." for s in segments):
            problem = "contains a '..' segment"
        elif any(s in ("", ".") for s in segments):
            problem = "contains an empty or '.' path segment"
        elif segments[0] == META_DIR:
            problem = f"uses the reserved folder {META_DIR}/"
    if problem:
        raise InputError(f"blob name {blob_label(name)} {problem}: it cannot be written under {where}",
                         hint="a folder destination only takes names that stay inside its root; rename the "
                              "blob at the source or exclude it with the endpoint's prefix")
