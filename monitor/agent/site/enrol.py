"""``connmon agent enrol``: the centre's one-time code traded for the site's token, and the agent's config (issue 18).

The technician at the site types the centre's URL and the code ``connmon agent-invite`` printed at
the centre; the code names the site, so nothing else is typed. This command posts the code to
``POST /api/v1/agent/enrol`` (no token: the code is the credential) and writes what the agent
needs, in :mod:`monitor.agent.site.config`'s format:

* the token into ``token`` beside the config, mode 0600, owned by the agent's user (``--user``,
  default ``connmon-agent`` when that user exists and this runs as root), written whole or not at all;
* the CA file, when given, copied beside the config (``centre-ca.pem``), so the agent's user can read it;
* the config (``--config``, default ``/etc/connmon-agent/agent.yaml``): centre, site, token file, CA
  and state directory, which is created (mode 0700, the agent's user's).

Enrolling again (a new code) replaces the token and the config and keeps the spool. The written
config is read back with the agent's own loader before the command says it is done.

Then the agent starts, so that a technician's whole visit is two commands (``apt install`` of the
package, then this): run as root on a machine that systemd booted, with the package's unit
installed, it runs ``systemctl enable connmon-agent.service`` and ``systemctl restart ...``
(restart, not ``--now``: an agent already running with the old token must read the new one).
Where that cannot be done (``--no-start``, no systemd as in a chroot or a container, no unit, not
root) it says what to run instead and still exits 0: the enrolment itself succeeded. A start that
systemd refuses exits 1 with systemd's words and the command to retry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.agent.protocol import ENROL_PATH
from monitor.agent.site.config import DEFAULT_STATE_DIR, load_agent_config
from monitor.errors import ConfigError

DEFAULT_CONFIG = "/etc/connmon-agent/agent.yaml"
DEFAULT_USER = "connmon-agent"
TOKEN_NAME = "token"
CA_NAME = "centre-ca.pem"
TIMEOUT_SECONDS = 60.0  # a satellite link's first TLS handshake can take seconds
UNIT = "connmon-agent.service"
# where the Debian package (/lib), a distribution's /usr/lib and a hand install (/etc, docs/agents.md) put the unit
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
SYSTEMD_RUNNING = "/run/systemd/system"  # sd_booted(3): this directory exists only when systemd is PID 1
SYSTEMCTL_TIMEOUT_SECONDS = 90.0


@dataclass(frozen=True, slots=True)
class Owner:
    """Who the agent runs as: its files are made theirs (None: left to the user running this)."""

    uid: int
    gid: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connmon agent enrol",
        description="Trade the centre's one-time enrolment code (connmon agent-invite) for this site's token and "
                    "write the agent's config; then, as root where systemd runs, enable and start the "
                    "connmon-agent service.")
    parser.add_argument("--centre", required=True, metavar="URL", help="the centre's base URL, e.g. "
                                                                        "https://connmon.example.net")
    parser.add_argument("--code", required=True, help="the enrolment code, e.g. K7QF-M2XD-9PZA (any case, dashes "
                                                      "optional)")
    parser.add_argument("--ca", metavar="FILE", help="PEM file of the CA that signed the centre's certificate (a "
                                                     "private CA); copied beside the config")
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"the agent's config to write (default {DEFAULT_CONFIG}); the token goes beside it")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"the agent's spool directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help=f"the user the agent runs as, who gets the token file (default {DEFAULT_USER} when "
                             "it exists and this runs as root)")
    parser.add_argument("--no-start", action="store_true",
                        help=f"only write the files; do not enable and start {UNIT} (e.g. in an image being "
                             "prepared, or a chroot)")
    return parser


def main(argv: Sequence[str]) -> int:
    """``connmon agent enrol ARGS``: 0 enrolled (and started, or told how), 1 refused, unreachable or not started,
    2 bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        owner = _owner(args.user)
    except KeyError:
        print(f"connmon: no user named {args.user!r} (the agent's user)", file=sys.stderr)
        return 2
    centre = args.centre.strip().rstrip("/")
    try:
        context = _tls(centre, args.ca)
    except (OSError, ssl.SSLError) as err:
        print(f"connmon: --ca {args.ca}: cannot load it as PEM CA certificates: {err}", file=sys.stderr)
        return 2
    answer = _post(centre + ENROL_PATH, {"code": args.code}, context)
    if isinstance(answer, str):
        print(f"connmon: {answer}", file=sys.stderr)
        return 1
    site, token = answer
    config = Path(args.config).absolute()
    try:
        write_agent_files(config, centre, site, token, Path(args.state_dir).absolute(),
                          Path(args.ca) if args.ca else None, owner)
        load_agent_config(config)  # the agent's own check: what it will read is valid
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 1
    except OSError as err:
        print(f"connmon: cannot write the agent's files: {err}", file=sys.stderr)
        return 1
    print(f"enrolled site {site} with {centre}: config {config}, token {config.parent / TOKEN_NAME}")
    return start_agent(config, args.no_start)


@dataclass(frozen=True, slots=True)
class StartPlan:
    """Whether this command starts the agent itself, and if not, why (said to the technician)."""

    start: bool
    reason: str


