"""Step kinds arrive through the entry-point group ``migrator.steps``, built-in and third-party alike."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from typer.testing import CliRunner

import migrator.steps
from migrator import cli, registry
from migrator.errors import InputError
from migrator.registry import ENTRY_POINT_GROUP, load_registry
from migrator.step import Step

INSTALLED = list(entry_points(group=ENTRY_POINT_GROUP))


def _kinds_defined_in_migrator_steps() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(migrator.steps.__path__, "migrator.steps."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Step) and obj.__module__ == module.__name__ and getattr(obj, "kind", None):
                found[obj.kind] = obj
    return found


def test_every_kind_in_migrator_steps_is_registered_through_an_entry_point() -> None:
    defined = _kinds_defined_in_migrator_steps()
    builtin = load_registry(third_party=False)
    assert {"shell", "http", "smoke.test", "tenant.read_only", "dns.transfer", "blobs.presync"} <= set(defined)
    assert dict(builtin.items()) == defined


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A third party's package whose kind is defined in a module inside it and exported by the package."""
    package = tmp_path / "acme_kinds"
    package.mkdir()
    (package / "__init__.py").write_text("from acme_kinds.kinds import Ping\n")
    (package / "kinds.py").write_text(
        "from migrator.step import Params, Step\n\n\n"
        "class PingParams(Params):\n    host: str\n\n\n"
        "class Ping(Step[PingParams]):\n    \"\"\"Changes nothing.\"\"\"\n\n"
        "    kind = 'acme.ping'\n    Params = PingParams\n")
    (package / "broken.py").write_text("raise RuntimeError('acme failed to start\\nsecond line of detail')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "acme_kinds"
    for name in [n for n in sys.modules if n.startswith("acme_kinds")]:
        del sys.modules[name]


def _installed_plus(monkeypatch: pytest.MonkeyPatch, *extra: EntryPoint, builtin: bool = True) -> None:
    points = [ep for ep in INSTALLED if builtin] + list(extra)
    monkeypatch.setattr(registry, "entry_points", lambda group: points if group == ENTRY_POINT_GROUP else [])


def _plugin(value: str) -> EntryPoint:
    return EntryPoint(name="acme", value=value, group=ENTRY_POINT_GROUP)


def test_a_packages_kinds_defined_in_its_modules_are_found(plugin_package: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _installed_plus(monkeypatch, _plugin(plugin_package))
    assert load_registry().get("acme.ping").__module__ == "acme_kinds.kinds"
    assert "acme.ping" not in load_registry(third_party=False)


@pytest.mark.parametrize(("value", "says"), [
    ("acme_no_such_package", "cannot be loaded: ModuleNotFoundError: No module named 'acme_no_such_package'"),
    ("acme_kinds.broken", "cannot be loaded: RuntimeError: acme failed to start"),
    ("acme_kinds:NoSuchKind", "cannot be loaded: AttributeError"),
    ("acme_kinds.kinds:PingParams", "is neither a Step class nor a module"),
])
def test_an_entry_point_that_cannot_be_loaded_is_one_line_naming_it(
        plugin_package: str, monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    _installed_plus(monkeypatch, _plugin(value))
    with pytest.raises(InputError) as caught:
        load_registry()
    line = caught.value.one_line()
    assert f"entry point acme = {value}" in line and says in line, line
    assert "\n" not in line and "second line" not in line
    assert "shell" in load_registry(third_party=False)  # the built-in kinds do not depend on it

    result = CliRunner().invoke(cli.app, ["steps"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: step kinds: entry point acme"), result.output
    assert "Traceback" not in result.output


def test_without_its_own_entry_points_migrator_says_to_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed_plus(monkeypatch, builtin=False)
    with pytest.raises(InputError, match="none of migrator's own kinds") as caught:
        load_registry()
    assert "reinstall" in (caught.value.hint or "")


def test_a_kind_registered_twice_is_refused(plugin_package: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / plugin_package / "shadow.py").write_text(
        "from migrator.step import Params, Step\n\n\n"
        "class Shell(Step[Params]):\n    kind = 'shell'\n    Params = Params\n")
    _installed_plus(monkeypatch, _plugin("acme_kinds.shadow"))
    with pytest.raises(InputError, match="'shell' is registered twice"):
        load_registry()
