"""Secrets by reference: ``${env:NAME}`` in a playbook or environment file, read at the moment of use.

A :class:`Secret` holds the *template* (for example ``Server=db;PWD=${env:DB_PASSWORD}``), never the value.
It prints, serializes and hashes as the template, so state, logs and reports only ever see the reference.
``reveal()`` substitutes the environment variables when a provider needs the real string, and registers the
revealed values with the :class:`Redactor` so that anything later logged is scrubbed.
"""

from __future__ import annotations

import hashlib
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


def blob_label(name: str) -> str:
    """A blob name as messages, logs, reports and bundles show it: its folder and a stable short hash of the whole
    name (``hr/…#3f2a9c1b``), never the file name itself, which in practice is often a person's name and job.

    The hash is the first 8 hex digits of the SHA-256 of the name in UTF-8 (``printf %s NAME | sha256sum``), so
    a label is found again among the full names, which only the state store keeps (the items' keys).
    """
    folder, _, _ = name.rpartition("/")
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{folder}/…#{digest}" if folder else f"…#{digest}"


_URL = re.compile(r"\b(https?://[^/\s'\"<>()]+)[^\s'\"<>()]*")
_URL_PATH = re.compile(r"(\burl:\s*)/[^\s'\"<>()]*")  # urllib3: "Max retries exceeded with url: /account/..."


def without_url_paths(text: str) -> str:
    """``text`` (a network library's error) with every URL cut to its scheme and host: paths name blobs."""
    text = _URL.sub(lambda m: m.group(1) + ("/…" if m.end() > m.end(1) else ""), text)
    return _URL_PATH.sub(r"\1/…", text)


def os_error_text(exc: OSError) -> str:
    """What an operating system error says without the file names it quotes (blob names are personal data)."""
    return exc.strerror or type(exc).__name__


REDACTED = "<redacted>"
#: Keys of an environment file whose values carry secrets, whatever the value looks like.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|credential|connection|sas|signature|auth|cert", re.I)
#: Values that carry secrets, whatever their key: references, connection strings, signed query strings.
_SECRET_VALUE = re.compile(r"\$\{env:|(?:^|;)\s*(?:pwd|password|accountkey|sharedaccesssignature)\s*=|[?&]sig=", re.I)
#: Keys of an environment file whose (short, one-word) values a support engineer needs and that hold no personal
#: data: kinds, dialects, containers, regions, the infrastructure's names. Every other string is free text and is
#: redacted, but for URLs (kept to scheme and host), IP addresses and UUIDs.
_STRUCTURAL_KEYS = frozenset({"kind", "dialect", "provider", "type", "container", "prefix", "schema_name", "zone",
                              "location", "sku", "timezone", "window", "method", "verify", "rehash", "version",
                              "server", "nameserver", "fqdn", "resource_group", "subscription_id", "start_ip",
                              "end_ip"})
_IDENTIFIER_SHAPES = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                                re.I)
#: The tenant fields the provider's support process asks for (reference number, environment and user names).
_TENANT_KEPT = frozenset({"name", "reference", "timezone", "environments", "contacts"})


def redacted_environment(data: Mapping[str, Any]) -> dict[str, Any]:
    """An environment file's content as a support bundle may show it: every key, and only the values that are
    structure (dialects, kinds, containers, numbers, switches, URL hosts, the tenant's identifiers and dayparts);
    secret-bearing fields (passwords, keys, tokens, connection strings) and free text become ``<redacted>``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "tenant" and isinstance(value, Mapping):
            out[key] = {k: v if k in _TENANT_KEPT and not _secret(str(k), v) else _redact_value(str(k), v)
                        for k, v in value.items()}
        elif key == "dayparts":
            out[key] = value
        else:
            out[key] = _redact_value(str(key), value)
    return out


def _secret(key: str, value: Any) -> bool:
    return bool(_SECRET_KEY.search(key)) or any(_SECRET_VALUE.search(s) for s in _strings(value))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    if _secret(key, text):
        return REDACTED
    if key in _STRUCTURAL_KEYS and len(text) <= 100 and not any(c.isspace() for c in text):
        return text
    url = _URL.fullmatch(text.strip())
    if url is not None:
        return url.group(1) + ("/…" if url.end() > url.end(1) else "")
    return text if _IDENTIFIER_SHAPES.fullmatch(text) else REDACTED


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
