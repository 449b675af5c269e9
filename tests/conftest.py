"""Shared pytest configuration: each real component's fixtures live in their own plugin module."""

from __future__ import annotations

pytest_plugins: list[str] = [
    # plugin modules under tests/support/ are added here, one line each
    "tests.support.azurite",
    "tests.armemu.plugin",
    "tests.support.bind",
    "tests.support.postgres",
    "tests.support.engine",
    "tests.support.statestore",
    "tests.support.temporal",
]
