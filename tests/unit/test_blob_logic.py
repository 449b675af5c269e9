"""Pure logic of blob migration: endpoint validation, safe folder names, change detection, error mapping."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from pydantic import ValidationError

from migrator.errors import ExitCode, InputError, PermanentError, TransientError
from migrator.providers.blob import (
    PER_RETRY_POLICIES,
    AzureBlobStore,
    BlobEndpoint,
    BlobInfo,
    FolderBlobStore,
    _settle_environment,
    check_relative_name,
    open_blob_store,
    run_resources,
    translate_error,
)
from migrator.providers.blob import folder as folder_store
from migrator.providers.blob.azure_rest import FAST_PATH_ENV, missing_borrowings, parse_listing
from migrator.providers.blob.errors import response_error
from migrator.providers.blob.retry import BackoffRetry
from migrator.secrets import Secret
from migrator.steps.blobs import (
    SOURCE_VERSION_KEY,
    CachedInventory,
    Compact,
    Diff,
    InventoryCache,
    ListingSides,
    PutLive,
    Sync,
    block_ids,
    same_content,
    source_token,
    transfer_estimate,
)
from migrator.testing import MemoryContext

AZ = {"kind": "azure", "account_url": "https://acct.blob.core.windows.net", "container": "files"}


@pytest.mark.parametrize(("fields", "problem"), [
    ({**AZ, "account_key": "${env:KEY}"}, None),
    ({**AZ, "credential": "default"}, None),
    ({"kind": "azure", "container": "c", "connection_string": "${env:CS}"}, None),
    ({"kind": "folder", "path": "/srv/files"}, None),
    ({**AZ}, "exactly one of"),
    ({**AZ, "account_key": "k", "sas": "s"}, "exactly one of"),
    ({"kind": "azure", "container": "c", "account_key": "k"}, "account_url"),
    ({**AZ, "container": None, "account_key": "k"}, "container"),
    ({"kind": "folder"}, "path"),
    ({"kind": "folder", "path": "/x", "account_key": "k"}, "takes no account_key"),
    ({**AZ, "account_key": "k", "surprise": 1}, "Extra inputs"),
])
def test_blob_endpoint_validation(fields: dict[str, Any], problem: str | None) -> None:
    if problem is None:
        BlobEndpoint.model_validate(fields)
    else:
        with pytest.raises(ValidationError, match=problem):
            BlobEndpoint.model_validate(fields)


def test_blob_endpoint_keeps_secrets_as_references() -> None:
    endpoint = BlobEndpoint.model_validate({**AZ, "account_key": "${env:BACKUP_KEY}"})
    assert endpoint.account_key == Secret("${env:BACKUP_KEY}")
    assert "${env:BACKUP_KEY}" in endpoint.model_dump_json()
    assert "BACKUP_KEY" not in endpoint.describe()


@pytest.mark.parametrize(("name", "problem"), [
    ("a/b/c.txt", None),
    ("unicodé/файл #1 %20?.txt", None),
    ("a..b/c..", None),
    ("c:colon-is-fine", None),
    ("../x", "'..' segment"),
    ("a/../../x", "'..' segment"),
    ("a\\..\\x", "'..' segment"),
    ("/etc/passwd", "absolute path"),
    ("\\\\server\\share", "absolute path"),
    ("C:/Windows", "absolute path"),
    ("a//b", "empty or '.'"),
    ("a/./b", "empty or '.'"),
    ("", "is empty"),
    ("a\x00b", "NUL"),
    (".blobmeta/x.json", "reserved"),
])
def test_folder_names_that_would_escape_the_root_are_refused(name: str, problem: str | None) -> None:
    if problem is None:
        check_relative_name(name, where="folder /dest")
    else:
        with pytest.raises(InputError, match=problem) as raised:
            check_relative_name(name, where="folder /dest")
        assert raised.value.exit_code == ExitCode.INVALID_INPUT


def test_folder_store_refuses_a_symlink_leading_outside_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = FolderBlobStore(root)

    with pytest.raises(InputError, match="outside"):
        store.write("link/x.txt", b"data")
    assert list(outside.iterdir()) == []


def test_folder_store_round_trips_content_type_metadata_and_md5(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "root", create=True)
    store.write("a/b.bin", b"hello", content_type="x/y", metadata={"k": "v"})

    info = store.info("a/b.bin")
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (5, "x/y", {"k": "v"})
    assert info.md5 == bytes.fromhex("5d41402abc4b2a76b9719d911017c592")
    assert [b.name for b in store.list()] == ["a/b.bin"]  # the sidecar is not part of the inventory

    (tmp_path / "root" / "a" / "b.bin").write_bytes(b"changed")
    assert store.info("a/b.bin").md5 is None  # type: ignore[union-attr]  # a stale sidecar MD5 no longer counts


def blob(size: int = 10, md5: bytes | None = b"1" * 16, modified: float | None = 100.0, version: str | None = None,
         recorded: str | None = None) -> BlobInfo:
    return BlobInfo(name="n", size=size, md5=md5, last_modified=modified, version=version,
                    metadata={SOURCE_VERSION_KEY: recorded} if recorded is not None else {})


M1, M2 = b"1" * 16, b"2" * 16


@pytest.mark.parametrize(("source", "destination", "same"), [
    (blob(), blob(modified=50.0), True),  # MD5 decides when the source has one
    (blob(), blob(md5=b"2" * 16), False),
    (blob(size=10), blob(size=11), False),
    (blob(md5=None, modified=100.0), blob(modified=101.0), True),  # no MD5: written after the last change
    (blob(md5=None, modified=100.0), blob(modified=100.0), False),  # same second: copy again to be safe
    (blob(md5=None, modified=100.0), blob(modified=99.0), False),
    (blob(md5=None), blob(md5=None, modified=200.0), False),  # a destination without MD5 is never current
    (blob(md5=None, modified=None), blob(), False),
    # a copy that recorded the source version it was read from: current exactly while the source has it
    (blob(md5=None, version="v1"), blob(modified=50.0, recorded=source_token("v1", M1)), True),
    (blob(md5=None, version="v2"), blob(modified=200.0, recorded=source_token("v1", M1)), False),  # mtime restored
    (blob(md5=None, version="v1"), blob(md5=M2, recorded=source_token("v1", M1)), False),  # MD5 changed since
    (blob(md5=None, version=None), blob(modified=101.0, recorded=source_token("v1", M1)), True),  # no version: mtime
])
def test_same_content_decides_what_a_delta_sync_copies(source: BlobInfo, destination: BlobInfo, same: bool) -> None:
    assert same_content(source, destination) is same


def test_a_folder_version_changes_with_any_write_even_with_size_and_mtime_restored(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(b"first")
    store = FolderBlobStore(tmp_path)
    before = store.info("doc.txt")
    assert before is not None and before.version is not None
    stat = path.stat()
    path.write_bytes(b"other")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = store.info("doc.txt")
    assert after is not None and (after.size, after.last_modified) == (before.size, before.last_modified)
    assert after.version != before.version  # the ctime moved on
    with store.open_read("doc.txt") as stream:
        stream.read()
        assert store.version_after_read("doc.txt", stream) == after.version
        path.write_bytes(b"third")  # written while open: the version seen through the open file moves on
        assert store.version_after_read("doc.txt", stream) != after.version


def test_a_folder_version_is_trusted_only_once_its_timestamp_tick_has_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "doc.txt").write_bytes(b"x")
    store = FolderBlobStore(tmp_path)
    version = store.info("doc.txt").version  # type: ignore[union-attr]
    assert version is not None
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 3600.0)
    assert not store.trusts_version(version)  # changed within the margin: a later write could keep it
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)
    assert store.trusts_version(version)


def test_block_ids_are_equal_length_and_change_with_the_source_version() -> None:
    first = block_ids(BlobInfo("n", 10 * 1024 + 1, etag="e1"), 1024)
    assert len(first) == 11
    assert len({len(i) for i in first}) == 1
    assert first == block_ids(BlobInfo("n", 10 * 1024 + 1, etag="e1"), 1024)
    assert not set(first) & set(block_ids(BlobInfo("n", 10 * 1024 + 1, etag="e2"), 1024))


def http_error(status: int, code: str | None = None, headers: dict[str, str] | None = None) -> HttpResponseError:
    class Response:
        def __init__(self) -> None:
            self.status_code = status
            self.reason = "x"
            self.headers = headers or {}

        def text(self) -> str:
            return ""

    exc = HttpResponseError(message="boom", response=Response())  # type: ignore[arg-type]
    exc.status_code = status
    exc.error_code = code
    return exc


@pytest.mark.parametrize(("exc", "kind", "exit_code", "text"), [
    (http_error(429, headers={"Retry-After": "7"}), TransientError, ExitCode.FAILED, "HTTP 429"),
    (http_error(500), TransientError, ExitCode.FAILED, "HTTP 500"),
    (http_error(503, "ServerBusy"), TransientError, ExitCode.FAILED, "ServerBusy"),
    (ServiceResponseError("read timed out"), TransientError, ExitCode.FAILED, "timed out"),
    (ClientAuthenticationError("nope"), PermanentError, ExitCode.INVALID_INPUT, "authentication failed"),
    (http_error(403, "AuthorizationFailure"), PermanentError, ExitCode.INVALID_INPUT, "access denied"),
    (http_error(404, "ContainerNotFound"), PermanentError, ExitCode.INVALID_INPUT, "does not exist"),
    (http_error(404, "BlobNotFound"), PermanentError, ExitCode.FAILED, "not found"),
    (http_error(404, "CannotVerifyCopySource"), PermanentError, ExitCode.FAILED, "source SAS"),
])
def test_azure_errors_map_to_retryable_or_fail_fast(exc: Exception, kind: type, exit_code: ExitCode,
                                                    text: str) -> None:
    error = translate_error(exc, "account acct, container files", "listing blobs")
    assert isinstance(error, kind)
    assert error.exit_code == exit_code
    assert error.retryable is (kind is TransientError)
    assert "account acct, container files" in error.one_line()
    assert text in error.one_line()
    if "Retry-After" in str(getattr(getattr(exc, "response", None), "headers", {})):
        assert error.retry_after == 7.0  # type: ignore[attr-defined]


LISTING = b"""<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="https://acct.blob.core.windows.net/" ContainerName="files">
  <Prefix>tenant/</Prefix><MaxResults>5000</MaxResults>
  <Blobs>
    <Blob>
      <Name>tenant/a b#1.txt</Name>
      <Properties>
        <Last-Modified>Wed, 04 Mar 2026 10:20:30 GMT</Last-Modified><Etag>0x8DC1</Etag>
        <Content-Length>5</Content-Length><Content-Type>text/plain</Content-Type>
        <Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5>
      </Properties>
      <Metadata><owner>team</owner><x-ms-invalid-name>bad</x-ms-invalid-name></Metadata>
    </Blob>
    <Blob>
      <Name Encoded="true">tenant/%EF%BF%BEodd</Name>
      <Properties><Content-Length>0</Content-Length></Properties>
    </Blob>
  </Blobs>
  <NextMarker>2!84!next</NextMarker>
