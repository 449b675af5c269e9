"""YAML that remembers where each value came from, so every error can name the file and line.

Playbooks and environment files are small, and may come from anywhere: the loader bounds the work a document can
ask for before any of it is done. A document is at most :data:`MAX_DOCUMENT_CHARS` long, nests at most
:data:`MAX_DEPTH` levels (counted while composing, so deep brackets never reach Python's recursion limit), and
expands to at most :data:`MAX_VALUES` values once its aliases are followed (a "billion laughs" stops there); an
alias that contains itself is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrator.errors import PlaybookError

Path_ = tuple[str | int, ...]


@dataclass
class SourceDoc:
    """A parsed YAML document and the line (1-based) of every key and item in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    text: str = ""

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


MAX_DOCUMENT_CHARS = 1_000_000
MAX_DEPTH = 64
MAX_VALUES = 50_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to compose a document nested deeper than :data:`MAX_DEPTH`."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise PlaybookError(f"nested deeper than {MAX_DEPTH} levels", file=self.file, line=mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


@dataclass
class _Expansion:
    """What constructing a document has cost so far, and the nodes being constructed (to catch a cycle)."""

    loader: _BoundedLoader
    values: int = 0
    open_nodes: set[int] = field(default_factory=set)


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str, cost: _Expansion) -> Any:
    line = node.start_mark.line + 1
    cost.values += 1
    if cost.values > MAX_VALUES:
        raise PlaybookError(f"more than {MAX_VALUES} values once its aliases are expanded; refused", file=file,
                            line=line)
    if len(path) > MAX_DEPTH:
        raise PlaybookError(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded", file=file,
                            line=line)
    lines.setdefault(path, line)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in cost.open_nodes:
            raise PlaybookError("an alias refers to a value that contains it (a recursive alias)", file=file,
                                line=line)
        cost.open_nodes.add(id(node))
        try:
            return _construct_collection(node, path, lines, file, cost)
        finally:
            cost.open_nodes.discard(id(node))
    try:
        return cost.loader.construct_object(node, deep=True)
    except ValueError as exc:  # a timestamp such as 2026-02-30, an integer of thousands of digits
        raise PlaybookError(f"not a valid value: {str(exc)[:100]}", file=file, line=line) from None


def _construct_collection(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str,
                          cost: _Expansion) -> Any:
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise PlaybookError("YAML merge keys (<<) are not supported", file=file,
                                    line=key_node.start_mark.line + 1)
            if not isinstance(key_node, yaml.ScalarNode):
                raise PlaybookError("a mapping key must be a plain value", file=file,
                                    line=key_node.start_mark.line + 1)
            key = str(key_node.value)
            if key in result:
                raise PlaybookError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1)
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, child, lines, file, cost)
        return result
    items = []
    for index, item in enumerate(node.value):
        child = (*path, index)
        lines[child] = item.start_mark.line + 1
        items.append(_construct(item, child, lines, file, cost))
    return items


def parse_yaml(text: str, file: str) -> SourceDoc:
    """Parses one YAML document, keeping line numbers; raises :class:`PlaybookError` naming the line."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise PlaybookError(f"longer than {MAX_DOCUMENT_CHARS} characters; refused", file=file)
    loader = _BoundedLoader(text, file)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            problem = exc.problem or str(exc)
            raise PlaybookError(f"not valid YAML: {problem}", file=file, line=line) from exc
        except yaml.YAMLError as exc:
            raise PlaybookError(f"not valid YAML: {exc}", file=file) from exc
        if node is None:
            raise PlaybookError("the file is empty", file=file, line=1)
        lines: dict[Path_, int] = {}
        try:
            data = _construct(node, (), lines, file, _Expansion(loader))
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            raise PlaybookError(f"not valid YAML: {exc.problem}", file=file,
                                line=mark.line + 1 if mark else None) from exc
    finally:
        loader.dispose()
    return SourceDoc(file=file, data=data, lines=lines, text=text)


def load_yaml_file(path: str | Path) -> SourceDoc:
    p = Path(path)
    try:
        with p.open(encoding="utf-8") as handle:
            text = handle.read(MAX_DOCUMENT_CHARS + 1)  # no more than the limit, whatever the file's size
    except FileNotFoundError:
        raise PlaybookError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise PlaybookError("is a directory, not a YAML file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise PlaybookError(f"not UTF-8 text (byte {exc.start})", file=str(path)) from exc
    except OSError as exc:  # a path under a file, a symlink loop, a name too long, no permission
        raise PlaybookError(f"cannot be read: {exc.strerror or exc}", file=str(path)) from None
    return parse_yaml(text, str(path))
