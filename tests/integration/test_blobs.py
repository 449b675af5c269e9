"""Blob migration steps against Azurite: presync, delta sync, put live, verify, resume, retries, bad input."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import ContainerClient, ContentSettings

from fixtures.services.azurite import CLOUD_ACCOUNT, SOURCE_ACCOUNT, Azurite
from migrator.clock import FakeClock
from migrator.errors import Cancelled, ExitCode, InputError, MigratorError, VerificationFailed
from migrator.providers.blob import (
    PER_RETRY_POLICIES,
    AzureBlobStore,
    BlobAccessError,
    FolderBlobStore,
    azure_rest,
    open_blob_store,
    run_resources,
    store_key,
)
from migrator.providers.blob import copy as copy_engine
from migrator.providers.blob import folder as folder_store
from migrator.secrets import blob_label
from migrator.steps.blobs import SOURCE_VERSION_KEY, Presync, PutLive, Sync, Verify, source_token
from migrator.testing import MemoryContext, MemoryItems, plan_step, run_step
from tests.support.azurite import RequestCounter

pytestmark = pytest.mark.integration

KiB = 1024
# Small blocks keep the multi-block cases fast while still taking several blocks per blob.
BLOCKS = {"large_blob_threshold": 256 * KiB, "block_size": 64 * KiB}
DEEP = "deep/" + "/".join(f"level{i}" for i in range(12)) + "/x"
SPECIAL_NAMES = ["plain.txt", "with space/and more.txt", "unicodé/日本語/файл.txt", "hash#tag.txt",
                 "percent%20literal.txt", "question?mark.txt", DEEP, "zero-bytes.bin"]


def small_name(i: int) -> str:
    return f"files/{i % 17:02d}/doc {i:05d} #ü.txt"


def upload_many(container: ContainerClient, names: list[str], size: int = 64, seed: str = "v1") -> None:
    def one(name: str) -> None:
        body = hashlib.sha256(f"{seed}:{name}".encode()).digest() * (size // 32 + 1)
        container.upload_blob(name, body[:size], overwrite=True, metadata={"origin": "test"},
                              content_settings=ContentSettings(content_type="text/plain"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def upload_in_blocks(container: ContainerClient, name: str, size: int) -> bytes:
    """A multi-block blob with no Content-MD5, as SDK block uploads leave them."""
    data = os.urandom(size)
    client = container.get_blob_client(name)
    ids = []
    for i in range(0, size, 100 * KiB):
        block_id = f"{i:010d}"
        client.stage_block(block_id, data[i:i + 100 * KiB])
        ids.append(block_id)
    client.commit_block_list(ids, content_settings=ContentSettings(content_type="application/x-test"),
                             metadata={"kind": "large"})
    # Azurite stores an MD5 for committed block lists; Azure does not. Clear it to behave like Azure.
    client.set_http_headers(ContentSettings(content_type="application/x-test"))
    return data


def container(azurite: Azurite, account: str, name: str) -> ContainerClient:
    return azurite.service(account).get_container_client(name)


def presynced(azurite: Azurite, containers: dict[str, str], count: int
              ) -> tuple[ContainerClient, list[str], Sync.Params]:
    """``count`` small blobs in the source container, presynced to the backup; the Sync params between them."""
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    names = [small_name(i) for i in range(count)]
    upload_many(src, names)
    params = Sync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                         destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]))
    run_step(Presync("presync", Presync.Params(**params.model_dump(exclude={"on_source_deleted",
                                                                                  "also_delete_from"}))),
             MemoryContext())
    return src, names, params


def inventory(c: ContainerClient) -> dict[str, tuple[int, bytes | None, str | None, dict[str, str]]]:
    out = {}
    for b in c.list_blobs(include=["metadata"]):
        md5 = b.content_settings.content_md5
        out[b.name] = (b.size, bytes(md5) if md5 else None, b.content_settings.content_type, dict(b.metadata))
    return out


def ctx_with(*policies: Any, items: MemoryItems | None = None) -> MemoryContext:
    ctx = MemoryContext(clock=FakeClock())
    if items is not None:
        ctx.items = items
    run_resources(ctx.resources).put(PER_RETRY_POLICIES, list(policies))
    return ctx


@pytest.fixture(params=["rest", "sdk"])
def blob_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that asks for it runs twice: on the REST fast path, and on the SDK API it falls back to."""
    monkeypatch.setenv(azure_rest.FAST_PATH_ENV, "1" if request.param == "rest" else "0")
    return str(request.param)


