"""Config reload: one coroutine for SIGHUP, ``POST /-/reload`` and the file watcher (issue 7).

Why one path: three triggers can fire at once (an operator saves the file and sends SIGHUP while
a deploy tool POSTs), and two half-applied configs must never interleave. :class:`Reloader`
serialises them with a lock, builds the new config and targets completely (the parse runs on a
thread so scrapes and running cycles are not held up), and only then hands the targets to
``apply``. A file that fails keeps the running config; ``report`` tells the metrics sink either
way (``connmon_config_last_reload_successful``), and the log lists every problem as
``FILE:LINE:COL: path: message``.

:class:`ConfigWatcher` polls instead of using inotify: a ``stat`` every few seconds, and a
SHA-256 of the files only when a stat changed. It follows every file the config includes (issue 22):
the given file, each included one, and a new file dropped where an ``include:`` glob finds it.
Polling also sees an editor's rename-over and a
Kubernetes ConfigMap's symlink swap, which inotify on the path misses, and needs no dependency.
A file whose content was already tried (good or bad) is not reloaded again, so a broken file is
reported once, not at every poll.

What it leaves to others: parsing and validation (:mod:`monitor.config`), the job diff that keeps
unchanged sites' schedules (:mod:`monitor.scheduler`), and keeping unchanged sites' series
(:mod:`monitor.exposition.sink`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.config import Config, load_config
from monitor.config.includes import digest_now, digest_of, included_files
from monitor.errors import ConfigError
from monitor.targets import Target, build_targets

log = logging.getLogger(__name__)

DEFAULT_WATCH_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one reload did: ``ok``, and a message for people (the errors, one per line, on failure)."""

    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """A config loaded whole: the config, its targets, and the digest of the content they came from."""

    config: Config
    targets: tuple[Target, ...]
    digest: str | None


def load(config_path: str, *, allow_empty: bool = False) -> Loaded:
    """Load and validate the config (the file and those it includes), and build its targets: the start-up
    load, and each reload's.

    The digest is of the bytes the loader read (:attr:`Config.sources`): if a file changes after it
    was read, the watcher sees a digest that differs and reloads once more, which is what we want.

    Args:
        allow_empty: ``--config.allow-empty``: a config with no endpoint is accepted (issue 22).

    Raises:
        ConfigError: a file is unreadable or invalid (at start-up ``connmon run`` exits 2).
    """
    config = load_config(config_path, allow_empty=allow_empty)
    return Loaded(config, build_targets(config), digest_of(config.sources))


class Reloader:
    """Loads the config file and swaps the result in, one reload at a time.

    Args:
        config_path: the file given with ``--config``.
        apply: makes the running daemon use new targets (scheduler diff, then sinks). It runs on
            the event loop; if it raises, the reload counts as failed.
        report: called with True after a good reload, False after a failed one.
        tried_digest: the digest of the content loaded at start-up (:func:`load`), so the watcher
            does not load it again.
        loader: loads the file (run in a worker thread); :func:`load` but in tests.
        include_patterns: the ``include:`` entries of the config loaded at start-up, so the watcher follows
            its included files from the start.
    """

    def __init__(self, config_path: str, apply: Callable[[Config, tuple[Target, ...]], None],
                 report: Callable[[bool], None], tried_digest: str | None = None,
                 loader: Callable[[str], Loaded] = load, include_patterns: Sequence[str] = ()) -> None:
        self.config_path = config_path
        # the included files of the last config that loaded; a failed load keeps them (it told us none)
        self.include_patterns: tuple[str, ...] = tuple(include_patterns)
        self._load = loader
        self._apply = apply
        self._report = report
        self._lock = asyncio.Lock()
        self._closed = False
        self.tried_digest = tried_digest  # content of the file at the last load, good or bad
        self.reloads = 0  # attempts, for tests and logs

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Validate the file in full, then apply it; on any error keep the running config.

        Args:
            trigger: who asked (``SIGHUP``, ``POST /-/reload``, ``file change``), for the log.
        """
        async with self._lock:
            if self._closed:
                return ReloadOutcome(False, "connmon is shutting down; not reloading")
            self.reloads += 1
            try:
                loaded = await asyncio.to_thread(self._load, self.config_path)
            except ConfigError as err:
                self.tried_digest = self.digest_now()
                self._report(False)
                log.error("reload failed (%s), keeping the running config:\n%s", trigger, err)
                return ReloadOutcome(False, str(err))
            config, targets = loaded.config, loaded.targets
            self.tried_digest = loaded.digest
            self.include_patterns = config.include_patterns
            if self._closed:  # shutdown began while the file was being parsed
                return ReloadOutcome(False, "connmon is shutting down; not reloading")
            try:
                self._apply(config, targets)
            except Exception as err:  # never leave a half-applied reload looking successful
                self._report(False)
                log.exception("reload failed (%s) while applying; the previous jobs stay", trigger)
                return ReloadOutcome(False, f"{self.config_path}: could not apply the new config: {err}")
            self._report(True)
            message = f"reloaded {self.config_path}: {len(targets)} endpoints"
            log.info("%s (%s)", message, trigger)
            return ReloadOutcome(True, message)

    def digest_now(self) -> str | None:
        """The digest of the config's files as they are now (None while the given file cannot be read)."""
        return digest_now(self.config_path, self.include_patterns)

    def files(self) -> list[str]:
        """The files the config is read from now: the given one, then what its ``include:`` entries find."""
        return [self.config_path, *included_files(self.include_patterns, self.config_path)]

    def close(self) -> None:
        """Refuse reloads from now on (shutdown); one already parsing will not be applied."""
        self._closed = True


class ConfigWatcher:
    """Polls the config's files and asks the reloader to reload when their content changes."""

    def __init__(self, reloader: Reloader, interval_seconds: float = DEFAULT_WATCH_INTERVAL_SECONDS) -> None:
        self.reloader = reloader
        self.interval_seconds = interval_seconds

    def _stat(self) -> tuple[tuple[str, tuple[int, int, int, int] | None], ...] | None:
        """Each file's stat (following symlinks: a ConfigMap swap changes it); None if the given file is away."""
        out: list[tuple[str, tuple[int, int, int, int] | None]] = []
        for path in self.reloader.files():  # globs expanded again: a new district file is seen
            try:
                st = os.stat(path)
            except OSError:
                out.append((path, None))
                continue
            out.append((path, (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)))
        return tuple(out) if out[0][1] is not None else None

    async def run(self) -> None:
        """Poll until cancelled; a missing or unreadable given file is waited out, not reloaded."""
        log.info("watching %s (and %d included files) for changes every %gs", self.reloader.config_path,
                 len(self.reloader.files()) - 1, self.interval_seconds)
        seen = self._stat()
        while True:
            await asyncio.sleep(self.interval_seconds)
            now = self._stat()
            if now == seen or now is None:
                continue
            seen = now
            digest = await asyncio.to_thread(self.reloader.digest_now)
            if digest is None or digest == self.reloader.tried_digest:
                continue  # touched but not changed, or this content was tried already
            await self.reloader.reload("file change")
