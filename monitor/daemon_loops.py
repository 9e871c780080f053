"""The daemon's background loops: each wakes on its own period, does one small job, and never stops the daemon.

- the agents' watch: agent sites gone silent are marked down, test slots granted but never used are freed;
- the contacts (issue 19): agents heard by another instance are not silent here;
- the served TLS certificate's daily warning (issue 25);
- the store's maintenance windows, read again every minute (issue 21: another instance's windows).

A loop that fails says so and goes on at its next turn: one bad turn must not end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from monitor.agent.centre.api import AgentApi
from monitor.agent.centre.registry import AgentRegistry
from monitor.history.store import HistoryNotCreated, HistoryStore, StoredWindow
from monitor.maintenance import MaintenanceBook
from monitor.web.certificate import CHECK_SECONDS as CERTIFICATE_CHECK_SECONDS
from monitor.web.certificate import ServedCertificate

if TYPE_CHECKING:
    from monitor.agent.centre.shared import SharedAgents

log = logging.getLogger("monitor.daemon")

AGENT_CHECK_SECONDS = 1.0  # how often agent sites are checked for silence (stale_after is at least 1 s)
MAINTENANCE_REFRESH_SECONDS = 60.0  # how often the store's maintenance windows are read again (shared stores)


async def watch_agents(agents: AgentRegistry, agent_api: AgentApi) -> None:
    """Every second: mark agent sites that went silent as down, and free test slots granted but never used."""
    while True:
        await asyncio.sleep(AGENT_CHECK_SECONDS)
        try:
            agents.check_silence()
            agent_api.expire_slots()
        except Exception:  # a bug here must not stop the watch for every other agent site
            log.exception("agent liveness check failed")


async def keep_contacts(agents: AgentRegistry, shared: SharedAgents) -> None:
    """Agents heard by the other instances (issue 19): see :func:`monitor.agent.centre.shared.keep_contacts`."""
    from monitor.agent.centre.shared import keep_contacts  # psycopg only with PostgreSQL

    await keep_contacts(agents, shared)


async def watch_certificate(certificate: ServedCertificate) -> None:
    """Once a day: warn again while the served TLS certificate expires within 14 days or has expired."""
    while True:
        await asyncio.sleep(CERTIFICATE_CHECK_SECONDS)
        certificate.check(time.time())


async def refresh_maintenance(book: MaintenanceBook, open_reader: Callable[[], HistoryStore]) -> None:
    """Every minute: read the store's open and upcoming maintenance windows again, in a worker thread.

    Instances that share a PostgreSQL history (``--shard``) see each other's windows (a window on an
    upstream node holds sites of every shard) and early closes within a minute.
    """
    failed = False
    while True:
        await asyncio.sleep(MAINTENANCE_REFRESH_SECONDS)
        edits, now = book.edits, time.time()
        try:
            windows = await asyncio.to_thread(_read_windows, open_reader, now)
        except Exception as err:  # the store is away: the book keeps what it has; said once per outage
            if not failed:
                log.warning("maintenance: cannot read the windows from the history: %s", err)
            failed = True
            continue
        failed = False
        book.sync(windows, now, edits)


def _read_windows(open_reader: Callable[[], HistoryStore], now: float) -> list[StoredWindow]:
    try:
        store = open_reader()
    except HistoryNotCreated:
        return []
    try:
        return store.maintenance_windows(now, float("inf"))
    finally:
        store.close()
