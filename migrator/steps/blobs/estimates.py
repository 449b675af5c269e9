"""The work the blob steps will do, for the plan: listings timed now and projected, copies and reads counted.

Each estimate counts its work for the estimator (:mod:`migrator.estimator`): blobs listed (``blob.list.azure``,
``blob.list.folder``), copied (``blob.copy``, ``blob.bytes``), read back (``blob.read_back``) and hashed
(``blob.hash``). The listings the plan times and the hash probe are samples of those rates; a listing the plan
just made also counts as the seconds it took (the run lists that container again, as it holds it now). The
estimator prices the counts with the rates measured on this machine, or the assumed ones; the basis says which.
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
from dataclasses import dataclass, field
from typing import Literal

from migrator.estimator import Rates, Sample, Work, estimate
from migrator.providers.blob import BlobEndpoint, BlobInfo, BlobStore, run_resources
from migrator.providers.blob.copy import source_token
from migrator.resources import ResourceKey
from migrator.step import Estimate, StepContext
from migrator.steps.blobs.inventory import SURVEY_LIMIT, Compact, Diff
from migrator.steps.blobs.params import TransferParams, VerifyParams
from migrator.steps.blobs.reuse import Identity, kept_destination, overlaps, peek
from migrator.steps.blobs.verify import reads_back

#: A listing of fewer blobs than this times the request more than the blobs: it is no sample of the rate.
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


def verify_reuses(ctx: StepContext, params: VerifyParams, src: BlobStore, dst: BlobStore) -> bool:
    """Whether ``blobs.verify`` (``reuse_listing``) will work from the destination's inventory the run keeps
    instead of listing it: kept now (a plan inside the run process), or kept by a transfer planned before."""
    if not params.reuse_listing or params.compare_properties:
        return False
    if kept_destination(ctx, params, src, dst) is not None:
        return True
    dst_id = dst.inventory_identity()
    return dst_id is not None and dst_id != src.inventory_identity() and _planned_kept(ctx).get(dst_id) is True


def note_kept(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore) -> None:
    """After planning a transfer: the run keeps its destination's inventory (with ``reuse_listing``), and no
    longer any other of that container (it writes there)."""
    dst_id = dst.inventory_identity()
    if dst_id is None:
        return
    notes = _planned_kept(ctx)
    for other in [k for k in notes if k[0] == dst_id[0] and overlaps(k[1], dst_id[1])]:
        del notes[other]
    if params.reuse_listing:
        notes[dst_id] = True  # a kept destination is listed with metadata (its copies' recorded versions)


def planned_holdings(ctx: StepContext) -> dict[str, tuple[int, int]]:
    """Endpoint -> (blobs, bytes) it will hold once the transfer steps planned so far ran (the dry-run's own
    notes; a container a presync fills is empty while the plan runs)."""
    return run_resources(ctx.resources).obtain(_PLANNED_HOLDINGS, dict)


def listing_rate(kind: str) -> str:
    """The rate of listing a store of ``kind`` (seconds a blob)."""
    return "blob.list.azure" if kind == "azure" else "blob.list.folder"


@dataclass(frozen=True)
class ListingSides:
    """Both listings as the plan timed them: kind of store, blobs listed, seconds."""

    src_kind: str
    src_count: int
    src_seconds: float
    dst_kind: str
    dst_count: int
    dst_seconds: float
    #: When the listings were timed.
    at: float = field(default_factory=time.time)

    def samples(self) -> list[Sample]:
        """The listings that held enough blobs to time the blobs rather than the request: samples of the rate
        of their kind of store."""
        return [Sample(listing_rate(kind), count, seconds, self.at)
                for kind, count, seconds in ((self.src_kind, self.src_count, self.src_seconds),
                                             (self.dst_kind, self.dst_count, self.dst_seconds))
                if count >= _MIN_LISTED_TO_MEASURE and seconds > 0]

    def rates(self, rates: Rates | None = None) -> Rates:
        """``rates`` (assumed ones when None) with these listings' samples in them."""
        book = rates if rates is not None else Rates()
        book.absorb(self.samples())
        return book

    def per_blob(self, side: Literal["src", "dst"], rates: Rates | None = None) -> tuple[float, str]:
        """Seconds per blob of listing ``side``: the rate of its kind of store, in which the listings timed now
        (on that side, or on the other side when it is the same kind of store) held enough blobs to count."""
        kind = self.src_kind if side == "src" else self.dst_kind
        value = self.rates(rates).value(listing_rate(kind))
        if value.source == "assumed":
            return value.seconds, f"{value.seconds * 1e6:.0f} us a blob (assumed for {kind})"
        timed = [name for name, k, count in (("source", self.src_kind, self.src_count),
                                             ("destination", self.dst_kind, self.dst_count))
                 if k == kind and count >= _MIN_LISTED_TO_MEASURE]
        where = f"; timed on the {' and '.join(timed)} now" if timed else ""
        return value.seconds, f"{value.seconds * 1e6:.0f} us a blob ({value.source}{where})"

    def listing(self, side: Literal["src", "dst"], count: int) -> Work:
        """One listing of ``side`` holding ``count`` blobs: the listing timed now, and the blobs it did not hold
        at the rate of its kind of store."""
        kind, timed, seconds = ((self.src_kind, self.src_count, self.src_seconds) if side == "src"
                                else (self.dst_kind, self.dst_count, self.dst_seconds))
        name = "source" if side == "src" else "destination"
        return Work(fixed={f"{name} listing ({timed} blob(s))": seconds}).add(listing_rate(kind),
                                                                               max(count - timed, 0))


