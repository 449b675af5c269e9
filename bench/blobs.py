"""Blob migration benchmark on Azurite: every figure is a ratio against a baseline measured in the same run.

(a) N small blobs: ``blobs.presync`` against a plain sequential azure-storage-blob upload loop (target >= 1.5x);
(b) a few large blobs: the same, server-side and streamed in blocks (target >= 1.3x);
(c) delta sync with 1% changed against the full presync of (a) (target <= 5%);
(d) resume after a crash at about 90% of the bytes: bytes sent again as a share of the total (target: only the
    blocks in flight at the crash);
(e) peak RSS of a delta sync over a large inventory (synthetic stores, so only migrator's own memory counts),
    against the same with a tenth of the blobs (target under 300 MB, and not growing with the blob count
    beyond the inventory itself).

    .venv/bin/python bench/blobs.py [--small 2000] [--small-size 4096] [--large 4] [--large-mib 64]
                                    [--inventory 200000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.core.pipeline.policies import SansIOHTTPPolicy  # noqa: E402

from migrator.providers.blob import PER_RETRY_POLICIES, BlobEndpoint  # noqa: E402
from migrator.providers.blob.base import BlobInfo, BlobStore  # noqa: E402
from migrator.steps.blobs import Presync, Sync  # noqa: E402
from migrator.testing import MemoryContext, run_step  # noqa: E402
from tests.support.azurite import CLOUD_ACCOUNT, SOURCE_ACCOUNT, Azurite, start_azurite, stop_azurite  # noqa: E402

MiB = 1024 * 1024


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def populate(azurite: Azurite, account: str, count: int, size: int, prefix: str = "b") -> tuple[str, list[str]]:
    name = azurite.create_container(account)
    client = azurite.service(account).get_container_client(name)
    names = [f"{prefix}/{i:06d}.bin" for i in range(count)]
    body = os.urandom(size)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.upload_blob(n, body, overwrite=True, max_concurrency=4), names))
    return name, names


def sequential_upload(azurite: Azurite, count: int, size: int) -> float:
    """The baseline: one upload_blob after another, as a plain script would do it."""
    name = azurite.create_container(CLOUD_ACCOUNT)
    client = azurite.service(CLOUD_ACCOUNT).get_container_client(name)
    body = os.urandom(size)
    start = time.perf_counter()
    for i in range(count):
        client.upload_blob(f"b/{i:06d}.bin", body, overwrite=True)
    return time.perf_counter() - start


def presync(azurite: Azurite, source: str, ctx: MemoryContext | None = None, **params: Any) -> tuple[float, dict]:
    backup = params.pop("destination", None) or azurite.create_container(CLOUD_ACCOUNT)
    step = Presync("presync", Presync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, source),
                                             destination=azurite.endpoint(CLOUD_ACCOUNT, backup), **params))
    seconds, (_, out) = timed(run_step, step, ctx or MemoryContext())
    return seconds, dict(out, destination=backup)


class ByteCounter(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Counts upload bytes; after ``crash_at`` bytes every request fails, as if the process had died."""

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        self.sent = 0
        self.crash_at = crash_at
        self._lock = threading.Lock()

    def on_request(self, request: Any) -> None:
        http = request.http_request
        if http.method != "PUT":
            return
        with self._lock:
            if self.crash_at is not None and self.sent >= self.crash_at:
                raise RuntimeError("crashed")
            self.sent += int(http.headers.get("Content-Length") or 0)


# -- (e) synthetic stores: an inventory without I/O, so only the step's own memory shows ----------------------


class SyntheticStore(BlobStore):
    def __init__(self, count: int, changed_every: int = 0) -> None:
        self.count, self.changed_every = count, changed_every

    def describe(self) -> str:
        return "synthetic"

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for i in range(self.count):
            tag = b"x" if self.changed_every and i % self.changed_every == 0 else b"s"
            yield BlobInfo(name=f"tenant/files/{i % 997:03d}/document-{i:08d}.docx", size=4096,
                           md5=hashlib.md5(tag * 4096).digest(), last_modified=1.0,
                           content_type="application/octet-stream", metadata={"owner": "x"})

    def info(self, name: str) -> BlobInfo | None:
        return None

    def open_read(self, name: str) -> Any:
        import io

        return io.BytesIO(b"x" * 4096)  # only changed blobs are read

    def write(self, name: str, data: Any, **kwargs: Any) -> BlobInfo:
        return BlobInfo(name=name, size=4096, md5=kwargs.get("md5"))

    def delete(self, name: str) -> None:
        return None


