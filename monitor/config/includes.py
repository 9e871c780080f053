"""``include:``: the site config split over several files, e.g. one per district (issue 22).

The semantics, in one place (documented in ``docs/configuration.md``):

- ``include:`` is a top-level key of the file given with ``--config``: one path or glob, or a list of them.
  Each is relative to the directory of that file (an absolute path stays as it is).
- A glob (``*``, ``?``, ``[...]``) takes its files sorted by path; a plain path names one file. Either must
  find at least one file: a district's file lost to a typo is an error, not a silent gap. A file found by
  two entries is read once.
- An included file holds only ``groups:``; includes do not nest, so the file list is flat and known from
  the given file alone. Its groups come after the given file's, file by file in include order.
- Every problem is reported against the file it is in; names are unique across all files.

This module expands the entries and reads an included file's text; the walking of its groups is the site
config loader's (:mod:`monitor.config.sites`). The reload's watcher uses :func:`expand` too, so it follows
the same files the loader read, and sees a new file dropped into a globbed directory.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from yaml.nodes import Node, ScalarNode

from monitor.config.model import SourceFile
from monitor.config.walker import Walker, is_null, read_config_text

INCLUDED_KEYS = ("groups",)  # what an included file may hold
_GLOB_CHARACTERS = frozenset("*?[")


def joined(including: str, entry: str) -> str:
    """An ``include:`` entry as a path usable from here: relative to the including file's directory."""
    path = Path(entry)
    return str(path if path.is_absolute() else Path(including).parent / path)


def is_glob(pattern: str) -> bool:
    """True when the entry is a glob pattern rather than one file's path."""
    return any(c in _GLOB_CHARACTERS for c in pattern)


def expand(pattern: str) -> list[str]:
    """The files a joined entry names: a glob's matches sorted by path (regular files only), or the path itself."""
    if "\0" in pattern:  # no file's name holds NUL (glob would raise); the loader refuses such an entry
        return []
    if not is_glob(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(pattern) if Path(p).is_file())


def included_files(patterns: Sequence[str], including: str) -> list[str]:
    """Every file the joined entries name, in include order, each once, never the including file itself
    (``include: "*.yaml"`` beside it would find it)."""
    itself = os.path.realpath(including)
    out: list[str] = []
    for pattern in patterns:
        for path in expand(pattern):
            if path not in out and os.path.realpath(path) != itself:
                out.append(path)
    return out


def entries(w: Walker, node: Node, source: str) -> list[tuple[Node, str, str]]:
    """``include:``: one path or glob, or a list of them; each entry's node, key path and joined pattern."""
    single = isinstance(node, ScalarNode) and not is_null(node)
    out: list[tuple[Node, str, str]] = []
    for i, item in enumerate([node] if single else w.sequence(node, "include") or []):
        path = "include" if single else f"include[{i}]"
        entry = w.string(item, path)
        if entry is not None and "\0" in entry:
            w.problem(item, path, "holds the character U+0000, which no file's name can")
        elif entry is not None:
            out.append((item, path, joined(source, entry.strip())))
    return out


def files_of(w: Walker, entries: list[tuple[Node, str, str]], including: str) -> list[str]:
    """The files the entries find (:func:`included_files`); an entry that finds none is a problem at the entry."""
    for item, path, pattern in entries:
        found = included_files([pattern], including)
        if is_glob(pattern) and not found:
            w.problem(item, path, f"'{item.value.strip()}' matches no file (looked for {pattern})")
        elif not is_glob(pattern) and not Path(pattern).is_file():
            w.problem(item, path, f"'{item.value.strip()}': no such file ({pattern})")
        elif not found:
            w.problem(item, path, f"'{item.value.strip()}' is the file that includes it")
    return [p for p in included_files([e[2] for e in entries], including) if Path(p).is_file()]


def source_of(path: str, text: str) -> SourceFile:
    """The record of a file read as ``text`` (a UTF-8 decoding keeps the bytes, so this is the bytes' hash)."""
    return SourceFile(path, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


def read_included(path: str) -> tuple[str, SourceFile]:
    """An included file's text and its record.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8.
    """
    text = read_config_text(path)
    return text, source_of(path, text)


def digest_of(sources: Sequence[SourceFile]) -> str:
    """One SHA-256 for a set of files (their paths and contents, in order): what a reload compares."""
    h = hashlib.sha256()
    for source in sources:
        h.update(f"{source.path}\0{source.sha256}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def digest_now(config_path: str, patterns: Sequence[str]) -> str | None:
    """The digest of the files as they are now (the given file, then what ``patterns`` find); None if the
    given file cannot be read. An included file that cannot be read counts as empty: it changes the digest."""
    sources: list[SourceFile] = []
    for index, path in enumerate([config_path, *included_files(patterns, config_path)]):
        try:
            data = Path(path).read_bytes()
        except (OSError, ValueError):  # ValueError: a NUL in the path (the loader refuses it; never a crash here)
            if index == 0:
                return None
            data = b""
        sources.append(SourceFile(path, hashlib.sha256(data).hexdigest()))
    return digest_of(sources)
