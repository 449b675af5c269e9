"""Secrets by reference: ``${env:NAME}`` in a playbook or environment file, read at the moment of use.

A :class:`Secret` holds the *template* (for example ``Server=db;PWD=${env:DB_PASSWORD}``), never the value.
It prints, serializes and hashes as the template, so state, logs and reports only ever see the reference.
``reveal()`` substitutes the environment variables when a provider needs the real string, and registers the
revealed values with the :class:`Redactor` so that anything later logged is scrubbed.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from migrator.errors import InputError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_MASK = "***"
# Personal data the product stores (names, email, job title, phone): the shapes we can recognise in text.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# International (+31 / 0031 ...) or national (0 ...) numbers of 8+ digits; dates, times and ids do not start so.
_PHONE = re.compile(r"(?<![\w.:/-])(?:(?:\+|00)\d{1,3}[ .-]?(?:\(0\)[ .-]?)?|0)\d(?:[ .-]?\d){6,12}(?![\w:/-])")
_SAS_SIG = re.compile(r"((?:sig|AccountKey|Password|PWD|password|token|SharedAccessSignature)=)([^;&\s'\"]+)")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


class Redactor:
    """Scrubs secrets and personal data out of text before it is logged, stored or bundled."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        # Very short values would mask innocent text everywhere; a secret that short is not worth much anyway.
        if value and len(value) >= 4:
            with self._lock:
                self._values.add(value)

    def add_many(self, values: Iterable[str]) -> None:
        for value in values:
            self.add(value)

    def __call__(self, text: str) -> str:
        return self.redact(text)

    def redact(self, text: str, *, personal_data: bool = True) -> str:
        if not text:
            return text
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, _MASK)
        text = _SAS_SIG.sub(lambda m: m.group(1) + _MASK, text)
        text = _BEARER.sub(lambda m: m.group(1) + _MASK, text)
        if personal_data:
            text = _EMAIL.sub("<email>", text)
            text = _PHONE.sub("<phone>", text)
        return text

    def redact_obj(self, obj: Any, *, personal_data: bool = True) -> Any:
        """Redacts every string inside a JSON-like structure."""
        if isinstance(obj, str):
            return self.redact(obj, personal_data=personal_data)
        if isinstance(obj, Mapping):
            return {k: self.redact_obj(v, personal_data=personal_data) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v, personal_data=personal_data) for v in obj]
        return obj


def env_names(text: str) -> list[str]:
    return ENV_REF.findall(text)


class Secret:
    """A string that may contain ``${env:NAME}`` references; only :meth:`reveal` yields the real value."""

    __slots__ = ("template",)

    def __init__(self, template: str) -> None:
        self.template = template

    @property
    def env_names(self) -> list[str]:
        return env_names(self.template)

    def reveal(self, redactor: Redactor | None = None, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise InputError(f"environment variable {name} is not set", hint=f"export {name}=... and retry")
            value = env[name]
            if redactor is not None:
                redactor.add(value)
            return value

        return ENV_REF.sub(sub, self.template)

    def __str__(self) -> str:
        return self.template

    def __repr__(self) -> str:
        return f"Secret({self.template!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.template == self.template

    def __hash__(self) -> int:
        return hash(self.template)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def validate(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return Secret(value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.template),
            json_schema_input_schema=core_schema.str_schema(),
        )


def reveal(value: Secret | str | None, redactor: Redactor | None = None) -> str | None:
    """The real value of a secret field, or a plain string unchanged."""
    if value is None:
        return None
    if isinstance(value, Secret):
        return value.reveal(redactor)
    return value
