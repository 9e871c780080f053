"""Who owns what ``connmon run`` writes: its state directory, and on a shared PostgreSQL history its identity.

Two processes on one state directory, or two instances with one identity on a shared history, would
probe and store the same sites twice (issue 25). The daemon takes both before it opens anything and
keeps the identity's lock for as long as it runs, taking it again after a server restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from monitor.errors import StateInUseError
from monitor.history.store_url import error_line, is_postgres
from monitor.shard import Shard
from monitor.state_lock import StateLock

if TYPE_CHECKING:
    from monitor.history.postgres_identity import IdentityLock  # psycopg only with PostgreSQL

log = logging.getLogger("monitor.daemon")

IDENTITY_CHECK_SECONDS = 60.0  # how often the identity's lock on a shared history is checked (issue 25)


def take_ownership(state_dir: str | None, store_url: str | None,
                   shard: Shard | None) -> list[StateLock | IdentityLock]:
    """Lock the state directory, and on a shared PostgreSQL history this instance's identity (issue 25).

    The identity is the share: ``--shard I/N``, or every site without it (the same as ``0/1``).
    Instances with different shares are what sharding is for; two with the same one probe and store
    the same sites twice. A server that does not answer at start-up is not waited for (start-up
    never waits on the database): the identity is then taken later (:func:`keep_identity`).

    Raises:
        StateInUseError: another process holds either (exit 2), named in the message.
    """
    if state_dir is None:  # --no-history: nothing is kept, nothing can be doubled
        return []
    owned: list[StateLock | IdentityLock] = [StateLock.take(state_dir, what="connmon run")]
    if is_postgres(store_url):
        from monitor.history.postgres import redact  # psycopg only with PostgreSQL
        from monitor.history.postgres_identity import IdentityLock

        # with replicas, the cycles, heartbeats and leases go by the index alone: two "0"s (0/3 and 0/4 in a
        # resize) would share them, so they are one identity; plain shards may overlap in a resize
        identity = ("every site, no --shard" if shard is None or shard.count == 1
                    else f"shard {shard.index}" if shard.replicas > 1 else f"shard {shard.index}/{shard.count}")
        assert store_url is not None
        try:
            owned.append(IdentityLock.take(store_url, identity))
        except StateInUseError:
            owned[0].release()
            raise
        except Exception as err:  # the server is away: the history waits for it, and so does the identity's lock
            log.warning("history: cannot check yet that no other instance has this identity (%s) on %s: %s; "
                        "tried again every minute", identity, redact(store_url), error_line(err))
            owned.append(IdentityLock(store_url, identity))
    return owned


async def keep_identity(lock: IdentityLock) -> None:
    """Every minute: hold the identity's lock on a shared history, taking it again after a server restart.

    Another instance that took it meanwhile (while the server was away) is said as an ERROR, once
    until that changes: this one cannot tell which of the two should stop, the operator can.
    """
    from monitor.history.postgres import redact

    said = ""
    while True:
        try:
            await asyncio.to_thread(lock.keep)
        except StateInUseError as err:
            if str(err) != said:
                log.error("history: %s", err)
            said = str(err)
        except Exception as err:  # the server is away: the writer says so; the lock is taken when it answers
            log.debug("history: identity lock: %s", error_line(err))
        else:
            if said:
                log.warning("history: the identity %s on %s is this instance's alone again", lock.identity,
                            redact(lock.url))
            said = ""
        await asyncio.sleep(IDENTITY_CHECK_SECONDS)
