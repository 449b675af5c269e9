"""Azure Storage errors as migrator's own, saying what to fix: one mapping for the SDK and the REST fast path.

Throttling (429), server faults (500, 502, 503, 504) and timeouts become :class:`TransientError` (retried),
bad credentials, a missing container and other 403/404 become :class:`BlobAccessError` or
:class:`PermanentError` (fail fast), each naming the account and container.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from migrator.errors import ExitCode, MigratorError, PermanentError, TransientError
from migrator.providers.azure.errors import retry_after as retry_after_seconds
from migrator.secrets import without_url_paths

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class BlobAccessError(PermanentError):
    """Credentials or names that can never work (wrong key, missing container): fix the input and run again."""

    exit_code = ExitCode.INVALID_INPUT


def translate_error(exc: Exception, where: str, action: str) -> MigratorError:
    """The migrator error for an azure-core exception raised while doing ``action`` in ``where``."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # StorageErrorCode members print as their enum name
    status = getattr(exc, "status_code", None)
    reason = f"{action} in {where} failed"
    if isinstance(exc, ClientAuthenticationError) or code in {"AuthenticationFailed", "InvalidAuthenticationInfo"}:
        return BlobAccessError(f"{reason}: authentication failed ({code or status})",
                               hint="check the account key, SAS or connection string (and the clock: a SAS "
                                    "outside its validity window is refused too)")
    if code == "ContainerNotFound":
        return BlobAccessError(f"{reason}: the container does not exist",
                               hint="create it, or fix `container` in the environment file")
    if code == "CannotVerifyCopySource":
        return PermanentError(f"{reason}: the destination could not read the copy source ({status})",
                              hint="the source SAS is missing, expired or lacks read permission")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"{reason}: {type(exc).__name__}: {without_url_paths(str(exc))}",
                              hint="the storage endpoint did not answer; check the network if this persists")
    if status in TRANSIENT_STATUS:
        retry_after = retry_after_seconds(exc) if isinstance(exc, HttpResponseError) else None
        return TransientError(f"{reason}: HTTP {status} {code or ''}".rstrip(), retry_after=retry_after,
                              hint="throttled or a server fault: retried with backoff")
    if status == 403:
        return BlobAccessError(f"{reason}: access denied ({code or 403})",
                               hint="check the account key, SAS or connection string; if they are right, the "
                                    "identity lacks permission: grant a Storage Blob Data role or use a SAS with "
                                    "the needed permissions")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return PermanentError(f"{reason}: not found ({code or 404})", hint="check the account URL and names")
    return PermanentError(f"{reason}: HTTP {status} {code or type(exc).__name__}")


def response_error(response: Any) -> HttpResponseError:
    """The azure-core exception the SDK would raise for a failed response (with its storage error code)."""
    code = response.headers.get("x-ms-error-code")
    status = response.status_code
    cls = ResourceNotFoundError if status == 404 else \
        ClientAuthenticationError if code in {"AuthenticationFailed", "InvalidAuthenticationInfo"} else \
        HttpResponseError
    exc = cls(message=f"HTTP {status} {code or response.reason or ''}".rstrip(), response=response)
    exc.error_code = code  # type: ignore[attr-defined]  # azure-core sets it on errors it parses itself
    return exc


@contextlib.contextmanager
def azure_errors(where: str, action: str) -> Iterator[None]:
    """Translates what azure-core raises inside the block (:func:`translate_error`); migrator errors pass."""
    try:
        yield
    except MigratorError:
        raise
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise translate_error(exc, where, action) from exc