@pytest.fixture
def containers(azurite: Azurite) -> dict[str, str]:
    return {"source": azurite.create_container(SOURCE_ACCOUNT), "backup": azurite.create_container(CLOUD_ACCOUNT),
            "live": azurite.create_container(CLOUD_ACCOUNT)}


def test_presync_then_changes_sync_put_live_and_verify_reports_identical_inventories(
        azurite: Azurite, containers: dict[str, str]) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    names = [small_name(i) for i in range(2000)]
    upload_many(src, names)
    large = {f"large/video {i}.bin": upload_in_blocks(src, f"large/video {i}.bin", 300 * KiB + i) for i in range(3)}
    source = azurite.endpoint(SOURCE_ACCOUNT, containers["source"])
    backup = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"])
    live = azurite.endpoint(CLOUD_ACCOUNT, containers["live"])

    _, presync_out = run_step(Presync("presync", Presync.Params(source=source, destination=backup, **BLOCKS)),
                              MemoryContext())
    assert presync_out["copied"] == 2003
    assert presync_out["server_side"] == 2000  # small blobs carry an MD5: copied by the service
    backup_inv = inventory(container(azurite, CLOUD_ACCOUNT, containers["backup"]))
    assert all(md5 is not None for _, md5, _, _ in backup_inv.values()), "every destination blob has a Content-MD5"
    for name, data in large.items():
        assert backup_inv[name][1] == hashlib.md5(data).digest()
        assert backup_inv[name][2:] == ("application/x-test", {"kind": "large"})

    # The tenant keeps working: 20 new blobs, 20 changed (one large), 20 deleted.
    upload_many(src, [f"new/{i}.txt" for i in range(20)])
    upload_many(src, names[:19], size=80, seed="v2")
    upload_in_blocks(src, "large/video 0.bin", 310 * KiB)
    for name in names[100:120]:
        src.delete_blob(name)

    sync = Sync("sync", Sync.Params(source=source, destination=backup, **BLOCKS))
    plan = plan_step(sync, MemoryContext())
    assert plan.details == {"unchanged": 2003 - 20 - 20, "to_copy": 40, "extra": 20}
    planning = MemoryContext(dry_run=True)
    assert not sync.check(planning).done
    assert sync.plan(planning).details == plan.details  # the runner's dry run: plan works from what check read
    _, sync_out = run_step(sync, MemoryContext())
    assert (sync_out["copied"], sync_out["deleted"]) == (40, 20)

    _, live_out = run_step(PutLive("live", PutLive.Params(source=backup, destination=live, **BLOCKS)),
                           MemoryContext())
    assert live_out["copied"] == live_out["server_side"] == 2003

    _, verified = run_step(Verify("verify", Verify.Params(source=source, destination=live)), MemoryContext())
    assert verified == {"identical": True, "destination": "listed"}
    live_data = container(azurite, CLOUD_ACCOUNT, containers["live"]).download_blob(names[0]).readall()
    assert live_data == src.download_blob(names[0]).readall()


@pytest.mark.parametrize("destination_kind", ["azure", "folder"])
def test_special_names_and_zero_byte_blobs_copy_with_content_type_and_metadata(
        azurite: Azurite, containers: dict[str, str], blob_api: str, tmp_path: Path, destination_kind: str) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    for name in SPECIAL_NAMES:
        body = b"" if name == "zero-bytes.bin" else name.encode() * 3
        src.upload_blob(name, body, metadata={"owner": "team"},
                        content_settings=ContentSettings(content_type="application/vnd.test"))
    source = azurite.endpoint(SOURCE_ACCOUNT, containers["source"])
    destination = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]) if destination_kind == "azure" \
        else {"kind": "folder", "path": str(tmp_path / "dest")}

    _, out = run_step(Presync("p", Presync.Params(source=source, destination=destination)), MemoryContext())

    assert out["copied"] == len(SPECIAL_NAMES)
    run_step(Verify("v", Verify.Params(source=source, destination=destination)), MemoryContext())
    if destination_kind == "folder":
        assert (tmp_path / "dest" / "unicodé/日本語/файл.txt").read_bytes() == "unicodé/日本語/файл.txt".encode() * 3
        assert (tmp_path / "dest" / "zero-bytes.bin").stat().st_size == 0


