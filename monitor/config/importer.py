"""Sites from a spreadsheet into the site config's YAML, first time and every time after (issue 22).

The rows (:mod:`monitor.config.site_rows`) become endpoints in a group per kind: in one file
(``--output``), or in one file per district (``--output-dir``, each file a group per kind with the
district set on the group), ready for ``include: sites.d/*.yaml``.

Importing again updates in place. A site is found by its name wherever it is in the file(s); the keys
the spreadsheet has a column for are the spreadsheet's (an empty cell removes the key), every other key
(``icmp``, ``throughput``, ``maintenance``, ``mode``, ``agent``, a group's own settings, the top-level
blocks) is the operator's and is left alone. A site that the spreadsheet no longer lists is not deleted
but marked ``status: retired``, so its history stays reportable; one that comes back is unretired. A
site whose row was bad (skipped with ``--skip-bad``) is left as it was. YAML comments are not kept: the
file is read as data and written again (keep comments in the main file).

What is written must load: every file is validated with the config loader before anything is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from monitor.config.site_rows import Rows, Site
from monitor.config.sites import parse_config
from monitor.errors import ConfigError, ConfigProblem

HEADER = "# Sites written by `connmon import`; it keeps keys added by hand here, but not comments.\n"
_GROUP_KEYS = ("kind", "district")  # keys of a group made by the import; `district` only with --output-dir
_UNSAFE = re.compile(r"[^\w.-]+")

Doc = dict[str, Any]
ChangeKind = Literal["added", "changed", "retired"]


@dataclass(frozen=True, slots=True)
class Change:
    """One site's change, printed ``changed  Школа №2: host 192.0.2.1 → 192.0.2.7``."""

    kind: ChangeKind
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<8} {self.name}{': ' + self.detail if self.detail else ''}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What an import would write: each file's new text (only files that change), and the changes."""

    texts: dict[str, str]
    changes: tuple[Change, ...]
    unchanged: int

    def summary(self) -> str:
        count = {kind: sum(c.kind == kind for c in self.changes) for kind in ("added", "changed", "retired")}
        return (f"{count['added']} added, {count['changed']} changed, {count['retired']} retired, "
                f"{self.unchanged} unchanged")


def district_file(directory: str | Path, district: str) -> str:
    """The file of a district under ``--output-dir``: its name in lower case, spaces as ``-`` (``ақтөбе.yaml``)."""
    slug = _UNSAFE.sub("-", district.strip().casefold()).strip("-.") or "district"
    return str(Path(directory) / f"{slug}.yaml")


def plan(rows: Rows, *, output: str | None = None, output_dir: str | None = None,
         kind: str | None = None) -> Plan:
    """Merge the good rows into the file(s) as they are now, and say what changes.

    Args:
        output: one file for every site (``--output``); or
        output_dir: a file per district in this directory (``--output-dir``).
        kind: the kind of a site whose row gives none (``--kind``).

    Raises:
        ConfigError: a file there already is not a site list, or the result would not load (every problem).
    """
    by_district = output_dir is not None
    paths = sorted(str(p) for p in Path(output_dir).glob("*.yaml")) if output_dir is not None else [str(output)]
    docs = {path: _read(path) for path in paths}
    merge = _Merge(docs, rows.keys, by_district)
    for site in rows.sites:
        site_kind = site.values.get("kind") or kind
        district = site.values.get("district")
        path = district_file(str(output_dir), str(district)) if by_district else str(output)
        merge.put(site, path, site_kind, district if by_district else None)
    merge.retire_all_but({s.name for s in rows.sites} | rows.bad_names)
    texts: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    for path, doc in merge.docs.items():
        text = HEADER + yaml.dump(_for_writing(doc), Dumper=_Dumper, allow_unicode=True, sort_keys=False,
                                  default_flow_style=None, width=100_000)
        try:
            parse_config(text, path, allow_empty=True)
        except ConfigError as err:
            problems.extend(err.problems)
        if not Path(path).exists() or Path(path).read_text(encoding="utf-8") != text:
            texts[path] = text
    if problems:
        raise ConfigError(problems)
    return Plan(texts, tuple(merge.changes), len(rows.sites) - sum(c.kind != "retired" for c in merge.changes))


def write(plan: Plan) -> None:
    """Write each changed file whole (a temporary file renamed over it: a reader never sees half)."""
    for path, text in plan.texts.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.import")
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, target)


