"""The one YAML walker: text → nodes with marks → values, every problem located.

The site config (:mod:`monitor.config.sites`), the agent's ``agent.yaml`` (:mod:`monitor.agent.site.config`)
and the web config (:mod:`monitor.web.config`) are all read here, so an operator gets the same kind of
message from each, ``FILE:LINE:COL: path.to.key: message``, every problem at once (issue 23: three copies
had drifted; only one located a control character).

The walker works on PyYAML's node graph rather than loaded Python objects, because nodes keep their
marks; it collects problems instead of stopping at the first, and the caller raises one
:class:`~monitor.errors.ConfigError` with all of them (:func:`parse_document`). What each file may
contain (its keys, their readers, the rules across entries) is left to each schema's module.

Work is bounded: composing is linear in the text, and the walk counts visited nodes so that alias
tricks ("billion laughs") end in an error instead of unbounded time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from monitor.config.durations import format_duration, parse_duration
from monitor.config.hosts import host_problem
from monitor.config.model import Location
from monitor.errors import ConfigError, ConfigProblem

try:  # libyaml's C composer is ~10x faster on large site lists; marks are kept either way.
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

_RESOLVED_CACHE_LIMIT = 200_000
_RESOLVED: dict[str, str] = {}  # plain scalar text → implicit tag


class Loader(_BaseLoader):  # type: ignore[valid-type, misc]
    """The safe loader, with the tag of each distinct plain scalar resolved once.

    Even with libyaml composing, every scalar's implicit tag (int? float? bool? null?) is resolved
    in Python, a handful of regular expressions each: a third of loading a 10,000-site list (issue 9:
    ≤ 2 s). Keys (``name``, ``host``, ``link``…) and values (``school``, ``fibre``) repeat thousands
    of times; a plain scalar's tag depends only on its text, since safe loading has no path resolvers.
    """

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool] | bool) -> str:
        if kind is ScalarNode and isinstance(implicit, tuple) and implicit[0]:  # (a collection gets a bool)
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_RESOLVED) >= _RESOLVED_CACHE_LIMIT:
                    _RESOLVED.clear()
                _RESOLVED[value] = tag
            return tag
        resolved: str = super().resolve(kind, value, implicit)
        return resolved


assert not Loader.yaml_path_resolvers  # else a scalar's tag would depend on its place, not only its text

TAG = "tag:yaml.org,2002:"  # the prefix of YAML's standard tags: TAG + "str", TAG + "null", ...
MAX_NODE_VISITS = 5_000_000  # far above 10,000 sites × ~10 nodes; stops alias bombs
# Without aliases a walk visits well under one node per character of text; the budget allows 8
# per character (plus a floor) so that aliases that multiply are refused in time proportional to
# the file's size rather than after millions of visits.
_VISITS_PER_CHARACTER = 8
_MIN_NODE_VISITS = 10_000
_YAML_SCALARS = yaml.constructor.SafeConstructor()

T = TypeVar("T")


def node_budget(text: str) -> int:
    """How many nodes a walk of ``text`` may visit: 8 per character plus a floor, at most :data:`MAX_NODE_VISITS`."""
    return min(MAX_NODE_VISITS, _MIN_NODE_VISITS + _VISITS_PER_CHARACTER * len(text))


class TooManyNodes(Exception):
    """Raised inside the walk when the visit budget is spent (an alias bomb)."""


class Walker:
    """Checks nodes against a schema, collecting located problems instead of stopping."""

    def __init__(self, file: str, max_visits: int = MAX_NODE_VISITS) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.visits = 0
        self.max_visits = max_visits

    # -- reporting
    def where(self, node: Node) -> Location:
        return location(self.file, node)

    def problem(self, node: Node, path: str, message: str) -> None:
        self.problem_at(self.where(node), path, message)

    def problem_at(self, where: Location, path: str, message: str) -> None:
        """A problem found after the walk, at a place remembered in the model."""
        self.problems.append(ConfigProblem(where.file, where.line, where.column, path, message))

    def visit(self) -> None:
        self.visits += 1
        if self.visits > self.max_visits:
            raise TooManyNodes

    # -- structure
    def mapping(
        self, node: Node, path: str, allowed: Sequence[str] | None, required: Sequence[str] = (),
        unsupported: Mapping[str, str] | None = None,
    ) -> dict[str, Node] | None:
        """Return key → value node for a mapping; report wrong type, unknown/duplicate/missing keys.

        ``allowed`` None takes any key (e.g. user names); ``unsupported`` maps keys that are known
        but refused to the reason given instead of "unknown key".
        """
        self.visit()
        if not isinstance(node, MappingNode):
            what = f"a mapping with keys {', '.join(allowed)}" if allowed is not None else "a mapping"
            self.problem(node, path or "(top level)", f"must be {what}")
            return None
        out: dict[str, Node] = {}
        key_nodes: dict[str, Node] = {}
        for key_node, value_node in node.value:
            self.visit()
            if not isinstance(key_node, ScalarNode) or key_node.tag != TAG + "str":
                self.problem(key_node, path or "(top level)", "keys must be plain words")
                continue
            key = key_node.value
            key_path = f"{path}.{key}" if path else key
            if allowed is not None and key not in allowed:
                if unsupported and key in unsupported:
                    self.problem(key_node, key_path, unsupported[key])
                    continue
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                self.problem(key_node, key_path, f"unknown key '{key}'; {hint}")
                continue
            if key in out:
                first = self.where(key_nodes[key])
                self.problem(key_node, key_path, f"duplicate key (first given at line {first.line})")
                continue
            out[key] = value_node
            key_nodes[key] = key_node
        for key in required:
            if key not in out:
                self.problem(node, path or "(top level)", f"missing required key '{key}'")
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        self.visit()
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, path, "must be a list")
            return None
        return list(node.value)

    # -- scalars
    def scalar(self, node: Node, path: str, tags: tuple[str, ...], what: str) -> ScalarNode | None:
        self.visit()
        if not isinstance(node, ScalarNode) or node.tag.removeprefix(TAG) not in tags:
            got = "a list" if isinstance(node, SequenceNode) else "a mapping" if isinstance(
                node, MappingNode) else f"'{node.value}'"
            self.problem(node, path, f"must be {what}, got {got}")
            return None
        return node

    def string(self, node: Node, path: str) -> str | None:
        scalar = self.scalar(node, path, ("str",), "text (quote it if it looks like a number)")
        if scalar is None:
            return None
        if not scalar.value.strip():
            self.problem(node, path, "must not be empty")
            return None
        return str(scalar.value)

    def number(self, node: Node, path: str, low: float, high: float, *, integer: bool = False,
               low_inclusive: bool = True) -> float | None:
        tags = ("int",) if integer else ("int", "float")
        scalar = self.scalar(node, path, tags, "a whole number" if integer else "a number")
        if scalar is None:
            return None
        construct = (_YAML_SCALARS.construct_yaml_int if scalar.tag == TAG + "int"
                     else _YAML_SCALARS.construct_yaml_float)
        try:  # stateless, unlike construct_object, which caches every node it has seen
            value: float = construct(scalar)
        except (ValueError, IndexError):  # tagged a number, but e.g. `0x_`, `!!int ten`, `!!float ""`
            self.problem(node, path, f"must be {'a whole number' if integer else 'a number'}, "
                         f"got '{scalar.value}'")
            return None
        too_low = value < low or (not low_inclusive and value == low)
        if too_low or value > high or value != value:  # the last test catches .nan
            bound = f"{'≥' if low_inclusive else '>'} {low:g} and ≤ {high:g}"
            self.problem(node, path, f"must be {bound}, got {scalar.value}")
            return None
        return int(value) if integer else float(value)

    def boolean(self, node: Node, path: str) -> bool | None:
        scalar = self.scalar(node, path, ("bool",), "true or false")
        if scalar is None:
            return None
        return bool(scalar.value.lower() in ("true", "yes", "on"))

    def duration(self, node: Node, path: str, low: float, high: float) -> float | None:
        scalar = self.scalar(node, path, ("str", "int", "float"), "a duration like 250ms, 60s or 6h")
        if scalar is None:
            return None
        try:
            seconds = parse_duration(str(scalar.value))
        except ValueError as err:
            self.problem(node, path, str(err))
            return None
        if not low <= seconds <= high:
            self.problem(node, path, f"must be between {format_duration(low)} and {format_duration(high)}")
            return None
        return seconds

    def choice(self, node: Node, path: str, options: Sequence[str]) -> str | None:
        value = self.string(node, path)
        if value is not None and value not in options:
            self.problem(node, path, f"must be one of {', '.join(options)}, got '{value}'")
            return None
        return value

    def host(self, node: Node, path: str) -> str | None:
        """A host to probe, stripped: an IP literal (not a scoped one) or a DNS name (:func:`host_problem`)."""
        text = self.string(node, path)
        if text is None:
            return None
        text = text.strip()
        wrong = host_problem(text)
        if wrong is not None:
            self.problem(node, path, wrong)
            return None
        return text

    def fields(self, values: dict[str, Node], path: str,
               readers: Mapping[str, Callable[[Node, str], Any]]) -> dict[str, Any]:
        """Read every present key with its reader; keys whose value was invalid are left out."""
        out: dict[str, Any] = {}
        for key, reader in readers.items():
            if key in values:
                value = reader(values[key], f"{path}.{key}" if path else key)
                if value is not None:
                    out[key] = value
        return out


def location(file: str, node: Node) -> Location:
    """Where ``node`` of ``file`` starts, as editors count (for a node of another file than a walker's)."""
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def is_null(node: Node) -> bool:
    """True for an empty value (``key:`` with nothing after it, ``~``, ``null``)."""
    return isinstance(node, ScalarNode) and node.tag == TAG + "null"


def first_value(node: MappingNode, key: str) -> Node | None:
    """The value of the first ``key`` in a mapping, the one :meth:`Walker.mapping` keeps."""
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.tag == TAG + "str" and key_node.value == key:
            found: Node = value_node
            return found
    return None


# ----------------------------------------------------------------------------- whole documents

_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break


def bad_character(text: str, source: str) -> ConfigProblem:
    """The problem for the first character that YAML does not allow, at its line and column.

    The reader's own error says only "position N", which libyaml counts in UTF-8 bytes.
    """
    found = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if found is None:  # pragma: no cover - the reader refused something we do not recognise
        return ConfigProblem(source, 1, 1, "", "YAML: the file contains a character YAML does not allow")
    breaks = list(_LINE_BREAK.finditer(text, 0, found.start()))
    line = len(breaks) + 1
    column = found.start() - (breaks[-1].end() if breaks else 0) + 1
    return ConfigProblem(source, line, column, "", f"YAML: character U+{ord(found.group()):04X} is not "
                         "allowed (control characters and lone surrogates cannot appear in YAML)")


def compose(text: str, source: str) -> Node | None:
    """Compose YAML ``text`` (named ``source`` in messages) into its root node; None for an empty document.

    Raises:
        ConfigError: a syntax error, a character YAML does not allow, or more than one document, located.
    """
    try:
        root: Node | None = yaml.compose(text, Loader=Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (err.context, err.problem) if part)
        raise ConfigError([ConfigProblem(source, line, column, "", f"YAML syntax: {message}")]) from None
    except (yaml.reader.ReaderError, UnicodeEncodeError):  # a control character; a lone surrogate
        raise ConfigError([bad_character(text, source)]) from None
    except yaml.YAMLError as err:  # e.g. a document stream with more than one document
        raise ConfigError([ConfigProblem(source, 1, 1, "", f"YAML: {err}")]) from None
    return root


def parse_document(text: str, source: str, read: Callable[[Walker, Node], T | None], *,
                   empty: str | Callable[[], T]) -> T:
    """Compose ``text`` and walk it with ``read``; return what it read, or raise every problem at once.

    Args:
        text: the YAML text.
        source: its name in messages (a file path).
        read: walks the root node, reporting problems on the walker; returns None when it cannot build a value.
        empty: what an empty document means: the message of the error to raise, or a function making the value.

    Raises:
        ConfigError: listing every problem, each with file, line, column and key path.
    """
    root = compose(text, source)
    if root is None:
        if isinstance(empty, str):
            raise ConfigError([ConfigProblem(source, 1, 1, "", empty)])
        return empty()
    w = Walker(source, node_budget(text))
    value: T | None = None
    try:
        value = read(w, root)
    except TooManyNodes:
        w.problems.append(ConfigProblem(
            source, 1, 1, "", f"the document expands to more than {w.max_visits:,} nodes "
            "(too large, or aliases that multiply); refusing to read it"))
    if w.problems or value is None:
        raise ConfigError(w.problems)
    return value


def read_config_text(path: str | Path) -> str:
    """A config file's text (the daemon's, an agent's, the web config); an unreadable file is a located error.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError([ConfigProblem(str(path), 1, 1, "", f"cannot read the file: {reason}")]) from None
