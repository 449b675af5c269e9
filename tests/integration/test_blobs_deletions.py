"""Files deleted or renamed at the source while the migration runs, against Azurite: the blob steps of the
Workspace 365 playbook end with the live container as the source is, and touch nothing the migration never had.

* between the presync and the window: ``blobs.sync`` removes what the source lost from the backup and, with
  ``also_delete_from``, from the live container (live first, so a stop between the two is finished on retry);
* while ``blobs.presync`` (or the sync) runs, between its listing and its read: the file is a deletion, not an
  error; it is recorded and the later steps converge.

Every step gets its own context, as the runner gives each step one, and all share one ``resources``, as the
steps of one run process do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy

from fixtures.services.azurite import CLOUD_ACCOUNT, Azurite
from migrator.errors import is_retryable
from migrator.providers.blob import PER_RETRY_POLICIES
from migrator.providers.blob import folder as folder_store
from migrator.resources import RunResources
from migrator.step import Step
from migrator.steps.blobs import INVENTORY_CACHE_KEY, Presync, PutLive, Sync, Verify
from migrator.testing import MemoryContext, MemoryItems
from tests.integration.test_blobs import RequestLog, container, write_folder

pytestmark = pytest.mark.integration

KiB = 1024
NAMES = [f"docs/{i:03d}.txt" for i in range(100)]  # enough that a sync's verify reads back its few changes
LARGE = "videos/large.bin"
#: Small blocks, so the large file goes through the block path with several blocks.
BLOCKS = {"large_blob_threshold": 64 * KiB, "block_size": 64 * KiB}
FOREIGN = "elsewhere/put-there-by-someone-else.txt"


class FailDeletes(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """While ``times`` > 0, blob deletions in ``container`` time out (before reaching Azurite)."""

    def __init__(self, container: str) -> None:
        super().__init__()
        self.container, self.times = container, 0

    def on_request(self, request: Any) -> None:
        http = request.http_request
        if self.times and http.method == "DELETE" and f"/{self.container}/" in http.url:
            self.times -= 1
            raise ServiceResponseError("injected timeout")


class Tenant:
    """A folder source, a backup and a live container, and the blob steps of the playbook between them."""

    def __init__(self, azurite: Azurite, tmp_path: Path) -> None:
        self.azurite = azurite
        self.root = tmp_path / "files"
        write_folder(self.root, NAMES, age=3600)
        (self.root / LARGE).parent.mkdir(parents=True)
        (self.root / LARGE).write_bytes(os.urandom(300 * KiB))
        self.backup_name = azurite.create_container(CLOUD_ACCOUNT)
        self.live_name = azurite.create_container(CLOUD_ACCOUNT)
        self.folder = {"kind": "folder", "path": str(self.root)}
        # No retries inside the store: an injected fault fails the attempt at once.
        self.backup = azurite.endpoint(CLOUD_ACCOUNT, self.backup_name) | {"retry_total": 0}
        self.live = azurite.endpoint(CLOUD_ACCOUNT, self.live_name) | {"retry_total": 0}
        self.log = RequestLog()
        self.faults = FailDeletes(self.backup_name)
        self.resources = RunResources()
        self.resources.put(PER_RETRY_POLICIES, [self.log, self.faults])

    def presync(self) -> Presync:
        return Presync("presync", Presync.Params(source=self.folder, destination=self.backup, attempts_per_blob=1,
                                                 **BLOCKS))

    def presync_live(self) -> PutLive:
        return PutLive("presync_live", PutLive.Params(source=self.backup, destination=self.live,
                                                      attempts_per_blob=1))

    def sync(self, *, also: bool = True) -> Sync:
        return Sync("blobs_sync", Sync.Params(source=self.folder, destination=self.backup, attempts_per_blob=1,
                                              also_delete_from=self.live if also else None, **BLOCKS))

    def put_live(self) -> PutLive:
        return PutLive("blobs_live", PutLive.Params(source=self.backup, destination=self.live,
                                                    attempts_per_blob=1))

    def verify(self) -> Verify:
        return Verify("blobs_verify", Verify.Params(source=self.folder, destination=self.live,
                                                    compare_properties=False))

    def lists(self) -> int:
        """Listing requests Azurite answered for the cloud account since the last call."""
        count = self.log.count("GET", CLOUD_ACCOUNT, "list")
        self.log.requests.clear()
        return count

    def source(self) -> dict[str, bytes]:
        """Name -> MD5 of every file under the source folder."""
        return {p.relative_to(self.root).as_posix(): hashlib.md5(p.read_bytes(), usedforsecurity=False).digest()
                for p in self.root.rglob("*") if p.is_file()}

    def live_blobs(self) -> dict[str, bytes]:
        """Name -> MD5 of every blob in the live container, as stored."""
        client = container(self.azurite, CLOUD_ACCOUNT, self.live_name)
        return {b.name: bytes(b.content_settings.content_md5) for b in client.list_blobs()}


def run(step: Step[Any], tenant: Tenant, *, items: MemoryItems | None = None, attempts: int = 3,
        between_check_and_apply: Callable[[], None] | None = None) -> tuple[dict[str, Any], int]:
    """check, apply, verify as the runner does, retrying what is retryable; the outputs and the attempts made."""
    ctx = MemoryContext(step_id=step.step_id, resources=tenant.resources)
    if items is not None:
        ctx.items = items
    for attempt in range(1, attempts + 1):
        try:
            state = step.check(ctx)
            if state.done:
                outputs = dict(state.outputs)
            else:
                if between_check_and_apply is not None and attempt == 1:
                    between_check_and_apply()
                outputs = dict(step.apply(ctx) or {})
            step.verify(ctx)
            return outputs, attempt
        except Exception as exc:
            if not is_retryable(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def tenant(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tenant:
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)  # files count as settled at once
    return Tenant(azurite, tmp_path)


def presynced(tenant: Tenant) -> None:
    """The steps while the tenant is live: presync (folder -> backup), presync_live (backup -> live)."""
    run(tenant.presync(), tenant)
    run(tenant.presync_live(), tenant)


def delete_and_rename(tenant: Tenant) -> None:
    (tenant.root / NAMES[3]).unlink()
    (tenant.root / "renamed").mkdir()
    (tenant.root / NAMES[4]).rename(tenant.root / "renamed" / "004.txt")


def test_a_file_deleted_and_one_renamed_after_the_presync_leave_the_live_container_as_the_source_is(
        tenant: Tenant) -> None:
    live = container(tenant.azurite, CLOUD_ACCOUNT, tenant.live_name)
    live.upload_blob(FOREIGN, b"not the tenant's")  # in the live container before the migration, never a source blob
    presynced(tenant)
    delete_and_rename(tenant)
    tenant.lists()

    synced, _ = run(tenant.sync(), tenant)
    put, _ = run(tenant.put_live(), tenant)

    assert (synced["copied"], synced["deleted"], synced["also_deleted"]) == (1, 2, 2)
    assert (put["copied"], put["deleted"]) == (1, 0)
    assert tenant.lists() == 0, "inside the window no container is listed: the live inventory kept is updated"
    blobs = tenant.live_blobs()
    assert blobs.pop(FOREIGN) == hashlib.md5(b"not the tenant's", usedforsecurity=False).digest()
    assert blobs == tenant.source()
    live.delete_blob(FOREIGN)
    assert run(tenant.verify(), tenant)[0] == {"identical": True, "destination": "listed"}


def test_a_stop_between_the_deletion_in_live_and_in_the_backup_is_finished_by_the_retry(tenant: Tenant) -> None:
    presynced(tenant)
    delete_and_rename(tenant)
    tenant.faults.times = 1  # the first deletion in the backup times out, after its live copy went

    synced, attempts = run(tenant.sync(), tenant)
    run(tenant.put_live(), tenant)

    assert attempts == 2 and synced["deleted"] >= 1  # the retry's diff found the backup copy left behind
    assert tenant.live_blobs() == tenant.source()
    assert run(tenant.verify(), tenant)[0] == {"identical": True, "destination": "listed"}


def test_a_sync_that_deleted_only_in_the_backup_taken_up_again_with_also_delete_from_finishes_in_live(
        tenant: Tenant) -> None:
    # What `resume --rerun blobs_sync` does with a run started by a playbook without also_delete_from: the step's
    # own checkpoints name what it deleted in the backup; its check finds them still in the live container.
    presynced(tenant)
    delete_and_rename(tenant)
    items = MemoryItems()
    run(tenant.sync(also=False), tenant, items=items)
    run(tenant.put_live(), tenant)
    assert set(tenant.live_blobs()) - set(tenant.source()) == {NAMES[3], NAMES[4]}
    tenant.resources.discard(INVENTORY_CACHE_KEY)  # a resume is a new process

    again, _ = run(tenant.sync(), tenant, items=items)
    run(tenant.put_live(), tenant)

    assert (again["deleted"], again["also_deleted"]) == (0, 2)
    assert tenant.live_blobs() == tenant.source()
    assert run(tenant.verify(), tenant)[0] == {"identical": True, "destination": "listed"}


def unlink_once_opened(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The source file ``name`` is changed and deleted right after the step opens it for reading."""
    original = folder_store.FolderBlobStore.open_read

    def open_read(store: folder_store.FolderBlobStore, blob: str) -> BinaryIO:
        stream = original(store, blob)
        if blob == name:
            path = store.path_of(blob)
            os.utime(path, (0, 0))  # a version of its own, whatever the file system's timestamp tick
            path.unlink()
        return stream

    monkeypatch.setattr(folder_store.FolderBlobStore, "open_read", open_read)