def test_delta_sync_after_one_percent_changed_transfers_only_those(
        azurite: Azurite, containers: dict[str, str], blob_api: str) -> None:
    src, names, params = presynced(azurite, containers, 500)
    changed = names[::100]  # 1%
    upload_many(src, changed, seed="v2")

    counter = RequestCounter()
    _, out = run_step(Sync("sync", params), ctx_with(counter))

    assert out["copied"] == len(changed)
    assert sorted(counter.uploads) == sorted(changed)
    assert all(n == 1 for n in counter.uploads.values())


class CancelAfter(MemoryItems):
    """Item store that asks the run to stop once ``limit`` blobs are done: a kill in the middle of a presync."""

    def __init__(self, limit: int, event: threading.Event) -> None:
        super().__init__()
        self.limit, self.event = limit, event

    def record(self, key: str, status: str = "done", **kwargs: Any) -> None:
        super().record(key, status, **kwargs)
        if self.count("done") >= self.limit:
            self.event.set()


@pytest.mark.parametrize("server_side_copy", [True, False], ids=["server-side", "streamed"])
def test_resume_after_stop_mid_presync_uploads_no_completed_blob_again(
        azurite: Azurite, containers: dict[str, str], server_side_copy: bool) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    upload_many(src, [small_name(i) for i in range(300)])
    params = Presync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                            destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]),
                            server_side_copy=server_side_copy, concurrency=4)
    first = ctx_with(RequestCounter())
    first.items = CancelAfter(100, first.cancel_event)
    with pytest.raises(Cancelled):
        run_step(Presync("presync", params), first)
    done_first = first.items.keys("done")
    assert 100 <= len(done_first) < 300

    counter = RequestCounter()
    resumed = ctx_with(counter, items=first.items)
    _, out = run_step(Presync("presync", params), resumed)

    assert not set(counter.uploads) & done_first, "a blob finished before the stop was uploaded again"
    assert out["copied"] == 300 - out["unchanged"]
    assert len(counter.uploads) == out["copied"]
    run_step(Verify("verify", Verify.Params(source=params.source, destination=params.destination)),
             MemoryContext())


class FailBlocksAfter(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Lets ``allowed`` block uploads through, then fails every request: the process dies mid-blob."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed

    def on_request(self, request: Any) -> None:
        if "comp=block" in request.http_request.url and "blocklist" not in request.http_request.url:
            if self.allowed <= 0:
                raise RuntimeError("killed")
            self.allowed -= 1


def test_large_blob_resumes_at_block_level_after_a_failure(azurite: Azurite, containers: dict[str, str],
                                                          blob_api: str) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    data = upload_in_blocks(src, "large.bin", 640 * KiB)  # 10 blocks of 64 KiB
    params = Presync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                            destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]),
                            concurrency=1, attempts_per_blob=1, **BLOCKS)
    with pytest.raises(RuntimeError, match="killed"):
        run_step(Presync("presync", params), ctx_with(FailBlocksAfter(4)))

    counter = RequestCounter()
    run_step(Presync("presync", params), ctx_with(counter))

    assert counter.blocks == {"large.bin": 6}, "only the 6 blocks not staged before the failure are sent"
    backup = container(azurite, CLOUD_ACCOUNT, containers["backup"])
    assert backup.download_blob("large.bin").readall() == data
    assert bytes(backup.get_blob_client("large.bin").get_blob_properties().content_settings.content_md5) == \
        hashlib.md5(data).digest()


