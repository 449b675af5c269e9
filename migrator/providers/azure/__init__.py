"""Azure through its SDKs: credentials, the ARM endpoint, Azure SQL's control plane, resumable operations."""

from __future__ import annotations

from migrator.providers.azure.credentials import (
    AccessTokenCredential,
    ArmSettings,
    CredentialSpec,
    make_credential,
)
from migrator.providers.azure.errors import ArmError, arm_errors, translate
from migrator.providers.azure.lro import pending, run_lro
from migrator.providers.azure.sql import SqlControlPlane

__all__ = [
    "AccessTokenCredential",
    "ArmError",
    "ArmSettings",
    "CredentialSpec",
    "SqlControlPlane",
    "arm_errors",
    "make_credential",
    "pending",
    "run_lro",
    "translate",
]
