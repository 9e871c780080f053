"""``connmon agent-invite`` and ``connmon agent-revoke`` (issue 18): the centre's side of enrolment, at the shell.

Both work on the history store the daemon uses (``--state-dir``, ``--store``), not on the daemon:
the running daemon reads the enrolled tokens from the store every few seconds
(:func:`~monitor.agent.centre.enrolment.keep_tokens`) and looks codes up there when an agent
enrols, so neither command needs a reload. The codes themselves are
:mod:`monitor.agent.centre.enrolment`'s.
"""

from __future__ import annotations

import datetime as dt
import sys
import time

from monitor.agent.centre.enrolment import code_hash, new_code
from monitor.config import load_config
from monitor.history.agent_tokens import open_book
from monitor.history.store_url import describe
from monitor.targets import build_targets


def invite(site: str, config_path: str, state_dir: str, store_url: str | None, expires_seconds: float) -> int:
    """Print a new one-time code for ``site``, which must be an agent site of the centre's config; 0, or 1.

    Raises:
        ConfigError: the config is invalid (exit 2).
    """
    targets = {t.name: t for t in build_targets(load_config(config_path, allow_empty=True))}
    target = targets.get(site)
    if target is None or target.mode != "agent":
        what = f"no site named {site!r}" if target is None else f"site {site!r} has mode: {target.mode}, not agent"
        print(f"connmon: {config_path}: {what}; an enrolment code is for a site with mode: agent", file=sys.stderr)
        return 1
    if not target.probed:
        print(f"connmon: note: site {site!r} is {target.status}: its agent is not heard until it is connected",
              file=sys.stderr)
    code = new_code()
    now = time.time()
    book = open_book(store_url, state_dir)
    try:
        replaced = book.invite(site, code_hash(code), now, now + expires_seconds)
    finally:
        book.close()
    until = dt.datetime.fromtimestamp(now + expires_seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(code)
    print(f"# enrolment code for site {site}, valid once until {until}"
          f"{' (the earlier open code for the site no longer works)' if replaced else ''}; at the site:\n"
          f"#   connmon agent enrol --centre URL --code {code}", file=sys.stderr)
    return 0


def revoke(site: str, state_dir: str, store_url: str | None) -> int:
    """End ``site``'s enrolled token and its open codes; 0, or 1 when there was nothing to end."""
    book = open_book(store_url, state_dir)
    try:
        revoked = book.revoke(site)
    finally:
        book.close()
    where = describe(store_url) if store_url else state_dir
    if not revoked.token and not revoked.codes:
        print(f"connmon: site {site!r} has no enrolled token and no open code in {where}", file=sys.stderr)
        return 1
    print(f"site {site}: {'token revoked' if revoked.token else 'no enrolled token'}"
          f"{f', {revoked.codes} open code(s) ended' if revoked.codes else ''}; the running centre refuses it within "
          "seconds (a token_sha256 in the centre's YAML stays valid until it is removed there)")
    return 0
