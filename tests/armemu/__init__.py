"""A local Azure Resource Manager emulator for tests: see :mod:`tests.armemu.core`."""

from __future__ import annotations

from tests.armemu.core import ArmEmulator, ArmError, ArmRequest, ArmResponse, StaticTokenCredential

__all__ = ["ArmEmulator", "ArmError", "ArmRequest", "ArmResponse", "StaticTokenCredential"]
