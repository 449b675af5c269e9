"""Pure logic: redaction of secrets and personal data, durations, and reference substitution."""

from __future__ import annotations

import pytest

from migrator.playbook import KEEP, parse_duration, substitute
from migrator.secrets import Redactor, Secret


@pytest.mark.parametrize(("text", "must_not_contain"), [
    ("user jan.jansen@contoso.nl failed", "jan.jansen@contoso.nl"),
    ("call +31 (0)30 711 6725 now", "711 6725"),
    ("Server=x;PWD=hunter2hunter;", "hunter2hunter"),
    ("https://a.blob.core.windows.net/c/b?sv=2024&sig=abcDEF123%2B&se=x", "abcDEF123"),
    ("Authorization: Bearer eyJ0eXAiOiJKV1Qi.abc.def", "eyJ0eXAiOiJKV1Qi"),
    ("AccountKey=Zm9vYmFyYmF6;EndpointSuffix=core", "Zm9vYmFyYmF6"),
])
def test_redactor_masks_secrets_and_personal_data(text: str, must_not_contain: str) -> None:
    assert must_not_contain not in Redactor().redact(text)


def test_redactor_masks_revealed_secret_values_anywhere() -> None:
    redactor = Redactor()
    secret = Secret("Driver=x;Pwd=${env:DB_PASSWORD};")
    value = secret.reveal(redactor, {"DB_PASSWORD": "correct-horse"})
    assert value == "Driver=x;Pwd=correct-horse;"
    assert redactor.redact("boom: correct-horse in message") == "boom: *** in message"
    assert str(secret) == "Driver=x;Pwd=${env:DB_PASSWORD};" and "correct" not in repr(secret)


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0),
                                                ("1.5h", 5400.0), ("250ms", 0.25)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", -1, True, "5 weeks"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_whole_value_reference_keeps_its_type_and_embedded_one_is_interpolated() -> None:
    env = {"source": {"blobs": {"kind": "folder", "path": "/srv"}, "port": 5432}}

    def resolve(expr: str) -> object:
        if expr.startswith("env:"):
            return KEEP
        cur: object = env
        for part in expr.split("."):
            cur = cur[part]  # type: ignore[index]
        return cur

    got = substitute({"a": "${source.blobs}", "b": "port=${source.port}", "c": ["${env:X}"]}, resolve)
    assert got == {"a": {"kind": "folder", "path": "/srv"}, "b": "port=5432", "c": ["${env:X}"]}