def start_plan(no_start: bool, config: Path) -> StartPlan:
    """Start through systemd only where it can work: root, systemd running, the unit installed, the default config.

    The unit's ``ExecStart`` reads ``/etc/connmon-agent/agent.yaml``: a config written elsewhere is not the
    one the service would run, so it is not started for it.
    """
    if no_start:
        return StartPlan(False, "--no-start")
    if config != Path(DEFAULT_CONFIG):
        return StartPlan(False, f"the service reads {DEFAULT_CONFIG}, not {config}")
    if not os.path.isdir(SYSTEMD_RUNNING):
        return StartPlan(False, "systemd is not running here (a chroot or a container?)")
    if not any(os.path.exists(os.path.join(d, UNIT)) for d in UNIT_DIRS):
        return StartPlan(False, f"no {UNIT} installed (the connmon-agent package brings it)")
    if os.geteuid() != 0:
        return StartPlan(False, "only root can start the service")
    if shutil.which("systemctl") is None:
        return StartPlan(False, "no systemctl on the PATH")
    return StartPlan(True, "")


def start_agent(config: Path, no_start: bool) -> int:
    """Enable and (re)start the agent's unit, or say what to run instead; the command's exit code."""
    plan = start_plan(no_start, config)
    by_hand = f"connmon agent --config {config}"
    if not plan.start:
        if config == Path(DEFAULT_CONFIG):
            instead = f"systemctl enable --now {UNIT.removesuffix('.service')} (or, without systemd: {by_hand})"
        else:
            instead = by_hand
        print(f"not starting the agent ({plan.reason}); start it with: {instead}")
        return 0
    for step in (["systemctl", "enable", "--quiet", UNIT], ["systemctl", "restart", UNIT]):
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_SECONDS,
                                  check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            said = str(err)
        else:
            if done.returncode == 0:
                continue
            said = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        print(f"connmon: enrolled, but `{' '.join(step)}` failed: {said}\n"
              f"see: systemctl status {UNIT}; journalctl -u {UNIT}; then: systemctl enable --now {UNIT}",
              file=sys.stderr)
        return 1
    print(f"started {UNIT} (enabled at boot); see: systemctl status {UNIT}, journalctl -u {UNIT}")
    return 0


def _owner(user: str | None) -> Owner | None:
    """The agent's user, when this runs as root (only root can give files away); KeyError for an unknown name."""
    if os.geteuid() != 0:
        return None
    if user is None:
        try:
            entry = pwd.getpwnam(DEFAULT_USER)
        except KeyError:
            return None  # no such user here (a test, a hand-made install): root keeps the files
    else:
        entry = pwd.getpwnam(user)
    return Owner(entry.pw_uid, entry.pw_gid)


def _tls(centre: str, ca: str | None) -> ssl.SSLContext | None:
    if not centre.startswith("https://"):
        return None
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def _post(url: str, body: dict[str, str], context: ssl.SSLContext | None) -> tuple[str, str] | str:
    """``(site, token)`` from the centre, or what to tell the technician."""
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
            data = json.loads(response.read(65536).decode("utf-8"))
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read(65536).decode("utf-8")).get("error") or err.reason
        except (ValueError, AttributeError, UnicodeDecodeError):
            message = err.reason
        wait = err.headers.get("Retry-After") if err.code == 429 else None
        return f"the centre refused the enrolment (HTTP {err.code}): {message}" + (
            f" (retry in {wait} s)" if wait else "")
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"{url}: the centre's certificate is not trusted ({reason.verify_message}); give its CA with "
                    "--ca FILE")
        return f"{url}: cannot reach the centre: {reason}"
    except (OSError, ValueError) as err:
        return f"{url}: no valid answer from the centre: {err}"
    if not isinstance(data, dict) or not isinstance(data.get("site"), str) or not isinstance(data.get("token"), str):
        return f"{url}: the answer is not an enrolment ({str(data)[:200]})"
    return data["site"], data["token"]


def write_agent_files(config: Path, centre: str, site: str, token: str, state_dir: Path, ca: Path | None,
                      owner: Owner | None) -> None:
    """Write the token (0600, the agent's), the CA copy, the config, and make the state directory."""
    directory = config.parent
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / TOKEN_NAME
    _write(token_file, token + "\n", 0o600, owner)
    ca_copy = None
    if ca is not None:
        ca_copy = directory / CA_NAME
        if ca.resolve() != ca_copy.resolve():
            _write(ca_copy, ca.read_text(encoding="ascii"), 0o644, None)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if owner is not None:
        os.chown(state_dir, owner.uid, owner.gid)
    lines = ["# written by `connmon agent enrol` (see docs/agents.md); enrolling again rewrites it",
             f"centre: {json.dumps(centre)}", f"site: {json.dumps(site)}", f"token_file: {json.dumps(str(token_file))}",
             *([f"ca_file: {json.dumps(str(ca_copy))}"] if ca_copy is not None else []),
             f"state_dir: {json.dumps(str(state_dir))}"]
    _write(config, "\n".join(lines) + "\n", 0o644, None)


def _write(path: Path, text: str, mode: int, owner: Owner | None) -> None:
    """``path`` replaced whole (a new file renamed over it): never a half-written token or config.

    The temporary file is made new (``O_EXCL``, ``O_NOFOLLOW``), never opened through what is already
    at its name: in a directory others may write, a symlink planted there would otherwise have root
    write the token through it. A stale one (a crashed run, or a planted link) is removed first, the
    link itself and not its target; one planted again in between makes the open fail (an OSError,
    said as such), and nothing is written anywhere else.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), mode)  # whatever the umask
            if owner is not None:
                os.fchown(file.fileno(), owner.uid, owner.gid)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise

