"""YAML that remembers where each value came from, so every error can name the file and line."""

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


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
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
            result[key] = _construct(value_node, child, lines, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            items.append(_construct(item, child, lines, file))
        return items
    return yaml.SafeLoader("").construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> SourceDoc:
    """Parses one YAML document, keeping line numbers; raises :class:`PlaybookError` naming the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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
        data = _construct(node, (), lines, file)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise PlaybookError(f"not valid YAML: {exc.problem}", file=file,
                            line=mark.line + 1 if mark else None) from exc
    return SourceDoc(file=file, data=data, lines=lines, text=text)


def load_yaml_file(path: str | Path) -> SourceDoc:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlaybookError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise PlaybookError("is a directory, not a YAML file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise PlaybookError(f"not UTF-8 text (byte {exc.start})", file=str(path)) from exc
    return parse_yaml(text, str(path))
