"""Pytest plugin: one Azurite blob service per test session, with a self-hosted ``source`` and a ``cloud`` account.

Azurite listens on a free loopback port (``--blobPort 0``; the port is read from its start-up line), keeps
everything in memory, and accepts the SDK's API version (``--skipApiVersionCheck``). Tests share the service
and keep apart by creating containers with unique names through :meth:`Azurite.create_container`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.pipeline.policies import SansIOHTTPPolicy

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
SOURCE_ACCOUNT = "source"
CLOUD_ACCOUNT = "cloud"
_LISTENING = re.compile(r"successfully listens on (http://[\d.]+:(\d+))")


def account_key(account: str) -> str:
    """A deterministic, valid (base64, 64 bytes) key per account name, distinct between accounts."""
    return base64.b64encode(hashlib.sha512(f"azurite-{account}".encode()).digest()).decode()


@dataclass
class Azurite:
    """A running Azurite blob service and what a test needs to reach its accounts."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)
    workdir: str = ""

    def account_url(self, account: str) -> str:
        return f"http://{self.host}:{self.port}/{account}"

    def key(self, account: str) -> str:
        return self.keys[account]

    def connection_string(self, account: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={self.keys[account]};"
            f"BlobEndpoint={self.account_url(account)};"
        )

    # The two accounts every blob test uses, spelled out for readability.
    @property
    def source_url(self) -> str:
        return self.account_url(SOURCE_ACCOUNT)

    @property
    def cloud_url(self) -> str:
        return self.account_url(CLOUD_ACCOUNT)

    @property
    def source_key(self) -> str:
        return self.keys[SOURCE_ACCOUNT]

    @property
    def cloud_key(self) -> str:
        return self.keys[CLOUD_ACCOUNT]

    @property
    def source_connection_string(self) -> str:
        return self.connection_string(SOURCE_ACCOUNT)

    @property
    def cloud_connection_string(self) -> str:
        return self.connection_string(CLOUD_ACCOUNT)

    def service(self, account: str) -> Any:
        """A ``BlobServiceClient`` for ``account`` (account-key auth)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.account_url(account), credential=self.keys[account])

    def create_container(self, account: str, name: str | None = None) -> str:
        """Creates a container (a unique name unless given) and returns its name."""
        name = name or f"c{uuid.uuid4().hex[:20]}"
        self.service(account).create_container(name)
        return name

    def endpoint(self, account: str, container: str, *, prefix: str = "") -> dict[str, Any]:
        """``BlobEndpoint`` fields for ``account``/``container`` with its key given inline (tests only)."""
        return {"kind": "azure", "account_url": self.account_url(account), "container": container,
                "account_key": self.keys[account], "prefix": prefix}


def start_azurite(accounts: tuple[str, ...] = (SOURCE_ACCOUNT, CLOUD_ACCOUNT), *, timeout: float = 60.0) -> Azurite:
    """Starts ``azurite-blob`` on a free loopback port and waits until it listens."""
    if not AZURITE_BLOB.exists():
        raise RuntimeError(f"{AZURITE_BLOB} is missing: run `make install` (npm ci)")
    keys = {account: account_key(account) for account in accounts}
    env = dict(os.environ, AZURITE_ACCOUNTS=";".join(f"{a}:{k}" for a, k in keys.items()))
    workdir = tempfile.mkdtemp(prefix="azurite-")
    process = subprocess.Popen(
        [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    found: dict[str, Any] = {}
    seen: list[str] = []
    ready = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for raw in process.stdout:  # keep draining so Azurite never blocks on a full pipe
            line = raw.decode(errors="replace")
            if not ready.is_set():
                seen.append(line)
                match = _LISTENING.search(line)
                if match:
                    found["port"] = int(match.group(2))
                    ready.set()
        ready.set()

    threading.Thread(target=read_output, name="azurite-output", daemon=True).start()
    if not ready.wait(timeout) or "port" not in found:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError("azurite-blob did not start: " + "".join(seen)[-2000:])
    return Azurite(host="127.0.0.1", port=found["port"], process=process, keys=keys, workdir=workdir)


def stop_azurite(azurite: Azurite) -> None:
    azurite.process.terminate()
    try:
        azurite.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        azurite.process.kill()
        azurite.process.wait()
    if azurite.workdir:
        shutil.rmtree(azurite.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A session-wide Azurite blob service with the ``source`` and ``cloud`` accounts."""
    service = start_azurite()
    try:
        yield service
    finally:
        stop_azurite(service)


class RequestCounter(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """An azure-core policy that counts requests by kind and blob name (put it in ``ctx.resources``).

    ``uploads`` counts requests that send blob content (Put Blob, Put Block, Copy Blob) per blob name, so a test
    can prove that a resumed step sent nothing twice.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.uploads: dict[str, int] = {}
        self.blocks: dict[str, int] = {}
        self.total = 0

    def on_request(self, request: Any) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        http = request.http_request
        parts = urlsplit(http.url)
        query = parse_qs(parts.query)
        segments = parts.path.split("/", 3)  # '', account, container, blob
        name = unquote(segments[3]) if len(segments) > 3 else ""
        comp = (query.get("comp") or [""])[0]
        with self._lock:
            self.total += 1
            if http.method == "PUT" and name and comp in ("", "block"):
                self.uploads[name] = self.uploads.get(name, 0) + 1
                if comp == "block":
                    self.blocks[name] = self.blocks.get(name, 0) + 1
