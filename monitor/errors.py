"""The project's exception tree and the exit codes that go with it.

    ConnmonError                 exit 1   anything the project raises on purpose
    ├── ConfigError              exit 2   the config file is unreadable or invalid (every problem listed)
    ├── StateInUseError          exit 2   another connmon owns the state directory (or the shared history's identity)
    └── StartupError             exit 3   the machine does not allow what connmon needs
        └── IcmpPermissionError  exit 3   no raw and no unprivileged ICMP socket; says how to fix it

Probes never raise for a target's failure: they return a result whose ``error`` is a
:class:`ProbeErrorReason`. Exceptions here are for the edge (CLI, daemon start-up).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProbeErrorReason(enum.StrEnum):
    """Why an endpoint could not be probed at all (closed set: these become label values)."""

    DNS = "dns"  # the name did not resolve (or resolved to no address of a usable family)
    NO_ROUTE = "no_route"  # the kernel has no route to the address (ENETUNREACH / EHOSTUNREACH)
    PERMISSION = "permission"  # sending was refused locally (EPERM / EACCES, e.g. a firewall REJECT)
    UNREACHABLE = "unreachable"  # no reply, but ICMP "destination unreachable" came back (router or site)
    UNSUPPORTED_FAMILY = "unsupported_family"  # e.g. an IPv6 address on a host without IPv6 ICMP
    SEND_FAILED = "send_failed"  # any other local error while sending
    # Throughput tests (issue 3):
    REFUSED = "refused"  # nothing listens on the site's test port (TCP RST)
    TIMEOUT = "timeout"  # connected (or tried to) but the test did not finish within its bound
    BUSY = "busy"  # the site's iperf3 server is running another client's test; retried with backoff
    TOOL_MISSING = "tool_missing"  # the iperf3 binary is not installed on the monitoring host
    BUDGET = "budget"  # the site's monthly data budget is spent; the test was skipped
    HTTP_STATUS = "http_status"  # the web server answered, but not with 2xx
    FAILED = "failed"  # any other failure the test tool reported (its message is in the detail)
    # Site agents (issue 10):
    AGENT_SILENT = "agent_silent"  # nothing arrived from the site's agent within stale_after
    # Where is the fault (issue 21):
    MONITOR_CUT_OFF = "monitor_cut_off"  # no reply while the centre's own way out was down: not the site's fault
    UPSTREAM_DOWN = "upstream_down"  # no reply while an upstream node of the site (its chain) was down
    MAINTENANCE = "maintenance"  # no reply while a maintenance window of the site (or of a node above it) was open

    @classmethod
    def stored(cls, value: str | None) -> ProbeErrorReason | None:
        """A reason read back from the history; one this version does not know (a newer connmon's) is ``failed``."""
        if value is None:
            return None
        try:
            return cls(value)
        except ValueError:
            return cls.FAILED


MEASURED_ICMP_REASONS: tuple[ProbeErrorReason, ...] = (
    ProbeErrorReason.DNS, ProbeErrorReason.NO_ROUTE, ProbeErrorReason.PERMISSION, ProbeErrorReason.UNREACHABLE,
    ProbeErrorReason.UNSUPPORTED_FAMILY, ProbeErrorReason.SEND_FAILED)
"""Reasons an ICMP probe itself reports (at the centre, or an agent at its site)."""

ICMP_REASONS: tuple[ProbeErrorReason, ...] = (*MEASURED_ICMP_REASONS, ProbeErrorReason.MONITOR_CUT_OFF,
                                              ProbeErrorReason.UPSTREAM_DOWN, ProbeErrorReason.MAINTENANCE)
"""Reasons an ICMP cycle can show; each exists as a series at 0 from start-up. ``monitor_cut_off`` is the
centre's verdict on a silent site while its own uplink was down (:mod:`monitor.centre_path`), never an agent's."""

AGENT_REASONS: tuple[ProbeErrorReason, ...] = (*MEASURED_ICMP_REASONS, ProbeErrorReason.AGENT_SILENT)
"""Reasons an agent site's ICMP series can show: what its agent reports, and the centre's own ``agent_silent``."""

THROUGHPUT_REASONS: tuple[ProbeErrorReason, ...] = (
    ProbeErrorReason.DNS, ProbeErrorReason.NO_ROUTE, ProbeErrorReason.REFUSED, ProbeErrorReason.TIMEOUT,
    ProbeErrorReason.BUSY, ProbeErrorReason.TOOL_MISSING, ProbeErrorReason.BUDGET, ProbeErrorReason.HTTP_STATUS,
    ProbeErrorReason.FAILED)
"""Reasons a throughput test can report (``probe="throughput"``)."""


class ConnmonError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One located problem in a config file, printed ``FILE:LINE:COL: path: message``."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ConnmonError):
    """The config is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class StateInUseError(ConnmonError):
    """Another process owns this state directory (or, on PostgreSQL, this instance's identity); names it (issue 25).

    Exit 2, as a config mistake: two daemons on one directory is a deployment error, and retrying
    (systemd's ``Restart=``) cannot mend it while the first one runs.
    """

    exit_code = 2


class StartupError(ConnmonError):
    """The environment does not allow connmon to start; the message names the fix."""

    exit_code = 3


class IcmpPermissionError(StartupError):
    """Neither a raw nor an unprivileged (datagram) ICMP socket could be opened."""
