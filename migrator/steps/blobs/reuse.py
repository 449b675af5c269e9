"""The run's kept inventories: each Azure container a transfer step writes is listed once per run process.

A transfer step that finished its apply and verify leaves its destination's inventory in the run's
:class:`InventoryCache` (a typed run resource, :data:`INVENTORY_CACHE_KEY`): what its listing gave, updated with
what it wrote or deleted and read back, or the listing its verify made. The next transfer step with that container
as its source or destination works from it instead of listing again. In the Workspace 365 playbook the presync
steps leave the backup and the live container, so inside the read-only window ``blobs.sync`` lists only the
source folder and ``blobs.put_live`` lists nothing. The rules that keep this safe:

* it lives only in the memory of one run process: a resumed run, a new process, lists again, and so does every
  step when ``reuse_listing: false``;
* only destinations are kept: containers the run writes itself. A container only read (a source no step writes)
  and folders (a directory walk is cheap) are always listed;
* an attempt takes the inventories of both its containers out of the cache when its check starts and puts them
  back only when its verify passed, so any failed attempt drops them and its retry lists both sides: an outside
  change shows up then. A verify that fails after working from a kept inventory is retried for that reason;
* a copy whose source blob turns out missing or changed (an outside change to a kept inventory) fails the attempt
  with a retryable error, and the retry lists;
* two steps writing one container at the same time (any prefixes) keep neither's inventory, and a step that writes
  a container without keeping its inventory (``reuse_listing: false``, a rollback) drops what the cache held of it;
* ``blobs.verify`` uses it only with ``reuse_listing: true`` (default off), and only for the destination, left in
  place (:func:`kept_destination`): by default it lists the destination and the source, so the end-to-end proof
  reads the world, and a kept inventory can at most leave out work that ``blobs.verify`` then names. Inside a
  read-only window whose destination only the run writes, the kept inventory is what the steps before listed,
  wrote and read back, and listing it again would prove nothing new.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from migrator.providers.blob import BlobStore, run_resources
from migrator.resources import ResourceKey
from migrator.step import StepContext
from migrator.steps.blobs.inventory import CachedInventory, Compact, Reuse
from migrator.steps.blobs.params import TransferParams, VerifyParams

Identity = tuple[str, str]  # a container's address (never a credential), and the prefix inside it


@dataclass
class Claim:
    """One attempt's hold on a container of the cache: what it took out, and whether it may put it back."""

    identity: Identity
    entry: CachedInventory | None
    epoch: int
    writer: bool
    #: Another step wrote the container while this claim began: nothing this attempt saw may be kept.
    shared: bool = False
    open: bool = True


def overlaps(a: str, b: str) -> bool:
    """Whether two prefixes of one container see some of the same blobs."""
    a, b = a.strip("/"), b.strip("/")
    return not a or not b or a == b or a.startswith(b + "/") or b.startswith(a + "/")