class FailFirst(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Turns the first ``times`` blob uploads into the given fault (after Azurite answered)."""

    def __init__(self, fault: int | str, times: int) -> None:
        super().__init__()
        self.fault, self.times, self.seen = fault, times, 0

    def on_request(self, request: Any) -> None:
        if self.fault == "timeout" and self._counts(request):
            raise ServiceResponseError("read timed out")

    def on_response(self, request: Any, response: Any) -> None:
        if isinstance(self.fault, int) and self._counts(request):
            response.http_response.status_code = self.fault

    def _counts(self, request: Any) -> bool:
        if request.http_request.method != "PUT" or self.seen >= self.times:
            return False
        self.seen += 1
        return True


@pytest.mark.parametrize(("fault", "outcome"), [
    (429, "retried"), (500, "retried"), (503, "retried"), ("timeout", "retried"),
    (403, "fails fast"), (404, "fails fast"),
])
def test_provider_faults_are_retried_or_fail_fast(azurite: Azurite, containers: dict[str, str],
                                                  fault: int | str, outcome: str) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    upload_many(src, ["a.txt", "b.txt"])
    # The store retries each request (the one retry layer below the step's): twice here, waiting next to nothing.
    destination = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]) | {"retry_total": 2, "retry_backoff": 0.01}
    params = Presync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                            destination=destination, concurrency=1, server_side_copy=False)
    policy = FailFirst(fault, times=2)
    if outcome == "retried":
        _, out = run_step(Presync("p", params), ctx_with(policy))
        assert out["copied"] == 2
        assert policy.seen == 2
    else:
        with pytest.raises(MigratorError) as raised:
            run_step(Presync("p", params), ctx_with(policy))
        assert not raised.value.retryable
        assert policy.seen == 1, "a permanent fault is not retried"
        assert f"container {containers['backup']}" in str(raised.value)


BAD_INPUT = ["wrong source key", "wrong destination key", "missing destination container", "name escapes folder"]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_fails_with_a_clear_error_and_writes_nothing(azurite: Azurite, containers: dict[str, str],
                                                              tmp_path: Path, case: str) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    upload_many(src, ["ok-1.txt", "ok-2.txt"])
    source = azurite.endpoint(SOURCE_ACCOUNT, containers["source"])
    destination: dict[str, Any] = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"])
    expected: str
    if case == "wrong source key":
        source["account_key"] = azurite.cloud_key
        expected = f"account source, container {containers['source']}"
    elif case == "wrong destination key":
        destination["account_key"] = azurite.source_key
        expected = f"account cloud, container {containers['backup']}"
    elif case == "missing destination container":
        destination["container"] = "does-not-exist"
        expected = "container does-not-exist failed: the container does not exist"
    else:
        src.upload_blob("..\\..\\escape.txt", b"x")
        destination = {"kind": "folder", "path": str(tmp_path / "dest")}
        expected = "contains a '..' segment"

    with pytest.raises(MigratorError) as raised:
        run_step(Presync("p", Presync.Params(source=source, destination=destination)), MemoryContext())

    assert isinstance(raised.value, (InputError, BlobAccessError))
    assert raised.value.exit_code == ExitCode.INVALID_INPUT
    assert expected in raised.value.one_line()
    assert raised.value.hint
    if destination["kind"] == "folder":
        assert not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    else:
        assert inventory(container(azurite, CLOUD_ACCOUNT, containers["backup"])) == {}


def test_verify_names_missing_changed_and_extra_blobs(azurite: Azurite, containers: dict[str, str]) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    upload_many(src, ["same.txt", "changed.txt", "missing.txt"])
    dst = container(azurite, CLOUD_ACCOUNT, containers["backup"])
    upload_many(dst, ["same.txt", "extra.txt"])
    upload_many(dst, ["changed.txt"], seed="other")
    params = Verify.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                           destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]))

    with pytest.raises(VerificationFailed) as raised:
        run_step(Verify("verify", params), MemoryContext())

    message = str(raised.value)
    assert f"1 missing at the destination: {blob_label('missing.txt')}" in message
    assert f"1 only at the destination: {blob_label('extra.txt')}" in message
    assert f"1 MD5 differs: {blob_label('changed.txt')}" in message
    assert "same.txt" not in message and blob_label("same.txt") not in message


def test_compensate_removes_only_blobs_the_run_created(azurite: Azurite, containers: dict[str, str],
                                                      blob_api: str) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    upload_many(src, ["new-1.txt", "new-2.txt", "already-there.txt"])
    dst = container(azurite, CLOUD_ACCOUNT, containers["backup"])
    upload_many(dst, ["already-there.txt"], seed="older")
    step = Presync("p", Presync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, containers["source"]),
                                       destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"])))
    ctx = MemoryContext()
    run_step(step, ctx)

    step.compensate(ctx)

    assert sorted(inventory(dst)) == ["already-there.txt"]


class RequestLog(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Records (method, account, what) for every try of every request: what = "list", "container" or "blob"."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []

    def on_request(self, request: Any) -> None:
        from urllib.parse import parse_qs, urlsplit

        http = request.http_request
        parts = urlsplit(http.url)
        query = parse_qs(parts.query)
        segments = parts.path.split("/", 3)  # '', account, container, blob
        what = "list" if query.get("comp") == ["list"] else "metadata" if query.get("comp") == ["metadata"] \
            else "blob" if len(segments) > 3 else "container"
        with self._lock:
            self.requests.append((http.method, segments[1], what))

    def count(self, method: str, account: str, what: str) -> int:
        return self.requests.count((method, account, what))


def write_folder(root: Path, names: list[str], seed: str = "v1", *, age: float = 0.0) -> None:
    """Files of 128 bytes; ``age`` seconds old (a folder has no MD5: a delta sync goes by modification time)."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest() * 4)
        if age:
            stamp = path.stat().st_mtime - age
            os.utime(path, (stamp, stamp))


@pytest.mark.parametrize("metadata", [True, False], ids=["with-metadata", "without-metadata"])
def test_paged_plain_listing_matches_the_sdk_listing(azurite: Azurite, containers: dict[str, str], blob_api: str,
                                                     monkeypatch: pytest.MonkeyPatch, metadata: bool) -> None:
    src = container(azurite, SOURCE_ACCOUNT, containers["source"])
    for name in [*SPECIAL_NAMES, "other/outside-the-prefix.txt"]:
        src.upload_blob(f"tenant/{name}" if not name.startswith("other/") else name, name.encode(),
                        metadata={"owner": "team"}, content_settings=ContentSettings(content_type="x/y"))
    monkeypatch.setattr(azure_rest, "LIST_PAGE", 3)  # several pages from a handful of blobs
    store = open_blob_store(azurite.endpoint(SOURCE_ACCOUNT, containers["source"], prefix="tenant"),
                            MemoryContext())
    assert isinstance(store, AzureBlobStore)

    listed = {b.name: b for b in store.list(metadata=metadata)}

    expected = {}
    for props in src.list_blobs(name_starts_with="tenant/", include=["metadata"]):
        md5 = props.content_settings.content_md5
        expected[props.name.removeprefix("tenant/")] = (
            props.size, bytes(md5) if md5 else None, props.etag.strip('"'), props.last_modified.timestamp(),
            props.content_settings.content_type, dict(props.metadata) if metadata else {})
    assert sorted(listed) == sorted(SPECIAL_NAMES)
    assert {n: (b.size, b.md5, b.etag, b.last_modified, b.content_type, dict(b.metadata))
            for n, b in listed.items()} == expected


def test_folder_presync_sends_one_request_per_small_blob_and_lists_each_side_once_per_phase(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path) -> None:
    names = [small_name(i) for i in range(150)]
    write_folder(tmp_path / "src", names)
    params = Presync.Params(source={"kind": "folder", "path": str(tmp_path / "src")},
                            destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]), concurrency=4)
    log = RequestLog()

    _, out = run_step(Presync("presync", params), ctx_with(log))

    assert out["copied"] == 150
    blob_requests = [r for r in log.requests if r[2] == "blob"]
    assert blob_requests == [("PUT", CLOUD_ACCOUNT, "blob")] * 150, "one Put Blob each, no follow-up reads"
    assert log.count("GET", CLOUD_ACCOUNT, "list") == 2, "check and verify list the destination once each"
    stored = inventory(container(azurite, CLOUD_ACCOUNT, containers["backup"]))
    name = names[7]
    assert stored[name][1] == hashlib.md5((tmp_path / "src" / name).read_bytes()).digest()
    assert stored[name][2] == "text/plain"  # guessed from the file name, as the folder store reports it


