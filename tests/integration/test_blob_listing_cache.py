"""The blob steps' inventory cache against Azurite: within one run process each container the run writes is
listed once; a failed attempt, an outside change and ``blobs.verify`` read the world again.

Every step here gets its own context, as the runner gives each step one, and all share one ``resources``,
as the steps of one run in one process do. Listing requests are counted at Azurite's door (a per-try policy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy

from fixtures.services.azurite import CLOUD_ACCOUNT, Azurite
from migrator.errors import VerificationFailed, is_retryable
from migrator.providers.blob import PER_RETRY_POLICIES
from migrator.providers.blob import folder as folder_store
from migrator.resources import RunResources
from migrator.secrets import blob_label
from migrator.step import Step
from migrator.steps.blobs import INVENTORY_CACHE_KEY, Presync, PutLive, Sync, Verify
from migrator.testing import MemoryContext
from tests.integration.test_blobs import RequestLog, container, write_folder

pytestmark = pytest.mark.integration

NAMES = [f"docs/{i:03d}.txt" for i in range(100)]


class FailPuts(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """While ``armed``, the next ``times`` blob writes into ``container`` time out (before reaching Azurite)."""

    def __init__(self, container: str) -> None:
        super().__init__()
        self.container, self.times = container, 0

    def on_request(self, request: Any) -> None:
        http = request.http_request
        if self.times and http.method == "PUT" and f"/{self.container}/" in http.url:
            self.times -= 1
            raise ServiceResponseError("injected timeout")


class World:
    """A folder source, a backup and a live container, and the steps of the playbook between them, run as one
    run process runs them: every step with its own context, all with the same resources."""

    def __init__(self, azurite: Azurite, tmp_path: Path) -> None:
        self.azurite = azurite
        self.root = tmp_path / "files"
        write_folder(self.root, NAMES, age=3600)
        self.backup_name = azurite.create_container(CLOUD_ACCOUNT)
        self.live_name = azurite.create_container(CLOUD_ACCOUNT)
        self.folder = {"kind": "folder", "path": str(self.root)}
        # No retries inside the store: an injected fault fails the attempt at once.
        self.backup = azurite.endpoint(CLOUD_ACCOUNT, self.backup_name) | {"retry_total": 0}
        self.live = azurite.endpoint(CLOUD_ACCOUNT, self.live_name) | {"retry_total": 0}
        self.log = RequestLog()
        self.faults = FailPuts(self.backup_name)
        self.resources = RunResources()
        self.resources.put(PER_RETRY_POLICIES, [self.log, self.faults])

    def ctx(self) -> MemoryContext:
        return MemoryContext(resources=self.resources)

    def lists(self) -> int:
        """Listing requests Azurite answered for the cloud account since the last call."""
        count = self.log.count("GET", CLOUD_ACCOUNT, "list")
        self.log.requests.clear()
        return count

    def presync(self) -> None:
        """The steps while the tenant is live: presync (folder -> backup), presync_live (backup -> live)."""
        run(Presync("presync", Presync.Params(source=self.folder, destination=self.backup, attempts_per_blob=1)),
            self)
        run(PutLive("presync_live", PutLive.Params(source=self.backup, destination=self.live,
                                                   attempts_per_blob=1)), self)

    def sync(self) -> Sync:
        return Sync("blobs_sync", Sync.Params(source=self.folder, destination=self.backup, attempts_per_blob=1))

    def put_live(self) -> PutLive:
        return PutLive("blobs_live", PutLive.Params(source=self.backup, destination=self.live, delete_extra=True,
                                                    attempts_per_blob=1))

    def verify(self, *, reuse_listing: bool = False) -> Verify:
        return Verify("blobs_verify", Verify.Params(source=self.folder, destination=self.live,
                                                    compare_properties=False, reuse_listing=reuse_listing))


def run(step: Step[Any], world: World, *, attempts: int = 3,
        between: Callable[[], None] | None = None) -> tuple[dict[str, Any], int]:
    """check, apply, verify as the runner does, retrying what is retryable; the outputs and the attempts made."""
    ctx = world.ctx()
    for attempt in range(1, attempts + 1):
        try:
            state = step.check(ctx)
            outputs = dict(state.outputs) if state.done else dict(step.apply(ctx) or {})
            step.verify(ctx)
            return outputs, attempt
        except Exception as exc:
            if not is_retryable(exc) or attempt == attempts:
                raise
            if between is not None:
                between()
    raise AssertionError("unreachable")


@pytest.fixture
def world(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr(folder_store, "SETTLE_SECONDS", 0.0)  # files count as settled at once
    return World(azurite, tmp_path)


def change(world: World, names: list[str], seed: str = "v2") -> None:
    write_folder(world.root, names, seed=seed)


def test_in_one_run_sync_and_put_live_after_the_presyncs_list_no_azure_container_and_verify_lists_live(
        world: World) -> None:
    world.presync()
    world.lists()
    change(world, NAMES[:3])
    (world.root / NAMES[5]).unlink()

    synced, _ = run(world.sync(), world)
    live, _ = run(world.put_live(), world)

    assert (synced["copied"], synced["deleted"]) == (3, 1)
    assert (live["copied"], live["deleted"]) == (3, 1)
    assert world.lists() == 0, "inside the window neither container is listed again"
    assert run(world.verify(), world)[0] == {"identical": True, "destination": "listed"}
    assert world.lists() == 1, "blobs.verify lists the live container, kept or not"


def test_a_fresh_run_process_lists_again(world: World) -> None:
    world.presync()
    world.lists()
    change(world, NAMES[:3])
    world.resources.discard(INVENTORY_CACHE_KEY)  # what a new process (a resume) starts without

    run(world.sync(), world)
    run(world.put_live(), world)

    assert world.lists() == 2, "the backup by the sync (which keeps it for put live), live by put live"


def test_reuse_listing_false_lists_both_sides_and_leaves_nothing_for_the_steps_after(world: World) -> None:
    world.presync()
    world.lists()
    change(world, NAMES[:3])
    sync = Sync("blobs_sync", world.sync().params.model_copy(update={"reuse_listing": False}))

    run(sync, world)
    assert world.lists() == 1, "the sync lists the backup (its verify reads back its 3 copies)"
    run(world.put_live(), world)
    assert world.lists() == 1, "put live lists the backup the sync wrote without keeping it; live is still kept"


def test_a_failed_attempt_drops_what_was_kept_and_its_retry_lists_both_sides(world: World) -> None:
    world.presync()
    world.lists()
    change(world, NAMES[:3])
    world.faults.times = 1  # the sync's first copy into the backup times out: the attempt fails

    synced, attempts = run(world.sync(), world)

    assert attempts == 2 and synced["count"] == len(NAMES)
    assert world.lists() == 1, "the retry lists the backup (the failed attempt dropped it)"
    run(world.put_live(), world)
    assert world.lists() == 0, "the retry's verify passed, so it kept the backup again; live was never dropped"
    assert run(world.verify(), world)[0] == {"identical": True, "destination": "listed"}


def test_an_outside_deletion_of_a_blob_put_live_must_copy_fails_the_copy_and_the_retry_lists(
        world: World) -> None:
    world.presync()
    change(world, NAMES[:3])
    run(world.sync(), world)
    world.lists()
    backup = container(world.azurite, CLOUD_ACCOUNT, world.backup_name)
    backup.delete_blob(NAMES[0])  # outside the run, between the steps

    live, attempts = run(world.put_live(), world)

    assert attempts == 2, "the copy from the vanished blob fails the first attempt"
    assert world.lists() == 2, "the retry lists backup and live"
    assert live["deleted"] == 1, "put live (delete_extra) removes what the backup no longer has"
    missing = re.escape(f"1 missing at the destination: {blob_label('docs/000.txt')}")
    with pytest.raises(VerificationFailed, match=missing):
        run(world.verify(), world)


def test_an_outside_deletion_from_backup_and_live_of_an_unchanged_blob_is_named_by_blobs_verify(
        world: World) -> None:
    world.presync()
    change(world, NAMES[:3])
    for name in (world.backup_name, world.live_name):
        container(world.azurite, CLOUD_ACCOUNT, name).delete_blob(NAMES[50])

    run(world.sync(), world)
    run(world.put_live(), world)  # both work from what the presyncs kept: the deletion is not seen here

    missing = re.escape(f"1 missing at the destination: {blob_label('docs/050.txt')}")
    with pytest.raises(VerificationFailed, match=missing):
        run(world.verify(), world)


def test_verify_with_reuse_listing_proves_live_by_the_kept_inventory_and_still_names_what_differs(
        world: World) -> None:
    world.presync()
    change(world, NAMES[:3])
    run(world.sync(), world)
    run(world.put_live(), world)
    world.lists()

    assert run(world.verify(reuse_listing=True), world)[0] == {"identical": True, "destination": "kept"}
    assert world.lists() == 0, "the live container is not listed again: the run kept what it wrote and read back"

    # The source is always listed: a change there after the sync (outside a read-only window) is named.
    change(world, NAMES[7:8], seed="v3")
    content = re.escape(f"1 MD5 differs: {blob_label('docs/007.txt')}")
    with pytest.raises(VerificationFailed, match=content):
        run(world.verify(reuse_listing=True), world)


def test_verify_with_reuse_listing_lists_live_when_nothing_is_kept(world: World) -> None:
    world.presync()
    change(world, NAMES[:3])
    run(world.sync(), world)
    run(world.put_live(), world)
    world.resources.discard(INVENTORY_CACHE_KEY)  # a resumed run, a new process: nothing kept
    container(world.azurite, CLOUD_ACCOUNT, world.live_name).delete_blob(NAMES[50])
    world.lists()

    missing = re.escape(f"1 missing at the destination: {blob_label('docs/050.txt')}")
    with pytest.raises(VerificationFailed, match=missing):
        run(world.verify(reuse_listing=True), world)
    assert world.lists() == 1


def test_verify_reuse_listing_with_properties_is_refused_as_bad_input() -> None:
    with pytest.raises(ValueError, match="reuse_listing needs compare_properties: false"):
        Verify.Params(source={"kind": "folder", "path": "/x"}, destination={"kind": "folder", "path": "/y"},
                      reuse_listing=True)