class InventoryCache:
    """The inventories of the Azure containers this run process listed and then changed itself, by identity.

    Thread-safe: steps on parallel branches share it. An attempt ``claim``s its destination (taking out what is
    kept of that container, under any prefix that overlaps) and ``borrow``s its source; when its verify passed it
    ``settle``s both, which keeps the destination's new inventory and returns the source's unless another step
    wrote that container meanwhile (each container has an epoch, moved by every writer's claim and every drop).
    A failed attempt never settles: what it took is gone, and its next check ``abandon``s the claims.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Identity, CachedInventory] = {}
        self._epochs: dict[str, int] = {}
        self._writers: dict[str, int] = {}

    def peek(self, identity: Identity | None) -> CachedInventory | None:
        """What is kept of ``identity``, left in place (for a plan, which changes nothing)."""
        if identity is None:
            return None
        with self._lock:
            return self._entries.get(identity)

    def _take_overlapping(self, identity: Identity) -> CachedInventory | None:
        container, prefix = identity
        own = self._entries.pop(identity, None)
        for other in [k for k in self._entries if k[0] == container and overlaps(k[1], prefix)]:
            del self._entries[other]
        return own

    def claim(self, identity: Identity) -> Claim:
        """A transfer attempt about to write ``identity``: takes out what is kept of that container (its own
        inventory is returned with the claim), and notes that it is being written."""
        container = identity[0]
        with self._lock:
            shared = self._writers.get(container, 0) > 0
            self._writers[container] = self._writers.get(container, 0) + 1
            self._epochs[container] = epoch = self._epochs.get(container, 0) + 1
            return Claim(identity, self._take_overlapping(identity), epoch, writer=True, shared=shared)

    def borrow(self, identity: Identity) -> Claim:
        """A transfer attempt about to read ``identity`` as its source: takes its inventory out until it settles."""
        container = identity[0]
        with self._lock:
            return Claim(identity, self._entries.pop(identity, None), self._epochs.get(container, 0),
                         writer=False, shared=self._writers.get(container, 0) > 0)

    def settle(self, claim: Claim, inventory: CachedInventory | None) -> bool:
        """The attempt passed its verify: keeps ``inventory`` for the claimed container (a writer's), or returns
        the borrowed one; not when another step wrote the container meanwhile. Whether anything was kept."""
        if not claim.open:
            return False
        claim.open = False
        container = claim.identity[0]
        with self._lock:
            untouched = not claim.shared and self._epochs.get(container, 0) == claim.epoch
            if claim.writer:
                self._writers[container] -= 1
                if untouched and inventory is not None:
                    self._take_overlapping(claim.identity)
                    self._entries[claim.identity] = inventory
                    return True
                return False
            if untouched and claim.entry is not None and not self._writers.get(container) \
                    and claim.identity not in self._entries:
                self._entries[claim.identity] = claim.entry
                return True
            return False

    def abandon(self, claim: Claim) -> None:
        """The attempt failed: what it took stays out, and whatever it saw of the container is stale."""
        if not claim.open:
            return
        claim.open = False
        container = claim.identity[0]
        with self._lock:
            if claim.writer:
                self._writers[container] -= 1
            self._epochs[container] = self._epochs.get(container, 0) + 1
            self._take_overlapping(claim.identity)

    def drop(self, identity: Identity) -> None:
        """Something wrote ``identity`` without keeping its inventory (a rollback): forgets that container."""
        with self._lock:
            self._epochs[identity[0]] = self._epochs.get(identity[0], 0) + 1
            self._take_overlapping(identity)


#: The run's resource holding its :class:`InventoryCache`.
INVENTORY_CACHE_KEY: ResourceKey[InventoryCache] = ResourceKey("blobs.inventory_cache")


def inventory_cache(ctx: StepContext) -> InventoryCache:
    """The run process's :class:`InventoryCache` (made on first use, once)."""
    return run_resources(ctx.resources).obtain(INVENTORY_CACHE_KEY, InventoryCache)


def peek(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> Reuse:
    """What a plan may work from: the kept inventories as they are (a plan inside a run process; none in a
    dry-run of its own), left in the cache."""
    if not params.reuse_listing:
        return Reuse()
    cache = run_resources(ctx.resources).find(INVENTORY_CACHE_KEY)
    if cache is None:
        return Reuse()
    src_id, dst_id = src.inventory_identity(), dst.inventory_identity()
    return Reuse(cache.peek(src_id) if src_id != dst_id else None, cache.peek(dst_id))


def kept_destination(ctx: StepContext, params: VerifyParams, src: BlobStore, dst: BlobStore
                     ) -> dict[str, Compact] | None:
    """For ``blobs.verify`` with ``reuse_listing``: a copy of the destination's kept inventory, left in the cache,
    when it holds what the comparison with ``src`` needs (the recorded source versions: listed with metadata);
    None when nothing is kept (a new process, a failed attempt, a step writing it now)."""
    if not params.reuse_listing:
        return None
    cache = run_resources(ctx.resources).find(INVENTORY_CACHE_KEY)
    dst_id = dst.inventory_identity()
    entry = cache.peek(dst_id) if cache is not None and dst_id != src.inventory_identity() else None
    if entry is None or (src.reports_versions and not entry.metadata):
        return None
    return dict(entry.blobs)
