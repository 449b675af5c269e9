"""pytest fixtures for the ARM emulator: ``arm_server`` (one per session) and ``arm`` (reset for each test).

Route modules loaded: every ``tests.armemu.<name>`` listed in :data:`ROUTE_MODULES` that exists, so a module
added later (``tests/armemu/dns.py``) is picked up by adding its name here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from tests.armemu.core import ArmEmulator

ROUTE_MODULES = ("tests.armemu.sql", "tests.armemu.dns")


def _available(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is not None]


@pytest.fixture(scope="session")
def arm_server() -> Iterator[ArmEmulator]:
    with ArmEmulator(modules=_available(ROUTE_MODULES)) as emulator:
        yield emulator


@pytest.fixture
def arm(arm_server: ArmEmulator) -> Iterator[ArmEmulator]:
    """The session's emulator, emptied: no resources, faults, operations or logged requests."""
    arm_server.reset()
    yield arm_server
    arm_server.release_operations()

