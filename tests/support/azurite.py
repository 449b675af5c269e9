"""Pytest plugin: one Azurite blob service per test session (see :mod:`fixtures.services.azurite`), and a
policy that counts requests per blob."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.pipeline.policies import SansIOHTTPPolicy

from fixtures.services.azurite import Azurite, start_azurite, stop_azurite


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
