"""A fleet of agents at a glance (issue 18): each agent's last contact, last result and state, kept across restarts.

A hundred schools' agents are looked after as RIPE Atlas and UNICEF Giga look after theirs: each
is *live*, *at risk* or *dropped*, by how long the centre has had no result from it. Giga's
definitions are the defaults: no result for 21 days is at risk, for 28 days dropped; each agent
site's ``agent:`` block may set its own (``at_risk_after``, ``dropped_after``).

The registry (:mod:`monitor.agent.centre.registry`) tells this module of every contact; the
exposition and the ``GET /api/v1/agents`` list read it. What matters here is measured in weeks, so
it must outlive a restart of the centre: a site dropped 28 days ago is not "live" because the
centre restarted. The records are kept in a small JSON file beside the agents' sequence journal,
written whole (temporary file, then rename) at most every :data:`SAVE_EVERY_SECONDS` when
something changed; a centre killed meanwhile loses at most that much of a record measured in days.
A site that never reported counts from when the centre first had it in its config.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "agent-fleet.json"
SAVE_EVERY_SECONDS = 60.0
AT_RISK_AFTER_SECONDS = 21 * 86400.0  # UNICEF Giga: no result for 21 days
DROPPED_AFTER_SECONDS = 28 * 86400.0  # ... and for 28 days


class FleetState(enum.StrEnum):
    """An agent's state by how long it has sent no result (closed set)."""

    LIVE = "live"
    AT_RISK = "at_risk"
    DROPPED = "dropped"


FLEET_STATES = tuple(FleetState)


@dataclass(slots=True)
class FleetRecord:
    """What the centre remembers of one agent site across restarts (Unix times on the centre's clock)."""

    known_since: float  # when the centre first had the site in its config
    last_contact: float | None = None  # the last post of any kind the site's token made
    last_result: float | None = None  # the last post that brought a new result
    version: str | None = None
    offset_seconds: float | None = None  # the agent's clock offset on its last exchange (issue 18)
    offset_bound_seconds: float | None = None
    spool_depth: int | None = None


def fleet_state(record: FleetRecord, now: float, at_risk_after: float, dropped_after: float) -> FleetState:
    """``record``'s state at ``now``: by the time since its last result (or since the site was configured)."""
    since = now - (record.last_result if record.last_result is not None else record.known_since)
    if since >= dropped_after:
        return FleetState.DROPPED
    if since >= at_risk_after:
        return FleetState.AT_RISK
    return FleetState.LIVE


class Fleet:
    """The records of the configured agent sites; saved to ``path`` (None: in memory only, as with --no-history)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: dict[str, FleetRecord] = self._load() if path is not None else {}
        self._dirty = False
        self._saved_at = -math.inf
        self._failing = False

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> Fleet:
        return cls(Path(state_dir) / FILE_NAME)

    def _load(self) -> dict[str, FleetRecord]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:  # a torn or unreadable file: the fleet starts again, said once
            log.warning("%s: cannot read the agents' fleet records (%s); they start again from now", self.path, err)
            return {}
        records: dict[str, FleetRecord] = {}
        for name, raw in (data.items() if isinstance(data, dict) else ()):
            try:
                records[str(name)] = FleetRecord(**raw)
            except TypeError:
                continue  # a record this version does not know: skipped, not a crash
        return records

    def configured(self, names: Iterable[str], now: float) -> None:
        """The agent sites of the config now running: a new one is known from ``now``; a removed one is forgotten."""
        names = set(names)
        for name in names - set(self.records):
            self.records[name] = FleetRecord(known_since=now)
            self._dirty = True
        for name in set(self.records) - names:
            del self.records[name]
            self._dirty = True

    def record(self, name: str, now: float) -> FleetRecord:
        """``name``'s record (made when the config's change has not reached :meth:`configured` yet)."""
        found = self.records.get(name)
        if found is None:
            found = self.records[name] = FleetRecord(known_since=now)
        self._dirty = True
        return found

    def save(self, now: float, force: bool = False) -> None:
        """Write the records when something changed, at most every :data:`SAVE_EVERY_SECONDS` unless ``force``."""
        if self.path is None or not self._dirty or (not force and now - self._saved_at < SAVE_EVERY_SECONDS):
            return
        self._saved_at = now
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(json.dumps({name: asdict(r) for name, r in sorted(self.records.items())}),
                                 encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self._failing:
                log.error("%s: cannot save the agents' fleet records (%s); tried again every minute", self.path,
                          err.strerror or err)
            self._failing = True
            return
        self._failing = False
        self._dirty = False
