"""Pytest plugin: BIND 9 for the DNS tests (see :mod:`fixtures.services.bind`), one pair per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fixtures.services.bind import SECRET_ENV, BindServer, start_bind, stop_bind


@pytest.fixture(scope="session")
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    """A primary and a secondary BIND 9 serving ``example.test`` and ``stale.test`` on a free port."""
    server = start_bind(tmp_path_factory.mktemp("bind"))
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = server.key_secret
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = previous
        stop_bind(server)
