"""Step kinds by name, from the entry-point group ``migrator.steps``: migrator's own kinds and third parties'.

migrator declares its built-in domains there too (``pyproject.toml``), so every kind arrives the same way. An
entry point names either a :class:`~migrator.step.Step` subclass or a module (or package); a module's kinds are
the Step subclasses with a ``kind`` that it, or a module inside it, defines. An entry point that cannot be
loaded is one line naming it and why, never a traceback.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from migrator.errors import InputError
from migrator.step import Step

ENTRY_POINT_GROUP = "migrator.steps"
#: The top-level package of migrator's own kinds: an entry point into it is built in, any other a third party's.
BUILTIN_PACKAGE = "migrator"

StepKind = type[Step[Any]]

_REINSTALL = "the installed package does not match the source: reinstall it (make install, or pip install -e .)"


def _kinds_in(module: ModuleType) -> list[StepKind]:
    inside = module.__name__ + "."
    found = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        defined_here = obj.__module__ == module.__name__ or obj.__module__.startswith(inside)
        if issubclass(obj, Step) and defined_here and getattr(obj, "kind", None):
            found.append(obj)
    return found


class Registry:
    """Maps ``uses:`` names to step classes."""

    def __init__(self) -> None:
        self._kinds: dict[str, StepKind] = {}

    def add(self, cls: StepKind) -> StepKind:
        existing = self._kinds.get(cls.kind)
        if existing is not None and existing is not cls:
            raise InputError(f"step kind {cls.kind!r} is registered twice ({existing.__module__}, {cls.__module__})")
        self._kinds[cls.kind] = cls
        return cls

    def add_module(self, module: ModuleType) -> None:
        for cls in _kinds_in(module):
            self.add(cls)

    def add_entry_point(self, ep: EntryPoint) -> None:
        """The kinds ``ep`` names; one line of :class:`InputError` when it cannot be loaded or names no kinds."""
        where = f"step kinds: entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
        try:
            target = ep.load()
        except Exception as exc:  # a missing module, or one that fails to import: whatever it raises
            raise InputError(f"{where} cannot be loaded: {type(exc).__name__}: {_first_line(exc)}",
                             hint=_REINSTALL if is_builtin(ep) else "reinstall or remove the package that "
                                                                  "declares it") from exc
        if inspect.ismodule(target):
            self.add_module(target)
        elif inspect.isclass(target) and issubclass(target, Step):
            self.add(target)
        else:
            raise InputError(f"{where} is neither a Step class nor a module")

    def get(self, kind: str) -> StepKind:
        try:
            return self._kinds[kind]
        except KeyError:
            raise KeyError(kind) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def items(self) -> list[tuple[str, StepKind]]:
        return sorted(self._kinds.items())


def is_builtin(ep: EntryPoint) -> bool:
    """Whether ``ep`` is one of migrator's own kinds (it points into the ``migrator`` package)."""
    return ep.module.split(".", 1)[0] == BUILTIN_PACKAGE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def load_registry(third_party: bool = True) -> Registry:
    """Every kind of the entry-point group; with ``third_party=False`` migrator's own kinds only.

    Without any built-in entry point the package is not installed as it should be (metadata older than the
    source, or no install at all): that is said in one line here rather than as "unknown kind" later.
    """
    points = list(entry_points(group=ENTRY_POINT_GROUP))
    if not any(is_builtin(ep) for ep in points):
        raise InputError(f"step kinds: none of migrator's own kinds is declared in the entry-point group "
                         f"{ENTRY_POINT_GROUP}", hint=_REINSTALL)
    registry = Registry()
    for ep in sorted(points, key=lambda ep: (not is_builtin(ep), ep.name)):
        if third_party or is_builtin(ep):
            registry.add_entry_point(ep)
    return registry
