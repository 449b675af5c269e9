"""What the models of :mod:`migrator.playbook` do not check in the values a playbook or environment file holds.

Each check is a generator of the paths (and what is wrong there) inside one value, and knows nothing of files
or lines: :mod:`migrator.playbook` turns what they find into a :class:`~migrator.errors.ValidationError`. They
find ``${...}`` references written wrong (:func:`reference_problem`), secrets written as their value instead of
an ``${env:NAME}`` reference (:func:`literal_secrets`), ``${env:...}`` references in fields that are not
secret fields (:func:`secret_leaks`), numbers that are not finite (:func:`non_finite`) and ``true``/``false``
read as a number (:func:`bools_as_numbers`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from migrator.secrets import ENV_REF, Secret
from migrator.yamlsrc import Path_

#: A ``${...}`` reference; group 1 is what is inside the braces.
REF = re.compile(r"\$\{([^}]*)\}")

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def reference_problem(text: str) -> str | None:
    """What is wrong with the ``${...}`` references written in ``text``, if anything: a ``${`` never closed, or an
    ``${env:...}`` whose name is not a variable name (it would otherwise be taken literally, as the secret)."""
    for m in REF.finditer(text):
        expr = m.group(1).strip()
        if expr.startswith("env:") and not ENV_NAME.fullmatch(expr[4:]):
            return (f"${{{m.group(1)}}} is not a valid environment variable reference (write ${{env:NAME}}, "
                    "NAME of letters, digits and _)")
    rest = REF.sub("", text)
    if "${" in rest:
        tail = rest[rest.index("${"):][:40]
        return f"unterminated reference {tail!r}: a ${{ without its closing }}"
    return None



# Words a field's name ends with when its value is a secret (``administrator_password``, ``account_key``,
# ``tsig_secret``, ``TOKEN``, ``Authorization``, ``PGPASSWORD``, ``apiKey``), and the words before ``key`` that make a
# key something else (a database's primary key names a column, not a secret).
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "key", "apikey", "accountkey", "passphrase",
                 "authorization", "auth_header", "sas", "signature")
_NOT_SECRET_KEYS = ("primary", "foreign", "sort", "partition", "unique", "natural", "surrogate", "row", "first",
                    "last", "upsert", "public", "name")
# Secrets inside a longer string: an ODBC/ADO/Azure connection string's password or account key, a URL's password,
# a SAS signature in a query string.
_SECRET_PARTS = re.compile(
    r"(?i)(?:^|;)\s*(?P<name>pwd|password|accountkey|sharedaccesssignature)\s*=\s*(?P<value>[^;]*)"
    r"|[a-z][a-z0-9+.-]*://[^/\s:@]*:(?P<url>[^@/\s]*)@"
    r"|[?&]sig=(?P<sig>[^&\s]*)")


def is_secret_name(name: str) -> bool:
    """Whether a field of this name holds a secret (by the words its name ends with)."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if w]
    if not words:
        return False
    last = words[-1]
    if last == "key":
        return not (len(words) > 1 and words[-2] in _NOT_SECRET_KEYS)
    if len(words) > 1 and "_".join(words[-2:]) in _SECRET_WORDS:
        return True
    return last in _SECRET_WORDS or last.endswith(("password", "passwd", "secret", "token", "apikey",
                                                   "accountkey"))


def _holds_reference(text: str) -> bool:
    return REF.search(text) is not None


def literal_secrets(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """Where a secret is written as its value instead of an ``${env:NAME}`` reference, and what kind of secret."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from literal_secrets(v, (*path, k))
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from literal_secrets(v, (*path, i))
        return
    name = next((p for p in reversed(path) if isinstance(p, str)), "")
    if isinstance(value, str):
        if value.strip() and is_secret_name(name) and not _holds_reference(value):
            yield path, f"{name!r} holds a secret"
            return
        for m in _SECRET_PARTS.finditer(value):
            part = m.group("value") if m.group("name") else m.group("url") if m.group("url") is not None \
                else m.group("sig")
            if part and part.strip(" {}") and not _holds_reference(part):
                what = f"{m.group('name')}= of a connection string" if m.group("name") else \
                    "the password of a URL" if m.group("url") is not None else "the sig= of a SAS URL"
                yield path, f"{what} holds a secret"
                return
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and is_secret_name(name):
        yield path, f"{name!r} holds a secret"



def secret_leaks(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths of plain strings (not Secret fields) that still hold a ``${env:...}`` reference."""
    if isinstance(value, Secret):
        return
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_leaks(getattr(value, name), (*path, name))
    elif isinstance(value, str):
        if ENV_REF.search(value):
            yield path
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from secret_leaks(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from secret_leaks(v, (*path, i))



def non_finite(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths of numbers that are not finite (``.nan``, ``.inf``): no setting means them."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from non_finite(getattr(value, name), (*path, info.alias or name))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from non_finite(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from non_finite(v, (*path, i))


def bools_as_numbers(raw: Any, parsed: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths where ``true``/``false`` was written and a model took it as a number (pydantic reads true as 1)."""
    if isinstance(raw, bool):
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            yield path
    elif isinstance(raw, Mapping):
        if isinstance(parsed, BaseModel):
            fields = type(parsed).model_fields
            by_key = {(f.alias or n): n for n, f in fields.items()} | {n: n for n in fields}
            for k, v in raw.items():
                if k in by_key:
                    yield from bools_as_numbers(v, getattr(parsed, by_key[k]), (*path, k))
        elif isinstance(parsed, Mapping):
            for k, v in raw.items():
                if k in parsed:
                    yield from bools_as_numbers(v, parsed[k], (*path, k))
    elif isinstance(raw, list) and isinstance(parsed, (list, tuple)) and len(raw) == len(parsed):
        for i, (r, p) in enumerate(zip(raw, parsed, strict=True)):
            yield from bools_as_numbers(r, p, (*path, i))

