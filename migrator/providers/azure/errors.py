"""azure-core exceptions raised by management clients, translated into migrator errors that say what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from migrator.errors import MigratorError, PermanentError, TransientError

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"TooManyRequests", "ServerBusy", "InternalServerError", "ServiceUnavailable",
                             "OperationTimedOut", "GatewayTimeout", "RetryableError", "Conflict.Retry",
                             "AnotherOperationInProgress", "ConflictingServerOperation",
                             "ConflictingDatabaseOperation"})
NAME_TAKEN_CODES = frozenset({"NameAlreadyExists", "ServerAlreadyExists", "InvalidResourceLocation"})
PERMISSION_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed"})
QUOTA_CODES = frozenset({"RegionDoesNotAllowProvisioning", "ProvisioningDisabled", "SubscriptionNotRegistered",
                         "ResourceQuotaExceeded"})
QUOTA_HINT = ("request a quota increase (Azure portal > Subscriptions > Usage + quotas, or a support request), or "
              "choose another region or SKU in the environment file")
#: Hints for a permanent error that no code explains, by HTTP status.
STATUS_HINTS: dict[int | None, str] = {
    412: "the resource was changed by someone else since it was read: run `plan` again and review the difference",
    404: "check the subscription, resource group and names in the environment file",
    409: "the resource is in a conflicting state; inspect it in the portal before running again",
    400: "Azure refused a parameter: fix it in the playbook or environment file",
}


class ArmError(PermanentError):
    """A non-retryable answer from Azure Resource Manager, with its error code."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status


def retry_after(exc: HttpResponseError) -> float | None:
    """Seconds the service asked us to wait (its Retry-After header), when it said."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def error_code(exc: HttpResponseError) -> str | None:
    """The innermost meaningful ARM error code (a failed operation nests the real cause in ``details``)."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or getattr(exc, "error_code", None)
    details = getattr(error, "details", None) or []
    if code in (None, "ResourceDeploymentFailure", "DeploymentFailed") and details:
        code = getattr(details[0], "code", None) or code
    return str(code) if code else None


def translate(exc: Exception, action: str) -> MigratorError:
    """The migrator error for an azure-core exception raised while ``action``."""
    if isinstance(exc, MigratorError):
        return exc
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"{action}: the Azure Resource Manager did not answer ({type(exc).__name__})",
                              hint="retried; if it persists, check the network path to the ARM endpoint")
    if not isinstance(exc, HttpResponseError):
        return PermanentError(f"{action}: {type(exc).__name__}: {exc}")
    status = exc.status_code
    code = error_code(exc)
    message = getattr(getattr(exc, "error", None), "message", None) or exc.message or str(exc)
    message = message.splitlines()[0] if message else ""
    what = f"{action}: {code or status}" + (f": {message}" if message else "")
    if status in TRANSIENT_STATUS or code in TRANSIENT_CODES:
        return TransientError(what, retry_after=retry_after(exc), hint="throttled or a service fault: retried "
                              "with backoff")
    return ArmError(what, code=code, status=status, hint=_hint(exc, status, code))


def _hint(exc: HttpResponseError, status: int | None, code: str | None) -> str | None:
    """What to do about a permanent ARM error, checked in this order: credential, permission, name, quota, then
    by status alone."""
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        return ("the credential was refused: check `arm.credential` (az login, the managed identity, or the client "
                "secret) and the tenant")
    if status == 403 or code in PERMISSION_CODES:
        return ("the identity lacks permission: grant it 'SQL Server Contributor' (or Contributor) on the resource "
                "group, or use a credential that has it")
    if code in NAME_TAKEN_CODES:
        return "logical server names are global across Azure: choose another server name in the environment file"
    if code and ("Quota" in code or code in QUOTA_CODES):
        return QUOTA_HINT
    return STATUS_HINTS.get(status)


@contextlib.contextmanager
def arm_errors(action: str) -> Iterator[None]:
    try:
        yield
    except MigratorError:
        raise
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise translate(exc, action) from exc