def _read(path: str) -> Doc:
    """A file written before as data; a missing file is a new one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"groups": []}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([ConfigProblem(path, 1, 1, "", f"cannot read the file: {err}")]) from None
    try:
        doc: Any = _safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([ConfigProblem(path, 1, 1, "", f"not YAML, so not merged into: {err}")]) from None
    doc = {"groups": []} if doc is None else doc
    if isinstance(doc, dict) and doc.get("groups") is None:
        doc["groups"] = []
    groups = doc.get("groups") if isinstance(doc, dict) else None
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, dict) and group.get("endpoints") is None:  # `endpoints:` with nothing under it
            group["endpoints"] = []
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("endpoints", []), list)
                                               for g in groups):
        raise ConfigError([ConfigProblem(path, 1, 1, "groups", "not a site list (a mapping with 'groups:', each "
                                         "with 'endpoints:'); fix or move it before importing into it")])
    read: Doc = doc
    return read


class _Site(dict[str, Any]):
    """An endpoint to be written on one line, whatever it holds: one site per line, one line per change."""


# libyaml's C reader and writer when PyYAML has them: a 5,000-site re-import in 2.5 s instead of 17 s
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _safe_load(text: str) -> Any:
    """``text`` as data, through libyaml's safe loader when there is one (five times faster on 5,000 sites)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[misc]
    def represent_site(self, data: _Site) -> yaml.Node:
        node: yaml.Node = self.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
        return node


_Dumper.add_representer(_Site, _Dumper.represent_site)


def _for_writing(doc: Doc) -> Doc:
    """The document as written: each endpoint on its line, without groups the import made and then emptied."""
    kept = [{**g, "endpoints": [_Site(e) if isinstance(e, dict) else e for e in g.get("endpoints") or []]}
            for g in doc["groups"] if g.get("endpoints") or set(g) - {"name", "endpoints", *_GROUP_KEYS}]
    return {**doc, "groups": kept}


class _Merge:
    """The documents being merged into, with every site found by its name."""

    def __init__(self, docs: dict[str, Doc], keys: Sequence[str], by_district: bool) -> None:
        self.docs = docs
        # the endpoint keys the spreadsheet owns: kind is a group's, and so is district in a file per district
        self.keys = [k for k in keys if k != "kind" and not (by_district and k == "district")]
        self.status_owned = "status" in keys
        self.changes: list[Change] = []
        self.sites: dict[str, tuple[Doc, Doc]] = {}  # name → (its group, its endpoint)
        for doc in docs.values():
            for group in doc["groups"]:
                for endpoint in group["endpoints"]:
                    if isinstance(endpoint, dict) and isinstance(endpoint.get("name"), str):
                        self.sites.setdefault(endpoint["name"], (group, endpoint))

    def group(self, path: str, kind: str | None, district: str | None) -> Doc:
        """The group of a kind (and district) in a file: the first with that kind, else a new one."""
        doc = self.docs.setdefault(path, {"groups": []})
        for existing in doc["groups"]:
            if existing.get("kind") == kind and (district is None or existing.get("district") == district):
                found: Doc = existing
                return found
        name = " ".join(part for part in (district, kind) if part) or "sites"
        group = {"name": name, **({"kind": kind} if kind else {}), **({"district": district} if district else {}),
                 "endpoints": []}
        doc["groups"].append(group)
        return group

    def put(self, site: Site, path: str, kind: str | None, district: str | None) -> None:
        target = self.group(path, kind, district)
        found = self.sites.get(site.name)
        if found is None:
            endpoint = {k: site.values[k] for k in self.keys if site.values.get(k) is not None}
            target["endpoints"].append(endpoint)
            self.sites[site.name] = (target, endpoint)
            self.changes.append(Change("added", site.name, ", ".join(str(p) for p in (kind, district) if p)))
            return
        group, endpoint = found
        details = []
        if group is not target:  # its kind or district changed: it moves, with its hand-made keys
            group["endpoints"].remove(endpoint)
            target["endpoints"].append(endpoint)
            self.sites[site.name] = (target, endpoint)
            details.append(f"moved to group {target['name']}")
        for key in self.keys:
            new, old = site.values.get(key), endpoint.get(key)
            if new == old:
                continue
            if new is None:
                del endpoint[key]
            else:
                endpoint[key] = new
            details.append(f"{key} {_shown(old)} → {_shown(new)}")
        if not self.status_owned and endpoint.get("status") == "retired":  # listed again
            del endpoint["status"]
            details.append("status retired → connected")
        if details:
            self.changes.append(Change("changed", site.name, "; ".join(details)))

    def retire_all_but(self, listed: set[str]) -> None:
        """Mark ``status: retired`` every site the spreadsheet no longer lists (kept for its history)."""
        for name, (_, endpoint) in self.sites.items():
            if name not in listed and endpoint.get("status") != "retired":
                endpoint["status"] = "retired"
                self.changes.append(Change("retired", name))


def _shown(value: object) -> str:
    return "(none)" if value is None else str(value)