class RewriteBetweenReads(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Rewrites ``path`` (same size, other bytes) just before the first Put Blob of ``name`` goes out: after the
    copy hashed the file, before it streams it."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__()
        self.path, self.name, self.done = path, name, False

    def on_request(self, request: Any) -> None:
        http = request.http_request
        if not self.done and http.method == "PUT" and http.url.split("?")[0].endswith(self.name):
            self.done = True
            self.path.write_bytes(os.urandom(self.path.stat().st_size))


@pytest.mark.parametrize("rewrite", [False, True], ids=["steady", "rewritten-between-reads"])
def test_a_folder_blob_beyond_what_is_read_into_memory_goes_in_one_put_blob_hashed_by_the_service(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path, blob_api: str, rewrite: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_engine, "IN_MEMORY_PUT", 64 * KiB)  # streamed from 64 KiB instead of 8 MiB
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)
    root = tmp_path / "src"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(300 * KiB))
    params = Presync.Params(source={"kind": "folder", "path": str(root)},
                            destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]))
    log = RequestLog()
    policies: list[Any] = [log] + ([RewriteBetweenReads(root / "big.bin", "big.bin")] if rewrite else [])

    _, out = run_step(Presync("presync", params), ctx_with(*policies))

    assert out["copied"] == 1 and out["bytes_sent"] == 300 * KiB
    puts = [r for r in log.requests if r[0] == "PUT"]
    # On the fast path, read once, not hashed here: the service's MD5 of the body, then the version token with it
    # (rewritten while it was sent: the version after the read differs, so the copy reads the file again and
    # sends it once more, and only that copy gets a token). Through the SDK (which would cut a large stream into
    # blocks), hashed in a first read and sent with its Content-MD5 in a second (rewritten after it was hashed:
    # the service refuses the body against it, and the copy reads and sends the new version).
    token = [("PUT", CLOUD_ACCOUNT, "metadata")] if blob_api == "rest" else []
    assert puts == [("PUT", CLOUD_ACCOUNT, "blob")] * (2 if rewrite else 1) + token, "one Put Blob a read, no blocks"
    stored = container(azurite, CLOUD_ACCOUNT, containers["backup"]).get_blob_client("big.bin")
    props = stored.get_blob_properties()
    content = (root / "big.bin").read_bytes()
    assert stored.download_blob().readall() == content
    assert bytes(props.content_settings.content_md5) == hashlib.md5(content).digest()
    version = folder_store.version_token((root / "big.bin").stat())
    assert props.metadata[SOURCE_VERSION_KEY] == source_token(version, hashlib.md5(content).digest())


