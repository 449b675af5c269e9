"""JSON that every parser reads: what the reports, the bundle and the CLI print or write as JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON lacks: ``json.dumps`` would write ``NaN``) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def strict_dumps(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as strict JSON: non-finite numbers as null, anything else JSON lacks as its ``str``."""
    return json.dumps(finite(data), indent=indent, allow_nan=False, default=str)
