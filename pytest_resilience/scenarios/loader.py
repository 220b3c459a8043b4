"""A strict, line-tracking YAML loader for scenario files.

Scenario files are data written by people: the loader keeps where every value came from
(``file:line:column`` for each path inside the document) so a schema error can point at
it, and refuses what has no place in such a file - aliases (the "billion laughs"
bomb), tags other than the plain YAML types (``!!python/object``...), duplicate keys,
nesting deeper than :data:`MAX_DEPTH`, integers longer than :data:`MAX_INT_DIGITS`
digits, files that are not UTF-8 or larger than :data:`MAX_BYTES` - each with one
clear :class:`ScenarioSyntaxError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Document", "ScenarioSyntaxError", "load_documents", "load_text"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 40
MAX_INT_DIGITS = 18
MAX_DOCUMENTS = 200

Path_ = tuple[str | int, ...]

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str": "str",
    "tag:yaml.org,2002:int": "int",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "bool",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "str",  # kept as written
    "tag:yaml.org,2002:seq": "seq",
    "tag:yaml.org,2002:map": "map",
}


class ScenarioSyntaxError(Exception):
    """A file that is not acceptable YAML for a scenario; ``line``/``column`` 1-based."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass
class Document:
    """One YAML document of a scenario file: its data and where each path starts."""

    data: Any
    index: int  # 0-based position in the file
    line: int  # where the document starts (1-based)
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> tuple[int, int]:
        """The line and column of the value at ``path`` (or of its closest ancestor)."""
        probe = tuple(path)
        while probe:
            if probe in self.marks:
                return self.marks[probe]
            probe = probe[:-1]
        return self.marks.get((), (self.line, 1))

    def where_key(self, path: Path_) -> tuple[int, int]:
        """The line and column of the mapping key that ends ``path``."""
        return self.key_marks.get(tuple(path)) or self.where(path)


def _mark(node: Any) -> tuple[int, int]:
    mark = node if isinstance(node, yaml.error.Mark) else getattr(node, "start_mark", None)
    if mark is None:
        return 1, 1
    return int(mark.line) + 1, int(mark.column) + 1


class _Composer(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ScenarioSyntaxError(
                "YAML aliases (*name) are not allowed in scenario files: repeat the value "
                "instead", *_mark(event),
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise ScenarioSyntaxError(
                    f"nesting deeper than {MAX_DEPTH} levels", *_mark(event)
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _scalar(loader: _Composer, node: yaml.ScalarNode, kind: str) -> Any:
    text = node.value
    if kind == "int":
        digits = text.lstrip("+-").replace("_", "")
        if len(digits) > MAX_INT_DIGITS:
            raise ScenarioSyntaxError(
                f"the number {text[:30]}... is too long (more than {MAX_INT_DIGITS} digits)",
                *_mark(node),
            )
        return loader.construct_yaml_int(node)
    if kind == "float":
        value = loader.construct_yaml_float(node)
        if not math.isfinite(value):
            raise ScenarioSyntaxError(f"{text!r} is not a finite number", *_mark(node))
        return value
    if kind == "bool":
        return loader.construct_yaml_bool(node)
    if kind == "null":
        return None
    return str(text)


def _build(loader: _Composer, node: yaml.Node, path: Path_,
           marks: dict[Path_, tuple[int, int]],
           key_marks: dict[Path_, tuple[int, int]]) -> Any:
    marks[path] = _mark(node)
    kind = _PLAIN_TAGS.get(node.tag)
    if kind is None:
        raise ScenarioSyntaxError(
            f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in "
            "scenario files (only plain strings, numbers, booleans, null, lists and "
            "mappings)", *_mark(node),
        )
    if isinstance(node, yaml.ScalarNode):
        return _scalar(loader, node, kind)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), marks, key_marks)
                for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ScenarioSyntaxError("YAML merge keys (<<) are not allowed",
                                          *_mark(key_node))
            if not isinstance(key_node, yaml.ScalarNode):
                raise ScenarioSyntaxError("mapping keys must be plain strings",
                                          *_mark(key_node))
            key = str(key_node.value)
            if key in out:
                first = key_marks.get((*path, key), (0, 0))
                raise ScenarioSyntaxError(
                    f"duplicate key {key!r} (first at line {first[0]})", *_mark(key_node)
                )
            key_marks[(*path, key)] = _mark(key_node)
            out[key] = _build(loader, value_node, (*path, key), marks, key_marks)
        return out
    raise ScenarioSyntaxError(f"unexpected YAML node {type(node).__name__}", *_mark(node))


def load_text(text: str) -> list[Document]:
    """Every document of ``text`` (empty documents are skipped)."""
    loader = _Composer(text)
    documents: list[Document] = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            if len(documents) >= MAX_DOCUMENTS:
                raise ScenarioSyntaxError(f"more than {MAX_DOCUMENTS} documents in one file",
                                          *_mark(node))
            marks: dict[Path_, tuple[int, int]] = {}
            key_marks: dict[Path_, tuple[int, int]] = {}
            data = _build(loader, node, (), marks, key_marks)
            index += 1
            if data is None:
                continue  # an empty document (a stray ---)
            documents.append(Document(data, index - 1, _mark(node)[0], marks, key_marks))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ScenarioSyntaxError(f"invalid YAML: {problem}", line, column) from None
    except yaml.YAMLError as exc:
        raise ScenarioSyntaxError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ScenarioSyntaxError(f"nesting deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return documents


def load_documents(path: Path) -> list[Document]:
    """Read and load a scenario file (size and encoding checked first)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ScenarioSyntaxError(
                f"the file is {size} bytes; scenario files may hold at most {MAX_BYTES}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioSyntaxError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ScenarioSyntaxError(
            f"the file is not UTF-8 (byte 0x{raw[exc.start]:02x})", line, column
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return load_text(text)