class OverwriteBeforeToken(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Before the first Set Blob Metadata of ``name``, someone else writes that blob: its ETag moves on."""

    def __init__(self, blob: Any) -> None:
        super().__init__()
        self.blob, self.done = blob, False

    def on_request(self, request: Any) -> None:
        http = request.http_request
        if not self.done and http.method == "PUT" and "comp=metadata" in http.url:
            self.done = True
            self.blob.upload_blob(b"someone else's", overwrite=True)


def test_a_copy_overwritten_before_its_token_is_set_is_sent_again(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_engine, "IN_MEMORY_PUT", 64 * KiB)
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)
    root = tmp_path / "src"
    root.mkdir()
    content = os.urandom(200 * KiB)
    (root / "big.bin").write_bytes(content)
    stored = container(azurite, CLOUD_ACCOUNT, containers["backup"]).get_blob_client("big.bin")
    params = Presync.Params(source={"kind": "folder", "path": str(root)},
                            destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]))
    log = RequestLog()

    _, out = run_step(Presync("presync", params), ctx_with(log, OverwriteBeforeToken(stored)))

    # the token is set only on the copy still written (If-Match): the overwritten one is sent again
    blob, metadata = ("PUT", CLOUD_ACCOUNT, "blob"), ("PUT", CLOUD_ACCOUNT, "metadata")
    assert [r for r in log.requests if r[0] == "PUT"] == [blob, metadata, blob, metadata]
    assert out["copied"] == 1
    assert stored.download_blob().readall() == content
    props = stored.get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(content).digest()
    version = folder_store.version_token((root / "big.bin").stat())
    assert props.metadata[SOURCE_VERSION_KEY] == source_token(version, hashlib.md5(content).digest())


def test_delta_sync_attempt_lists_each_side_once_and_verify_reads_back_only_what_it_changed(
        azurite: Azurite, containers: dict[str, str]) -> None:
    src, names, params = presynced(azurite, containers, 200)
    upload_many(src, names[::100], seed="v2")
    src.delete_blob(names[1])
    log = RequestLog()

    _, out = run_step(Sync("sync", params), ctx_with(log))

    assert (out["copied"], out["deleted"]) == (2, 1)
    assert log.count("GET", SOURCE_ACCOUNT, "list") == 1
    assert log.count("GET", CLOUD_ACCOUNT, "list") == 1, "check lists the destination; verify does not again"
    assert log.count("HEAD", CLOUD_ACCOUNT, "blob") == 3, "verify reads back the 2 copies and the 1 deletion"


def test_sync_verify_from_a_folder_source_catches_a_destination_blob_changed_after_the_copy(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path) -> None:
    names = [f"docs/{i}.txt" for i in range(20)]
    write_folder(tmp_path / "src", names, age=3600)
    params = Sync.Params(source={"kind": "folder", "path": str(tmp_path / "src")},
                         destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]))
    run_step(Sync("first", params), MemoryContext())  # everything copied and verified
    write_folder(tmp_path / "src", names[:2], seed="v2")
    step, ctx = Sync("sync", params), MemoryContext()
    assert not step.check(ctx).done
    assert step.apply(ctx)["copied"] == 2
    backup = container(azurite, CLOUD_ACCOUNT, containers["backup"])
    body = b"tampered".ljust(128, b".")  # same size as the copy, other content, a Content-MD5 of its own
    backup.upload_blob(names[0], body, overwrite=True,
                       content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(body).digest())))

    with pytest.raises(VerificationFailed, match=re.escape(f"1 MD5 differs: {blob_label('docs/0.txt')}")):
        step.verify(ctx)


class ReadLog:
    """Records every source file a folder store opens for reading (copies and hashing alike)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        original = FolderBlobStore.open_read

        def open_read(store: FolderBlobStore, name: str) -> Any:
            self.names.append(name)
            return original(store, name)

        monkeypatch.setattr(FolderBlobStore, "open_read", open_read)


def rewrite_keeping_size_and_mtime(path: Path, fill: bytes = b"#") -> None:
    """New content of the same size, the modification time set back to what it was (as ``cp -p`` would)."""
    stat = path.stat()
    path.write_bytes(fill * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once (they were all written a moment ago)."""
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)


@pytest.mark.usefixtures("settled")
def test_verify_reads_only_source_files_whose_version_changed_and_names_one_rewritten_with_its_mtime_restored(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"docs/{i}.txt" for i in range(20)]
    write_folder(tmp_path / "src", names, age=3600)
    source = {"kind": "folder", "path": str(tmp_path / "src")}
    backup = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"])
    run_step(Presync("presync", Presync.Params(source=source, destination=backup)), MemoryContext())
    stored = inventory(container(azurite, CLOUD_ACCOUNT, containers["backup"]))
    assert all(SOURCE_VERSION_KEY in meta for *_, meta in stored.values()), "each copy records its source version"
    reads = ReadLog(monkeypatch)
    verify = Verify("verify", Verify.Params(source=source, destination=backup))

    assert run_step(verify, MemoryContext())[1] == {"identical": True, "destination": "listed"}
    assert reads.names == [], "no source file is read while its version is the one its copy recorded"

    rewrite_keeping_size_and_mtime(tmp_path / "src" / names[3])
    with pytest.raises(VerificationFailed, match=re.escape(f"1 MD5 differs: {blob_label('docs/3.txt')}")):
        run_step(verify, MemoryContext())
    assert reads.names == [names[3]], "only the file whose ctime moved on is read"

    reads.names.clear()
    with pytest.raises(VerificationFailed, match=re.escape(f"1 MD5 differs: {blob_label('docs/3.txt')}")):
        run_step(Verify("verify", Verify.Params(source=source, destination=backup, rehash="all")), MemoryContext())
    assert sorted(reads.names) == sorted(names), "rehash: all reads every file"

    _, out = run_step(Sync("sync", Sync.Params(source=source, destination=backup)), MemoryContext())
    assert out["copied"] == 1, "the delta sync sees the change by the version, although size and mtime are the same"
    reads.names.clear()
    assert run_step(verify, MemoryContext())[1] == {"identical": True, "destination": "listed"}
    assert reads.names == []


def test_a_copy_read_less_than_a_timestamp_tick_after_a_change_records_no_version(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "src", ["a.txt", "b.txt"])
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 3600.0)  # every file changed "just now"
    source = {"kind": "folder", "path": str(tmp_path / "src")}
    backup = azurite.endpoint(CLOUD_ACCOUNT, containers["backup"])
    run_step(Presync("presync", Presync.Params(source=source, destination=backup)), MemoryContext())
    assert all(SOURCE_VERSION_KEY not in meta
               for *_, meta in inventory(container(azurite, CLOUD_ACCOUNT, containers["backup"])).values())
    reads = ReadLog(monkeypatch)

    run_step(Verify("verify", Verify.Params(source=source, destination=backup)), MemoryContext())

    assert sorted(reads.names) == ["a.txt", "b.txt"], "without a recorded version the source is read and hashed"


class ChangesOnFirstRead(FolderBlobStore):
    """A folder whose file ``name`` is rewritten (same size) right after it is first opened for reading."""

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root)
        self.name, self.opened = name, 0

    def open_read(self, name: str) -> Any:
        stream = super().open_read(name)
        if name == self.name:
            self.opened += 1
            if self.opened == 1:
                rewrite_keeping_size_and_mtime(self.path_of(name), b"2")
        return stream


@pytest.mark.usefixtures("settled")
def test_a_source_file_written_while_it_is_copied_is_read_again_and_the_copy_records_the_new_version(
        azurite: Azurite, containers: dict[str, str], tmp_path: Path) -> None:
    write_folder(tmp_path / "src", ["a.txt", "b.txt"])
    source = {"kind": "folder", "path": str(tmp_path / "src")}
    params = Presync.Params(source=source, destination=azurite.endpoint(CLOUD_ACCOUNT, containers["backup"]),
                            concurrency=1)
    ctx = MemoryContext()
    store = ChangesOnFirstRead(tmp_path / "src", "a.txt")
    run_resources(ctx.resources).put(store_key(params.source, 1), store)

    run_step(Presync("presync", params), ctx)

    assert store.opened == 2
    backup = container(azurite, CLOUD_ACCOUNT, containers["backup"])
    assert backup.download_blob("a.txt").readall() == (tmp_path / "src" / "a.txt").read_bytes()
    now = store.info("a.txt")
    assert now is not None and now.version is not None
    body = (tmp_path / "src" / "a.txt").read_bytes()
    assert inventory(backup)["a.txt"][3][SOURCE_VERSION_KEY] == source_token(now.version, hashlib.md5(body).digest())


def test_a_server_side_copy_within_one_account_names_its_source_without_a_sas(
        azurite: Azurite, containers: dict[str, str]) -> None:
    ctx = MemoryContext()
    source, backup, live = (open_blob_store(azurite.endpoint(account, containers[kind]), ctx)
                            for account, kind in ((SOURCE_ACCOUNT, "source"), (CLOUD_ACCOUNT, "backup"),
                                                  (CLOUD_ACCOUNT, "live")))

    within = backup.copy_source_url("a b.txt", into=live)
    across = source.copy_source_url("a b.txt", into=live)

    assert within is not None and "sig=" not in within and within.endswith("/a%20b.txt")
    assert across is not None and "sig=" in across, "another account's blob is read through a SAS"
