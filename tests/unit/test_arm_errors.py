"""ARM error translation, credential settings and the provision diff, without a network."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.core.rest import HttpRequest
from pydantic import ValidationError

from migrator.errors import InputError, PermanentError, TransientError
from migrator.providers.azure import ArmSettings, CredentialSpec, make_credential, translate
from migrator.steps.cloud import (
    RUN_TAG,
    DatabaseSpec,
    ServerSpec,
    database_differences,
    server_differences,
)
from migrator.testing import MemoryContext


class _Response:
    """The little of an HTTP response HttpResponseError reads."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}
        self.request = HttpRequest("PUT", "https://arm.test/x")
        self._body = json.dumps(body).encode()

    def body(self) -> bytes:
        return self._body

    def text(self, encoding: str | None = None) -> str:
        return self._body.decode()


def http_error(status: int, code: str, message: str = "m", headers: dict[str, str] | None = None) -> HttpResponseError:
    return HttpResponseError(response=_Response(status, {"error": {"code": code, "message": message}}, headers))


@pytest.mark.parametrize(("status", "code", "kind", "hint_words"), [
    (429, "TooManyRequests", TransientError, "retried"),
    (503, "ServiceUnavailable", TransientError, "retried"),
    (500, "InternalServerError", TransientError, "retried"),
    (409, "ConflictingServerOperation", TransientError, "retried"),
    (403, "AuthorizationFailed", PermanentError, "SQL Server Contributor"),
    (401, "InvalidAuthenticationToken", PermanentError, "credential"),
    (409, "NameAlreadyExists", PermanentError, "another server name"),
    (409, "SubscriptionQuotaExceeded", PermanentError, "quota increase"),
    (400, "RegionDoesNotAllowProvisioning", PermanentError, "another region"),
    (412, "PreconditionFailed", PermanentError, "changed by someone else"),
    (404, "ResourceGroupNotFound", PermanentError, "resource group"),
    (400, "InvalidParameterValue", PermanentError, "fix it"),
])
def test_arm_errors_map_to_retryable_or_permanent_with_what_to_do(status: int, code: str, kind: type,
                                                                  hint_words: str) -> None:
    error = translate(http_error(status, code), "creating SQL server s1")

    assert type(error) is kind or isinstance(error, kind)
    assert error.retryable is (kind is TransientError)
    assert code in error.message and error.message.startswith("creating SQL server s1")
    assert error.hint and hint_words in error.hint


def test_retry_after_is_carried_to_the_runner() -> None:
    error = translate(http_error(429, "TooManyRequests", headers={"Retry-After": "7"}), "x")
    assert isinstance(error, TransientError) and error.retry_after == 7.0


def test_a_connection_that_never_answered_is_transient() -> None:
    assert isinstance(translate(ServiceRequestError("refused"), "x"), TransientError)


@pytest.mark.parametrize(("spec", "problem"), [
    ({"type": "client_secret", "tenant_id": "t"}, "needs tenant_id, client_id and client_secret"),
    ({"type": "access_token"}, "needs token"),
    ({"type": "default", "token": "${env:X}"}, "token belongs"),
    ({"type": "kerberos"}, "type"),
])
def test_credential_spec_rejects_incomplete_or_unknown_types(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        CredentialSpec.model_validate(spec)


def test_arm_endpoint_must_be_https_because_the_bearer_policy_refuses_http() -> None:
    with pytest.raises(ValidationError, match="https"):
        ArmSettings(subscription_id="s", resource_group="rg", endpoint="http://127.0.0.1:1")


def test_emulator_settings_reach_the_client_and_the_token_is_revealed_only_when_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ArmSettings.model_validate({"subscription_id": "s", "resource_group": "rg",
                                           "endpoint": "https://127.0.0.1:8443/", "ca_file": "/tmp/ca.pem",
                                           "credential": {"type": "access_token", "token": "${env:ARM_TOK}"}})
    assert "ARM_TOK" in settings.model_dump_json() and "s3cr3t" not in settings.model_dump_json()
    kwargs = settings.client_kwargs()
    assert (kwargs["base_url"], kwargs["connection_verify"]) == ("https://127.0.0.1:8443", "/tmp/ca.pem")
    monkeypatch.setenv("ARM_TOK", "s3cr3t-token")
    ctx = MemoryContext()
    credential = make_credential(settings.credential, ctx)
    assert credential.get_token("https://management.azure.com/.default").token == "s3cr3t-token"
    assert "s3cr3t-token" not in ctx.redactor.redact("token s3cr3t-token")


SERVER = ServerSpec(name="sql-contoso", location="westeurope", administrator_login="admin", tags={"t": "1"})
SERVER_NOW = {"location": "West Europe", "tags": {"t": "1", RUN_TAG: "run-0"},
              "properties": {"administratorLogin": "admin", "version": "12.0", "minimalTlsVersion": "1.2",
                             "publicNetworkAccess": "Enabled"}}


@pytest.mark.parametrize(("current", "expected"), [
    (None, ["create SQL server sql-contoso in westeurope"]),
    (SERVER_NOW, []),
    ({**SERVER_NOW, "tags": {"t": "2"}}, ["server sql-contoso: tags [('t', '2')] -> [('t', '1')]"]),
    ({**SERVER_NOW, "properties": {**SERVER_NOW["properties"], "minimalTlsVersion": "1.0"}},
     ["server sql-contoso: minimalTlsVersion '1.0' -> '1.2'"]),
])
def test_server_differences_ignore_the_run_tag_and_location_spelling(current: dict[str, Any] | None,
                                                                    expected: list[str]) -> None:
    assert server_differences(SERVER, current) == expected


@pytest.mark.parametrize("current", [
    {**SERVER_NOW, "location": "northeurope"},
    {**SERVER_NOW, "properties": {**SERVER_NOW["properties"], "administratorLogin": "other"}},
])
def test_server_differences_that_cannot_be_applied_are_input_errors(current: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        server_differences(SERVER, current)


def test_database_collation_cannot_change_and_size_is_compared_only_when_given() -> None:
    spec = DatabaseSpec(name="db", sku="S1")
    current = {"sku": {"name": "S1"}, "tags": {RUN_TAG: "r"},
               "properties": {"collation": "SQL_Latin1_General_CP1_CI_AS", "maxSizeBytes": 1}}
    assert database_differences(spec, current) == []
    with pytest.raises(InputError, match="collation"):
        database_differences(DatabaseSpec(name="db", sku="S1", collation="Latin1_General_100_CI_AS"), current)
