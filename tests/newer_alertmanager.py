"""Where the tests find an Alertmanager that can load the shipped config (issue 22).

``config/alertmanager.yml`` reads the Telegram bot token from a file (``bot_token_file``), which
Alertmanager 0.26 added; Debian 12's ``prometheus-alertmanager`` is 0.25 and refuses the file
("field bot_token_file not found"). ``scripts/newer-alertmanager`` (run by ``scripts/install --test``)
extracts Debian trixie's package into a directory of its own, leaving the system's packages and apt
sources alone; this module names its binaries. ``CONNMON_TEST_ALERTMANAGER_DIR`` moves the directory,
for the script and the tests alike.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import need

DIRECTORY = Path(os.environ.get("CONNMON_TEST_ALERTMANAGER_DIR", "/var/cache/connmon-test/alertmanager-trixie"))
MINIMUM = (0, 26)  # bot_token_file in telegram_configs


def binary(name: str) -> str:
    """The path of ``prometheus-alertmanager`` or ``amtool`` from that directory, checked to be >= 0.26.

    Skips the test (fails it under CI=true) when the directory lacks it: run ``scripts/newer-alertmanager``.
    """
    path = DIRECTORY / "usr" / "bin" / name
    need(os.access(path, os.X_OK), f"needs {path} (Alertmanager >= 0.26): run scripts/newer-alertmanager as root")
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False, timeout=30)
    found = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    assert found and (int(found[1]), int(found[2])) >= MINIMUM, f"{path} is not Alertmanager >= 0.26: {out}"
    return str(path)
