"""The ARM emulator's own protocol: error bodies, api-version, bearer token, etags and preconditions, LRO
polling shapes. Plain HTTPS requests on loopback, so a regression in the emulator shows here first."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.armemu.core import ArmEmulator

SERVER = "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Sql/servers/s1"
RULE = SERVER + "/firewallRules/r1"
API = {"api-version": "2025-01-01"}
AUTH = {"Authorization": "Bearer t"}


def call(arm: ArmEmulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> requests.Response:
    return requests.request(method, arm.base_url + path.format(sub=arm.subscription_id),
                            params=API if params is None else params, json=body,
                            headers={**AUTH, **(headers or {})}, verify=arm.ca_file, timeout=30)


def make_server(arm: ArmEmulator) -> None:
    response = call(arm, "PUT", SERVER, {"location": "westeurope", "properties": {"administratorLogin": "a"}})
    assert response.status_code == 202
    assert "serverAzureAsyncOperation" in response.headers["Azure-AsyncOperation"]
    assert "serverOperationResults" in response.headers["Location"]
    poll = response.headers["Azure-AsyncOperation"]
    statuses = [requests.get(poll, headers=AUTH, verify=arm.ca_file, timeout=30).json()["status"]
                for _ in range(2)]
    assert statuses == ["InProgress", "Succeeded"]


@pytest.mark.parametrize(("params", "headers", "status", "code"), [
    ({}, AUTH, 400, "MissingApiVersionParameter"),
    (API, {"Authorization": ""}, 401, "AuthenticationFailed"),
    (API, AUTH, 404, "ResourceNotFound"),
])
def test_refusals_use_arm_error_bodies(arm: ArmEmulator, params: dict[str, str], headers: dict[str, str],
                                       status: int, code: str) -> None:
    response = call(arm, "GET", SERVER, headers=headers, params=params)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_if_match_with_a_stale_etag_is_refused_with_412_and_changes_nothing(arm: ArmEmulator) -> None:
    make_server(arm)
    created = call(arm, "PUT", RULE, {"properties": {"startIpAddress": "1.1.1.1", "endIpAddress": "1.1.1.1"}})
    assert created.status_code == 201
    etag = created.json()["etag"]
    moved = call(arm, "PUT", RULE, {"properties": {"startIpAddress": "2.2.2.2", "endIpAddress": "2.2.2.2"}},
                 headers={"If-Match": etag})
    assert moved.status_code == 200 and moved.json()["etag"] != etag

    stale = call(arm, "PUT", RULE, {"properties": {"startIpAddress": "3.3.3.3", "endIpAddress": "3.3.3.3"}},
                 headers={"If-Match": etag})

    assert stale.status_code == 412 and stale.json()["error"]["code"] == "PreconditionFailed"
    assert call(arm, "GET", RULE).json()["properties"]["startIpAddress"] == "2.2.2.2"
    assert call(arm, "PUT", RULE, {"properties": {"startIpAddress": "4.4.4.4", "endIpAddress": "4.4.4.4"}},
                headers={"If-None-Match": "*"}).status_code == 412


def test_faults_are_served_in_order_then_forgotten_and_logged(arm: ArmEmulator) -> None:
    arm.faults.add("GET", r"/servers/s1$", status=429, retry_after=3)
    arm.faults.add("GET", r"/servers/s1$", status=503)
    first, second, third = (call(arm, "GET", SERVER) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    assert second.status_code == 503 and second.json()["error"]["code"] == "ServiceUnavailable"
    assert third.status_code == 404
    assert [(e.method, e.status, e.api_version) for e in arm.log] == [("GET", 429, "2025-01-01"),
                                                                      ("GET", 503, "2025-01-01"),
                                                                      ("GET", 404, "2025-01-01")]


def test_a_dropped_connection_gets_no_answer(arm: ArmEmulator) -> None:
    arm.faults.add("GET", r"/servers/s1$", drop=True)
    with pytest.raises(requests.ConnectionError):
        call(arm, "GET", SERVER)
    assert arm.log.entries()[-1].status == 0


def test_held_operations_stay_in_progress_until_released(arm: ArmEmulator) -> None:
    arm.hold_operations(r"/servers/s1$")
    response = call(arm, "PUT", SERVER, {"location": "westeurope", "properties": {"administratorLogin": "a"}})
    poll = response.headers["Location"]
    assert [requests.get(poll, headers=AUTH, verify=arm.ca_file, timeout=30).status_code
            for _ in range(3)] == [202, 202, 202]
    arm.release_operations()
    codes = [requests.get(poll, headers=AUTH, verify=arm.ca_file, timeout=30).status_code for _ in range(2)]
    assert codes[-1] == 204
    assert call(arm, "GET", SERVER).json()["properties"]["fullyQualifiedDomainName"] == "s1.database.windows.net"