def inventory_rss(count: int) -> float:
    """Runs a delta sync over ``count`` synthetic blobs (1% changed) and returns its peak RSS in MiB."""
    source = BlobEndpoint(kind="folder", path="/synthetic/source")
    destination = BlobEndpoint(kind="folder", path="/synthetic/destination")
    ctx = MemoryContext()
    ctx.resources[f"blob-store:{source.cache_key()}:8"] = SyntheticStore(count, changed_every=100)
    ctx.resources[f"blob-store:{destination.cache_key()}:8"] = SyntheticStore(count)
    step = Sync("sync", Sync.Params(source=source, destination=destination, server_side_copy=False))
    out = step.apply(ctx)
    assert out["copied"] == count // 100, out
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_in_subprocess(count: int) -> float:
    result = subprocess.run([sys.executable, __file__, "--rss-only", str(count)], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--small-size", type=int, default=4096)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--inventory", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rss-only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_only is not None:
        print(f"{inventory_rss(args.rss_only):.1f}")
        return

    results: dict[str, Any] = {}
    azurite = start_azurite()
    try:
        c = args.concurrency
        # (a) small blobs
        source, names = populate(azurite, SOURCE_ACCOUNT, args.small, args.small_size)
        base_a = sequential_upload(azurite, args.small, args.small_size)
        step_a, out_a = presync(azurite, source, concurrency=c)
        stream_a, _ = presync(azurite, source, concurrency=c, server_side_copy=False)
        print(f"(a) {args.small} x {args.small_size} B: sequential loop {base_a:.2f} s; presync server-side "
              f"{step_a:.2f} s ({base_a / step_a:.2f}x), streamed {stream_a:.2f} s ({base_a / stream_a:.2f}x) "
              "[target >= 1.5x]")
        results["a"] = {"baseline_s": base_a, "server_side_s": step_a, "streamed_s": stream_a,
                        "ratio": base_a / step_a, "ratio_streamed": base_a / stream_a}

        # (c) delta sync with 1% changed, against the full presync
        client = azurite.service(SOURCE_ACCOUNT).get_container_client(source)
        changed = names[:: 100]
        for name in changed:
            client.upload_blob(name, os.urandom(args.small_size), overwrite=True)
        sync = Sync("sync", Sync.Params(source=azurite.endpoint(SOURCE_ACCOUNT, source),
                                        destination=azurite.endpoint(CLOUD_ACCOUNT, out_a["destination"]),
                                        concurrency=c))
        step_c, (_, out_c) = timed(run_step, sync, MemoryContext())
        assert out_c["copied"] == len(changed), out_c
        for name in changed:  # change them again to time apply alone
            client.upload_blob(name, os.urandom(args.small_size), overwrite=True)
        apply_c, _ = timed(sync.apply, MemoryContext())
        print(f"(c) delta sync, {len(changed)} of {args.small} changed: check+apply+verify {step_c:.2f} s = "
              f"{100 * step_c / step_a:.1f}% of the full presync; apply alone {apply_c:.2f} s = "
              f"{100 * apply_c / step_a:.1f}% [target <= 5%]")
        results["c"] = {"sync_s": step_c, "share": step_c / step_a, "apply_s": apply_c,
                        "apply_share": apply_c / step_a}

        # (b) large blobs
        size = args.large_mib * MiB
        big, _ = populate(azurite, SOURCE_ACCOUNT, args.large, size, prefix="large")
        base_b = sequential_upload(azurite, args.large, size)
        server_b, _ = presync(azurite, big, concurrency=c)
        stream_b, _ = presync(azurite, big, concurrency=c, server_side_copy=False)
        print(f"(b) {args.large} x {args.large_mib} MiB: sequential loop {base_b:.2f} s; presync server-side "
              f"{server_b:.2f} s ({base_b / server_b:.2f}x), streamed in blocks {stream_b:.2f} s "
              f"({base_b / stream_b:.2f}x) [target >= 1.3x]")
        results["b"] = {"baseline_s": base_b, "server_side_s": server_b, "streamed_s": stream_b,
                        "ratio": base_b / server_b, "ratio_streamed": base_b / stream_b}

        # (d) crash at about 90% of the bytes of a streamed presync, then resume
        total = args.large * size
        crash = ByteCounter(crash_at=int(total * 0.9))
        first = MemoryContext()
        first.resources[PER_RETRY_POLICIES] = [crash]
        backup = azurite.create_container(CLOUD_ACCOUNT)
        with contextlib.suppress(RuntimeError):
            presync(azurite, big, first, concurrency=c, server_side_copy=False, attempts_per_blob=1,
                    destination=backup)
        counter = ByteCounter()
        second = MemoryContext(items=first.items)
        second.resources[PER_RETRY_POLICIES] = [counter]
        presync(azurite, big, second, concurrency=c, server_side_copy=False, destination=backup)
        resent = crash.sent + counter.sent - total
        print(f"(d) crash after {crash.sent / MiB:.0f} of {total / MiB:.0f} MiB, resume sent {counter.sent / MiB:.0f}"
              f" MiB: {resent / MiB:.1f} MiB sent again = {100 * resent / total:.2f}% of the total "
              f"[target: at most the blocks in flight, {c} x 4 MiB = {c * 4} MiB]")
        results["d"] = {"crash_sent": crash.sent, "resume_sent": counter.sent, "resent": resent,
                        "share": resent / total}
    finally:
        stop_azurite(azurite)

    # (e) memory against inventory size
    small_rss = rss_in_subprocess(args.inventory // 10)
    large_rss = rss_in_subprocess(args.inventory)
    print(f"(e) peak RSS of a delta sync: {args.inventory // 10} blobs {small_rss:.0f} MiB, {args.inventory} blobs "
          f"{large_rss:.0f} MiB ({large_rss / small_rss:.2f}x for 10x the blobs) [target < 300 MB]")
    results["e"] = {"rss_small_mib": small_rss, "rss_large_mib": large_rss}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
