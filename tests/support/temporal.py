"""Pytest plugin: one Temporal dev server per test session (see :mod:`fixtures.services.temporal`), and one set
of shared fleet stand-ins (Azurite, BIND, a PostgreSQL state store) to which each fleet test adds its tenants."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fixtures.services.temporal import TemporalServer, start_temporal, stop_temporal


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    server = start_temporal(tmp_path_factory.mktemp("temporal"))
    try:
        yield server
    finally:
        stop_temporal(server)


@pytest.fixture(scope="session")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from fixtures.fleet_demo import FleetStack

    with FleetStack(tmp_path_factory.mktemp("fleet")) as stack:
        yield stack