# (step the file vanishes in, the file, how it vanishes)
VANISHING = [
    ("presync", NAMES[7], "deleted after the listing"),
    ("presync", NAMES[7], "renamed after the listing"),
    ("presync", NAMES[7], "deleted while read"),
    ("presync", LARGE, "deleted after the listing"),
    ("presync", LARGE, "deleted while read"),
    ("blobs_sync", NAMES[7], "deleted while read"),
    ("blobs_sync", LARGE, "deleted after the listing"),
]


@pytest.mark.parametrize(("step_id", "name", "how"), VANISHING)
def test_a_source_file_gone_between_listing_and_reading_is_a_deletion_and_the_steps_after_converge(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch, step_id: str, name: str, how: str) -> None:
    path = tenant.root / name

    def vanish() -> None:
        if how == "renamed after the listing":
            path.rename(path.with_name("renamed.txt"))
        elif how == "deleted after the listing":
            path.unlink()
        else:
            unlink_once_opened(monkeypatch, name)

    if step_id == "presync":
        items = MemoryItems()
        outputs, attempts = run(tenant.presync(), tenant, items=items, between_check_and_apply=vanish)
        assert attempts == 1 and outputs["vanished"] == 1
        assert items.get(name) is not None and items.get(name).status == "vanished"  # type: ignore[union-attr]
        assert outputs["count"] == len(NAMES)  # the files it listed (with the large one), less the one gone
        run(tenant.presync_live(), tenant)
        synced, _ = run(tenant.sync(), tenant)
        assert synced["deleted"] == 0  # the presync never copied it
    else:
        presynced(tenant)
        path.write_bytes(b"changed since the presync")  # so that the sync reads it
        synced, attempts = run(tenant.sync(), tenant, between_check_and_apply=vanish)
        assert attempts == 1 and synced["vanished"] == 1
        assert (synced["deleted"], synced["also_deleted"]) == (1, 1)  # its presynced copies are gone from both
    monkeypatch.undo()
    run(tenant.put_live(), tenant)

    assert name not in tenant.live_blobs()
    assert tenant.live_blobs() == tenant.source()
    assert run(tenant.verify(), tenant)[0] == {"identical": True, "destination": "listed"}


def test_compensation_of_a_presync_still_removes_a_copy_it_created_whose_source_vanished_later(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    items = MemoryItems()
    run(tenant.presync(), tenant, items=items)
    (tenant.root / NAMES[9]).write_bytes(b"changed after the presync")
    presync = tenant.presync()
    ctx = MemoryContext(step_id="presync", resources=tenant.resources)
    ctx.items = items
    assert not presync.check(ctx).done
    (tenant.root / NAMES[9]).unlink()
    presync.apply(ctx)
    assert items.get(NAMES[9]).status == "vanished"  # type: ignore[union-attr]

    presync.compensate(ctx)

    backup = container(tenant.azurite, CLOUD_ACCOUNT, tenant.backup_name)
    assert list(backup.list_blob_names()) == [], "every copy the presync created is removed"

