"""Seconds the blob steps will take, for the plan: listings timed now and projected, copies at assumed rates.

The rates are tuned to a local storage emulator on 2 cores; the plan says which it used (each estimate's basis).
The dry-run cannot keep anything (it applies nothing), so it notes in the run's resources what the transfer steps
planned so far will leave: the blobs each destination will hold (:func:`planned_holdings`) and the inventories the
run will keep (:func:`note_kept`); its estimates count no listing of a container an earlier transfer step of the
same plan lists and writes, as the run will reuse that inventory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from migrator.providers.blob import BlobEndpoint, BlobInfo, BlobStore, run_resources
from migrator.providers.blob.copy import source_token
from migrator.resources import ResourceKey
from migrator.step import Estimate, StepContext
from migrator.steps.blobs.inventory import SURVEY_LIMIT, Compact, Diff
from migrator.steps.blobs.params import MiB, TransferParams, VerifyParams
from migrator.steps.blobs.reuse import Identity, overlaps, peek
from migrator.steps.blobs.verify import reads_back

#: Assumed rates for plan estimates before anything was measured: a local storage emulator on 2 cores takes a
#: small blob (one Put Blob, or one server-side copy within an account) in about 2 ms with 4 in flight, and
#: large ones in blocks at about 200 MiB/s.
_ASSUMED_BLOBS_PER_S = 500.0
_ASSUMED_BYTES_PER_S = 200.0 * MiB


#: Seconds per blob of listing an Azure container, for a container the plan cannot time with blobs in it (a new
#: cloud container a presync fills only in the run): a local storage emulator on 2 cores lists 1,000 blobs
#: (one page) in 60-100 ms, 5,000 in 400-500 ms (its own CPU, serializing the page, is most of it).
_ASSUMED_AZURE_LIST_SECONDS_PER_BLOB = 85e-6
#: The same for a folder tree (a directory walk and a stat per file): 1,000 files in 13-16 ms.
_ASSUMED_FOLDER_LIST_SECONDS_PER_BLOB = 15e-6
#: A listing of fewer blobs than this times the request more than the blobs: the assumed rate is used instead.
_MIN_LISTED_TO_MEASURE = 100
#: Source blobs ``blobs.verify``'s plan reads and hashes, as the run does, to time hashing.
HASH_SAMPLE = 48


#: The dry-run's notes: endpoint -> (blobs, bytes) it will hold, and container -> kept with metadata.
_PLANNED_HOLDINGS: ResourceKey[dict[str, tuple[int, int]]] = ResourceKey("blobs.plan.will_hold")
_PLANNED_KEPT: ResourceKey[dict[Identity, bool]] = ResourceKey("blobs.plan.kept")


def _planned_kept(ctx: StepContext) -> dict[Identity, bool]:
    """Container -> whether with metadata: the inventories the transfer steps planned so far leave in the run's
    cache for the steps after them (the dry-run's own notes; nothing is kept in a plan)."""
    return run_resources(ctx.resources).obtain(_PLANNED_KEPT, dict)


def reused_in_run(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> tuple[bool, bool]:
    """Whether the run will work from a kept inventory of the source, and of the destination, instead of listing
    it: one is kept now (a plan inside the run process), or a transfer step planned before this one leaves it."""
    if not params.reuse_listing:
        return False, False
    now = peek(ctx, params, src, dst)
    notes = _planned_kept(ctx)
    src_id, dst_id = src.inventory_identity(), dst.inventory_identity()
    src_kept = now.source_inventory() is not None or (
        src_id is not None and src_id != dst_id and notes.get(src_id) is True)
    dst_kept = now.destination_for(src) is not None or (
        dst_id is not None and dst_id in notes and (notes[dst_id] or not src.reports_versions))
    return src_kept, dst_kept


def note_kept(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> None:
    """After planning a transfer: the run keeps its destination's inventory (with ``reuse_listing``), and no
    longer any other of that container (it writes there)."""
    dst_id = dst.inventory_identity()
    if dst_id is None:
        return
    notes = _planned_kept(ctx)
    before = notes.get(dst_id, False)
    for other in [k for k in notes if k[0] == dst_id[0] and overlaps(k[1], dst_id[1])]:
        del notes[other]
    if params.reuse_listing:
        notes[dst_id] = src.reports_versions or before


def planned_holdings(ctx: StepContext) -> dict[str, tuple[int, int]]:
    """Endpoint -> (blobs, bytes) it will hold once the transfer steps planned so far ran (the dry-run's own
    notes; a container a presync fills is empty while the plan runs)."""
    return run_resources(ctx.resources).obtain(_PLANNED_HOLDINGS, dict)


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


#: Seconds per blob ``verify`` reads back (Get Blob Properties, ``concurrency`` at a time): a local storage emulator
#: on 2 cores answers 50 in 40-80 ms.
_ASSUMED_READ_BACK_SECONDS = 1.2e-3


def listings_overlap(source: BlobEndpoint, destination: BlobEndpoint) -> bool:
    """Whether the two listings of a diff, run side by side, cost about the longer one: different services (a
    folder walk beside a storage listing, two storage accounts). Two containers of one account share the service,
    and two folder walks this process's CPU: they cost their sum."""
    if source.kind != destination.kind:
        return True
    if source.kind == "folder" or source.account_url is None or destination.account_url is None:
        return False
    return source.account_url.rstrip("/") != destination.account_url.rstrip("/")


def transfer_estimate(params: TransferParams, diff: Diff, sides: ListingSides, source: Mapping[str, Compact],
                      will_hold: tuple[int, int] | None = None, *,
                      reused: tuple[bool, bool] = (False, False)) -> tuple[Estimate, Diff, tuple[int, int]]:
    """Seconds of a transfer in the run, the diff it would work from, and the blobs and bytes the destination
    then holds.

    Listings, counted as the step makes them: ``check`` lists the source and the destination side by side (the
    longer of the two where they are different services, else their sum: :func:`listings_overlap`), ``apply``
    works from what check read (it lists both again only beyond :data:`SURVEY_LIMIT` blobs to copy), and
    ``verify`` reads back each blob copied (:func:`reads_back`, at :data:`_ASSUMED_READ_BACK_SECONDS` each) or,
    beyond that share of the destination, lists it once more. Each listing is timed on its side now and projected
    to the
    blobs that side will hold: a source an earlier step of this plan fills (``will_hold``) holds what that step
    leaves there; a destination a presync before this step fills (``planned_change``, the destination lacking
    more than that share) holds the whole source. Then only the expected delta is copied: that share of the
    source, or, with ``planned_recent_hours``, the share modified that recently when larger. A side the run takes
    from the inventory an earlier step of it keeps (``reused``: source, destination) is not listed at all.
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
    # check lists both sides (apply again beyond SURVEY_LIMIT), verify reads back the copies or lists once more.
    again = 2 if blobs > SURVEY_LIMIT else 1
    src_listing = 0.0 if reused[0] else listing_seconds(src_count, sides.src_count, sides.src_seconds, src_rate)
    dst_listing = 0.0 if reused[1] else listing_seconds(dst_before, sides.dst_count, sides.dst_seconds, dst_rate)
    overlap = listings_overlap(params.source, params.destination)
    check = max(src_listing, dst_listing) if overlap else src_listing + dst_listing
    if reads_back(blobs, dst_after):
        verify, verify_how = blobs * _ASSUMED_READ_BACK_SECONDS, f"{blobs} copies read back"
    else:
        verify = listing_seconds(dst_after, sides.dst_count, sides.dst_seconds, dst_rate)
        verify_how = f"{dst_after} destination blob(s) listed again"
    listings = again * check + verify
    seconds = listings + blobs / _ASSUMED_BLOBS_PER_S + nbytes / _ASSUMED_BYTES_PER_S
    src_what = "kept by an earlier step: not listed" if reused[0] else f"at {src_how}"
    dst_what = "kept by an earlier step: not listed" if reused[1] else f"at {dst_how}"
    basis = (f"listings {listings:.2f} s: {again} x {src_count} source blob(s) {src_what} "
             f"{'beside' if overlap else 'and'} {dst_before} destination blob(s) {dst_what} (timed now: "
             f"{sides.src_count} and {sides.dst_count} blob(s) in {sides.src_seconds * 1000:.0f} and "
             f"{sides.dst_seconds * 1000:.0f} ms); verify {verify:.2f} s: {verify_how}")
    basis = "; ".join([*parts, basis])
    basis += f"; copies at an assumed {_ASSUMED_BLOBS_PER_S:.0f} blobs/s and {_ASSUMED_BYTES_PER_S / MiB:.0f} MiB/s"
    return Estimate(seconds=seconds, items=blobs, bytes=nbytes, basis=basis), diff, (dst_after, src_bytes)


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
    """Seconds of ``blobs.verify`` in the run: both listings, side by side, and the hashing, as ``apply`` does them.

    The destination is listed as it will be: a transfer planned before fills it (the dry-run's notes), or, when
    it lacks most source blobs now, it will hold the source's. Its copies then carry an MD5 (every transfer writes
    one) and, from a source with versions, the version they were read from: the run hashes only the source blobs
    without an MD5 whose copy will not have recorded their current version (with ``rehash: all``, every one of
    them), and the destination blobs already there without an MD5. A sample of those is read and hashed now, the
    way the run does, and the time scaled by blob count.
    """
    sides = ListingSides(src_kind=params.source.kind, src_count=len(listed), src_seconds=src_seconds,
                         dst_kind=params.destination.kind, dst_count=len(have), dst_seconds=dst_seconds)
    planned = planned_holdings(ctx).get(params.destination.cache_key())
    dst_count = len(have)
    if planned is not None and planned[0] > dst_count:
        dst_count, how = planned[0], "as the steps before leave it"
    elif len(have) * 2 < len(listed):
        dst_count, how = len(listed), "once filled from the source"
    else:
        how = "as it is"
    dst_rate, dst_how = sides.per_blob("dst")
    dst_listing = listing_seconds(dst_count, len(have), dst_seconds, dst_rate)
    overlap = listings_overlap(params.source, params.destination)
    listing = max(src_seconds, dst_listing) if overlap else src_seconds + dst_listing
    basis = (f"listings {listing:.2f} s: {len(listed)} source blob(s) in {src_seconds * 1000:.0f} ms (timed) "
             f"{'beside' if overlap else 'and'} {dst_count} at the destination ({how}) at {dst_how}")
    tokens = params.rehash == "changed" and src.reports_versions
    refilled = planned is not None  # transfers planned before write (or rewrite) the destination's copies

    def hashed(info: BlobInfo) -> bool:
        copy = have.get(info.name)
        if info.md5 is not None:
            return copy is not None and copy.md5 is None and not refilled
        if not tokens or info.version is None:
            return True
        if copy is not None and copy.md5 is not None and copy.recorded == source_token(info.version, copy.md5):
            return False
        return not refilled

    to_hash = [i for i in listed if hashed(i)] if params.compare_md5 else []
    hashing = 0.0
    if to_hash:
        took, sampled = hash_probe(ctx, src, to_hash, params.concurrency)
        hashing = took * len(to_hash) / sampled
        basis += (f"; {len(to_hash)} blob(s) to read and hash, {sampled} hashed now in {took * 1000:.0f} ms "
                  f"({params.concurrency} threads), {hashing:.2f} s")
    elif params.compare_md5 and tokens:
        basis += "; no blob to read: every copy records the source version it was read from"
    return Estimate(seconds=listing + hashing, items=len(listed), bytes=sum(i.size for i in to_hash), basis=basis)
