"""Bounded YAML reading for configuration files: hostile files are refused in one short line.

Config files arrive from places an attacker or a careless laptop can write (the boot partition,
which `provision` reads as root), so reading one must never cost unbounded memory or time, never
crash with a traceback, and never produce an error message larger than a few hundred bytes:

* the size is checked before the file is read, and the read itself stops one byte past the limit;
* the bytes must be UTF-8;
* duplicate keys are refused (YAML keeps the last silently, hiding a mistake);
* nesting is bounded (PyYAML's composer recurses once per level);
* aliases may not expand the document beyond a small node count (billion laughs): a config never
  needs more than a few hundred nodes, so the bound is generous and still tiny.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edge.core.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 16  # the deepest real key (mqtt.tls.ca_file) is 3 levels; lists add one or two
MAX_NODES = 5_000  # built, and after alias expansion; the example config has about 200
MAX_LINE = 300  # characters of one error line


def clip(text: str, limit: int = MAX_LINE) -> str:
    """One line, at most `limit` characters: hostile values must not become huge error lines."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() of a value from a config file, bounded before it is built in full where possible."""
    if isinstance(value, str | bytes) and len(value) > limit:
        value = value[:limit]
        return clip(repr(value), limit) + "…"
    if isinstance(value, dict | list | tuple | set):
        return f"<{type(value).__name__} of {len(value)}>"
    return clip(repr(value), limit)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH and more than MAX_NODES nodes
    before building them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}")
            if not isinstance(event, yaml.AliasEvent):
                # Counted as they are built, so a wide file is refused before it costs memory.
                self._nodes += 1
                if self._nodes > MAX_NODES:
                    raise _Refused(f"more than {MAX_NODES} values at line {event.start_mark.line + 1} (a config has a few hundred)")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


class _Refused(Exception):
    pass


def _check_keys(root: Node) -> None:
    """Refuse duplicate keys, naming the key path; each node is visited once (aliases share nodes)."""
    visited: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, MappingNode):
            seen: set[tuple[str, str]] = set()
            for k, v in node.value:
                if isinstance(k, ScalarNode):
                    name = f"{path}.{k.value}" if path else str(k.value)
                    if k.tag != "tag:yaml.org,2002:merge":
                        if (k.tag, k.value) in seen:
                            raise _Refused(f"duplicate key {clip(name, 120)} at line {k.start_mark.line + 1}")
                        seen.add((k.tag, k.value))
                else:
                    name = f"{path}.?"
                stack.append((v, name))
        elif isinstance(node, SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))


def _expanded_size(root: Node) -> int:
    """Nodes the document has once every alias is expanded, stopping as soon as MAX_NODES is passed."""
    memo: dict[int, int] = {}

    def size(node: Node, depth: int) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if depth > MAX_DEPTH * 4:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels")
        total = 1
        if isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
                if total > MAX_NODES:
                    break
        memo[key] = total
        return total

    return size(root, 0)


def parse_yaml(text: bytes, source: str) -> Any:
    """Parse config bytes; raises ConfigError with one short line naming `source` and the problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: {len(text)} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit for a config"])
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise ConfigError([f"{source}: not UTF-8 text (byte 0x{text[e.start]:02x} at line {line})"]) from None
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(decoded)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        _check_keys(node)
        if _expanded_size(node) > MAX_NODES:
            raise _Refused(f"aliases expand the document past {MAX_NODES} nodes (a config needs far fewer)")
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError([clip(f"{source}: {e}")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError([clip(f"{source}: not valid YAML{where} ({problem})")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # e.g. a timestamp like 2024-13-45 or an integer with too many digits
        raise ConfigError([clip(f"{source}: a value cannot be read ({type(e).__name__}: {e})")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_config_bytes(path: Path, what: str = "config") -> bytes:
    """The file's bytes, its size checked before reading and the read bounded (a FIFO or a device
    file reports no size); ConfigError naming the file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError([f"{path}: {what} file not found"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read {what} ({e.strerror})"]) from None
    # Checked on the descriptor before wrapping it: io refuses to open a directory's descriptor.
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError([f"{path}: {kind}, expected a {what} file"])
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"{path}: {st.st_size} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit for a {what}"]
            )
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise ConfigError([f"{path}: cannot read {what} ({e.strerror})"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than the {MAX_CONFIG_BYTES}-byte limit for a {what}"])
    return data


def load_yaml_file(path: Path, what: str = "config") -> Any:
    return parse_yaml(read_config_bytes(path, what), str(path))
