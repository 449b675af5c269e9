"""Step kinds by name: the built-in domains, plus third-party kinds from the entry-point group ``migrator.steps``.

An entry point names either a :class:`~migrator.step.Step` subclass or a module; a module's kinds are the
Step subclasses it defines with a ``kind``.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from types import ModuleType

from migrator.errors import InputError
from migrator.step import Step

ENTRY_POINT_GROUP = "migrator.steps"
BUILTIN_MODULES = (
    "migrator.steps.generic",
    "migrator.steps.blobs",
    "migrator.steps.database",
    "migrator.steps.database_delta",
    "migrator.steps.cloud",
    "migrator.steps.dns",
    "migrator.steps.tenant",
    "migrator.steps.window",
    "migrator.steps.smoke",
    "migrator.steps.cutover",
)


def _kinds_in(module: ModuleType) -> list[type[Step]]:
    found = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Step) and obj.__module__ == module.__name__ and getattr(obj, "kind", None):
            found.append(obj)
    return found


class Registry:
    """Maps ``uses:`` names to step classes."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[Step]] = {}

    def add(self, cls: type[Step]) -> type[Step]:
        existing = self._kinds.get(cls.kind)
        if existing is not None and existing is not cls:
            raise InputError(f"step kind {cls.kind!r} is registered twice ({existing.__module__}, {cls.__module__})")
        self._kinds[cls.kind] = cls
        return cls

    def add_module(self, module: ModuleType) -> None:
        for cls in _kinds_in(module):
            self.add(cls)

    def get(self, kind: str) -> type[Step]:
        try:
            return self._kinds[kind]
        except KeyError:
            raise KeyError(kind) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def items(self) -> list[tuple[str, type[Step]]]:
        return sorted(self._kinds.items())


def load_registry(include_entry_points: bool = True) -> Registry:
    """The built-in kinds and, unless told otherwise, every kind installed through entry points."""
    registry = Registry()
    for name in BUILTIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a domain not shipped in this build
                continue
            raise
        registry.add_module(module)
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            target = ep.load()
            if inspect.ismodule(target):
                registry.add_module(target)
            elif inspect.isclass(target) and issubclass(target, Step):
                registry.add(target)
            else:
                raise InputError(f"entry point {ep.name} = {ep.value} is neither a Step class nor a module")
    return registry