</EnumerationResults>"""


def test_a_listing_page_parses_to_inventory_entries_and_the_next_marker() -> None:
    blobs, marker = parse_listing(LISTING, lambda name: name.removeprefix("tenant/"), {})

    assert marker == "2!84!next"
    first, second = blobs
    assert (first.name, first.size, first.content_type, dict(first.metadata)) == \
        ("a b#1.txt", 5, "text/plain", {"owner": "team"})
    assert first.md5 == bytes.fromhex("5d41402abc4b2a76b9719d911017c592")
    assert (first.etag, first.last_modified) == ("0x8DC1", 1772619630.0)
    assert (second.name, second.size, second.md5, second.last_modified) == ("\ufffeodd", 0, None, None)


class FakeResponse:
    def __init__(self, status: int, code: str | None) -> None:
        self.status_code = status
        self.reason = "x"
        self.headers = {"x-ms-error-code": code} if code else {}

    def text(self) -> str:
        return ""


@pytest.mark.parametrize(("status", "code", "kind", "exit_code"), [
    (403, "AuthenticationFailed", PermanentError, ExitCode.INVALID_INPUT),
    (404, "ContainerNotFound", PermanentError, ExitCode.INVALID_INPUT),
    (404, "BlobNotFound", PermanentError, ExitCode.FAILED),
    (503, "ServerBusy", TransientError, ExitCode.FAILED),
    (400, "Md5Mismatch", PermanentError, ExitCode.FAILED),
])
def test_failed_plain_rest_responses_map_like_sdk_errors(status: int, code: str, kind: type,
                                                         exit_code: ExitCode) -> None:
    error = translate_error(response_error(FakeResponse(status, code)), "account acct, container files",
                            "writing blob 'x'")
    assert isinstance(error, kind)
    assert error.exit_code == exit_code
    assert "account acct, container files" in error.one_line()


@pytest.mark.parametrize(("env", "url", "proxied"), [
    ({"HTTPS_PROXY": "http://proxy.example:3128"}, "https://acct.blob.core.windows.net", True),
    ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "127.0.0.1"}, "https://127.0.0.1:10000/acct", False),
    ({}, "https://acct.blob.core.windows.net", False),
])
def test_proxy_environment_is_read_once_per_store_and_honours_no_proxy(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxied: bool) -> None:
    import requests

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    session = requests.Session()

    _settle_environment(session, url)

    assert session.trust_env is False  # no environment lookups per request any more
    assert (session.proxies.get("https") == "http://proxy.example:3128") is proxied


BACKUP = ("https://acct.blob.core.windows.net/backup", "files")
ELSEWHERE = ("https://acct.blob.core.windows.net/live", "")


def inventory(*names: str) -> CachedInventory:
    return CachedInventory({n: Compact(1, b"1" * 16, None) for n in names}, metadata=True)


def settle_alone(cache: InventoryCache) -> bool:
    claim = cache.claim(BACKUP)
    return cache.settle(claim, inventory("a"))


def settle_beside_another_writer(cache: InventoryCache) -> bool:
    first, second = cache.claim(BACKUP), cache.claim(BACKUP)
    return cache.settle(first, inventory("a")) or cache.settle(second, inventory("b"))


def settle_after_the_container_was_rolled_back(cache: InventoryCache) -> bool:
    claim = cache.claim(BACKUP)
    cache.drop(("https://acct.blob.core.windows.net/backup", ""))  # another prefix that overlaps
    return cache.settle(claim, inventory("a"))


def settle_after_abandoning(cache: InventoryCache) -> bool:
    claim = cache.claim(BACKUP)
    cache.abandon(claim)
    return cache.settle(claim, inventory("a"))


def settle_after_a_failed_writer_of_another_container(cache: InventoryCache) -> bool:
    cache.abandon(cache.claim(ELSEWHERE))
    return cache.settle(cache.claim(BACKUP), inventory("a"))


@pytest.mark.parametrize(("scenario", "kept"), [
    (settle_alone, True),
    (settle_beside_another_writer, False),  # each saw the container while the other wrote it
    (settle_after_the_container_was_rolled_back, False),
    (settle_after_abandoning, False),
    (settle_after_a_failed_writer_of_another_container, True),
])
def test_the_inventory_cache_keeps_a_destination_only_for_an_attempt_that_wrote_it_alone_and_passed(
        scenario: Any, kept: bool) -> None:
    cache = InventoryCache()
    assert scenario(cache) is kept
    assert (cache.peek(BACKUP) is not None) is kept


def test_a_borrowed_source_inventory_goes_back_unless_the_container_was_written_meanwhile() -> None:
    cache = InventoryCache()
    cache.settle(cache.claim(BACKUP), inventory("a"))
    borrowed = cache.borrow(BACKUP)
    assert borrowed.entry is not None and cache.peek(BACKUP) is None, "taken out while the attempt runs"
    assert cache.settle(borrowed, None) and cache.peek(BACKUP) is borrowed.entry
    borrowed = cache.borrow(BACKUP)
    writer = cache.claim(BACKUP)
    assert not cache.settle(borrowed, None), "a writer claimed the container while it was borrowed"
    assert cache.settle(writer, inventory("b"))
    failed = cache.borrow(BACKUP)
    cache.abandon(failed)
    assert cache.peek(BACKUP) is None, "a failed attempt drops what it took"


def test_a_transfer_estimate_counts_no_listing_of_a_side_an_earlier_step_keeps() -> None:
    source = {f"b{i}": Compact(1000, b"1" * 16, None) for i in range(5000)}
    params = PutLive.Params(source={**AZ, "account_key": "k"}, destination={**AZ, "container": "live",
                                                                            "account_key": "k"})
    sides = ListingSides("azure", 5000, 0.45, "azure", 5000, 0.45)
    diff = Diff(to_copy=50, to_copy_bytes=50_000, unchanged=4950)
    listed, _, _ = transfer_estimate(params, diff, sides, source)
    kept_src, _, _ = transfer_estimate(params, diff, sides, source, reused=(True, False))
    kept_both, _, _ = transfer_estimate(params, diff, sides, source, reused=(True, True))
    assert listed.seconds is not None and kept_src.seconds is not None and kept_both.seconds is not None
    assert listed.seconds - kept_src.seconds == pytest.approx(0.45)
    assert listed.seconds - kept_both.seconds == pytest.approx(0.90), "the two containers share one account"
    assert "kept by an earlier step: not listed" in (kept_both.basis or "")


@pytest.mark.parametrize(("on_source_deleted", "also", "problem"), [
    ("delete", True, None),
    ("delete", False, None),
    ("keep", False, None),
    ("keep", True, "also_delete_from needs on_source_deleted: delete"),
])
def test_a_sync_deletes_from_a_second_container_only_where_it_deletes_at_all(
        on_source_deleted: str, also: bool, problem: str | None) -> None:
    fields: dict[str, Any] = {"source": {"kind": "folder", "path": "/srv/files"},
                              "destination": {**AZ, "account_key": "k"}, "on_source_deleted": on_source_deleted}
    if also:
        fields["also_delete_from"] = {**AZ, "container": "live", "account_key": "k"}
    if problem is None:
        assert Sync.Params(**fields).on_source_deleted == on_source_deleted
    else:
        with pytest.raises(ValidationError, match=problem):
            Sync.Params(**fields)


class Stop(Exception):
    """Raised by :class:`StopOnRequest` where a request would leave the process."""


class StopOnRequest(SansIOHTTPPolicy):  # type: ignore[type-arg]
    def on_request(self, request: Any) -> None:
        raise Stop(request.http_request.method)


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["rest", "sdk"])
def test_the_rest_fast_path_finds_what_it_borrows_from_the_sdk_and_per_retry_policies_see_every_request(
        monkeypatch: pytest.MonkeyPatch, fast_path: str) -> None:
    monkeypatch.setenv(FAST_PATH_ENV, fast_path)
    monkeypatch.setenv("BLOB_LOGIC_KEY", base64.b64encode(b"k" * 32).decode())
    ctx = MemoryContext()
    run_resources(ctx.resources).put(PER_RETRY_POLICIES, [StopOnRequest()])
    store = open_blob_store({**AZ, "account_key": "${env:BLOB_LOGIC_KEY}"}, ctx)
    assert isinstance(store, AzureBlobStore)

    missing = missing_borrowings(store.container)
    assert missing == [], f"azure-storage-blob no longer has what the REST fast path borrows: {', '.join(missing)}"
    assert (store.rest is not None) is (fast_path == "1")
    # The per-retry policies reach both paths (the SDK's through its private `_additional_pipeline_policies`).
    with pytest.raises(Stop, match=r"HEAD|GET"):
        store.info("a.txt")
    with pytest.raises(Stop, match="PUT"):
        store.write("a.txt", b"x")


def test_the_store_retries_a_transient_answer_with_backoff_and_returns_the_last_one() -> None:
    class Answers:
        def __init__(self, *statuses: int) -> None:
            self.statuses, self.sent = list(statuses), 0

        def send(self, request: Any) -> Any:
            self.sent += 1
            status = self.statuses.pop(0)
            response = type("R", (), {"status_code": status, "headers": {"Retry-After": "3"} if status == 429 else {}})
            return type("P", (), {"http_response": response()})()

    waits: list[float] = []
    request = type("Q", (), {"context": type("C", (), {"options": {"retry_total": 9, "hosts": {}}})(),
                             "http_request": type("H", (), {"body": b""})()})()
    for statuses, sent, last in (((500, 429, 201), 3, 201), ((503, 503, 503), 3, 503), ((404,), 1, 404)):
        policy = BackoffRetry(initial=0.5, retry_total=2, sleep=waits.append)
        policy.next = Answers(*statuses)  # type: ignore[assignment]
        assert policy.send(request).http_response.status_code == last
        assert policy.next.sent == sent  # type: ignore[attr-defined]
    assert 0.5 <= waits[0] <= 1.0 and waits[1] >= 3.0, "exponential backoff with jitter, at least the Retry-After"


def test_the_store_retries_a_request_whose_first_try_got_no_answer_and_gives_up_after_its_tries() -> None:
    from azure.core.exceptions import ServiceResponseError

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures, self.sent = failures, 0

        def send(self, request: Any) -> Any:
            self.sent += 1
            if self.sent <= self.failures:
                raise ServiceResponseError("connection reset")
            return type("P", (), {"http_response": type("R", (), {"status_code": 201, "headers": {}})()})()

    request = type("Q", (), {"context": type("C", (), {"options": {}})(),
                             "http_request": type("H", (), {"body": b""})()})()
    waits: list[float] = []
    policy = BackoffRetry(initial=0.5, retry_total=2, sleep=waits.append)
    policy.next = Flaky(1)  # type: ignore[assignment]
    assert policy.send(request).http_response.status_code == 201
    assert policy.next.sent == 2 and len(waits) == 1 and 0.5 <= waits[0] <= 1.0  # type: ignore[attr-defined]
    policy.next = Flaky(5)  # type: ignore[assignment]
    with pytest.raises(ServiceResponseError):
        policy.send(request)
    assert policy.next.sent == 3, "retry_total=2: three tries in all"  # type: ignore[attr-defined]