def listing_seconds(count: int, measured_count: int, measured_seconds: float, per_blob: float) -> float:
    """One listing of ``count`` blobs: the timed listing, plus the blobs it did not hold at ``per_blob``."""
    return measured_seconds + max(count - measured_count, 0) * per_blob


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
                      will_hold: tuple[int, int] | None = None, *, reused: tuple[bool, bool] = (False, False),
                      rates: Rates | None = None) -> tuple[Estimate, Diff, tuple[int, int]]:
    """The work of a transfer in the run, priced by ``rates`` (assumed ones when None; the engine prices it again
    with the command's), the diff it would work from, and the blobs and bytes the destination then holds.

    Listings, counted as the step makes them: ``check`` lists the source and the destination side by side (the
    longer of the two where they are different services, else their sum: :func:`listings_overlap`), ``apply``
    works from what check read (it lists both again only beyond :data:`SURVEY_LIMIT` blobs to copy), and
    ``verify`` reads back each blob copied (:func:`reads_back`, ``blob.read_back`` each) or, beyond that share of
    the destination, lists it once more. Each listing is timed on its side now and projected to the blobs that
    side will hold: a source an earlier step of this plan fills (``will_hold``) holds what that step leaves
    there; a destination a presync before this step fills (``planned_change``, the destination lacking more than
    that share) holds the whole source. Then only the expected delta is copied: that share of the source, or,
    with ``planned_recent_hours``, the share modified that recently when larger. A side the run takes from the
    inventory an earlier step of it keeps (``reused``: source, destination) is not listed at all.
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
        share, how = _planned_share(params, source, src_count)
        blobs, nbytes = math.ceil(share * src_count), round(share * src_bytes)
        dst_before = dst_after = max(sides.dst_count, src_count)  # the presync fills it before this step runs
        parts.append(f"delta only: {how} ({blobs} of {src_count} blob(s))")
    book = sides.rates(rates)
    # check lists both sides (apply again beyond SURVEY_LIMIT), verify reads back the copies or lists once more.
    again = 2 if blobs > SURVEY_LIMIT else 1
    src_listing = Work() if reused[0] else sides.listing("src", src_count)
    dst_listing = Work() if reused[1] else sides.listing("dst", dst_before)
    overlap = listings_overlap(params.source, params.destination)
    check = Work().alongside(src_listing, dst_listing) if overlap else src_listing.plus(dst_listing)
    if reads_back(blobs, dst_after):
        verify, verify_how = Work().add("blob.read_back", blobs), f"{blobs} copies read back"
    else:
        verify = sides.listing("dst", dst_after)
        verify_how = f"{dst_after} destination blob(s) listed again"
    listings = check.times(again).plus(verify)
    work = listings.plus(Work(samples=sides.samples()).add("blob.copy", blobs).add("blob.bytes", nbytes))
    src_what = "kept by an earlier step: not listed" if reused[0] else f"at {sides.per_blob('src', book)[1]}"
    dst_what = "kept by an earlier step: not listed" if reused[1] else f"at {sides.per_blob('dst', book)[1]}"
    note = (f"listings {book.seconds_of(listings):.2f} s: {again} x {src_count} source blob(s) {src_what} "
            f"{'beside' if overlap else 'and'} {dst_before} destination blob(s) {dst_what} (timed now: "
            f"{sides.src_count} and {sides.dst_count} blob(s) in {sides.src_seconds * 1000:.0f} and "
            f"{sides.dst_seconds * 1000:.0f} ms); verify {book.seconds_of(verify):.2f} s: {verify_how}; "
            f"{blobs} blob(s), {nbytes} bytes to copy")
    work.note = "; ".join([*parts, note])
    return estimate(work, book, items=blobs, bytes=nbytes), diff, (dst_after, src_bytes)


def _planned_share(params: TransferParams, source: Mapping[str, Compact], src_count: int) -> tuple[float, str]:
    """The share of the source expected to change after the presync, and how it was reached."""
    assert params.planned_change is not None
    share = params.planned_change
    how = f"{share:.0%} expected to change after the presync"
    if params.planned_recent_hours is not None:
        since = time.time() - params.planned_recent_hours * 3600
        recent = sum(1 for c in source.values() if c.last_modified is not None and c.last_modified >= since)
        if recent / src_count > share:
            share = recent / src_count
            how = f"{share:.0%} modified in the last {params.planned_recent_hours:g} h"
    return share, how


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
                    src_seconds: float, have: Mapping[str, Compact], dst_seconds: float,
                    rates: Rates | None = None, *, kept: bool = False) -> Estimate:
    """The work of ``blobs.verify`` in the run: both listings, side by side, and the hashing, as ``apply`` does
    them, priced by ``rates`` (assumed ones when None).

    The destination is listed as it will be: a transfer planned before fills it (the dry-run's notes), or, when
    it lacks most source blobs now, it will hold the source's. Its copies then carry an MD5 (every transfer writes
    one) and, from a source with versions, the version they were read from: the run hashes only the source blobs
    without an MD5 whose copy will not have recorded their current version (with ``rehash: all``, every one of
    them), and the destination blobs already there without an MD5. A sample of those is read and hashed now, the
    way the run does: a sample of the ``blob.hash`` rate, which the blobs to hash are counted at. A destination
    the run keeps the inventory of (``kept``: :func:`verify_reuses`) is not listed.
    """
    sides = ListingSides(src_kind=params.source.kind, src_count=len(listed), src_seconds=src_seconds,
                         dst_kind=params.destination.kind, dst_count=len(have), dst_seconds=dst_seconds)
    book = sides.rates(rates)
    planned = planned_holdings(ctx).get(params.destination.cache_key())
    dst_count = len(have)
    if planned is not None and planned[0] > dst_count:
        dst_count, how = planned[0], "as the steps before leave it"
    elif len(have) * 2 < len(listed):
        dst_count, how = len(listed), "once filled from the source"
    else:
        how = "as it is"
    src_listing = sides.listing("src", len(listed))
    dst_listing = Work() if kept else sides.listing("dst", dst_count)
    overlap = listings_overlap(params.source, params.destination)
    listing = Work().alongside(src_listing, dst_listing) if overlap else src_listing.plus(dst_listing)
    dst_how = "kept by the steps before: not listed" if kept else f"at {sides.per_blob('dst', book)[1]}"
    note = (f"listings {book.seconds_of(listing):.2f} s: {len(listed)} source blob(s) in {src_seconds * 1000:.0f} "
            f"ms (timed) {'beside' if overlap else 'and'} {dst_count} at the destination ({how}) {dst_how}")
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
    work = listing.plus(Work(samples=sides.samples()))
    if to_hash:
        took, sampled = hash_probe(ctx, src, to_hash, params.concurrency)
        work.add("blob.hash", len(to_hash))
        sample = book.record("blob.hash", sampled, took)
        work.samples += [sample] if sample is not None else []
        note += (f"; {len(to_hash)} blob(s) to read and hash, {sampled} hashed now in {took * 1000:.0f} ms "
                 f"({params.concurrency} threads)")
    elif params.compare_md5 and tokens:
        note += "; no blob to read: every copy records the source version it was read from"
    work.note = note
    return estimate(work, book, items=len(listed), bytes=sum(i.size for i in to_hash))
