"""Running ``promtool check metrics`` on an exposition, with the one lint the spec overrides.

promtool's linter flags every metric name containing ``bits`` ("use base unit bytes instead of
bits"), but the project's spec names ``connmon_target_bits_per_second`` and
``connmon_throughput_bits_per_second`` explicitly (network rates are quoted in bits by every
contract and ISP). That exact complaint on a ``*_bits_per_second`` name is the only one allowed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import need

_ALLOWED = re.compile(r'^connmon_\w+_bits_per_second use base unit "bytes" instead of "bits"$')


def promtool_problems(exposition: str) -> list[str]:
    """promtool's complaints about ``exposition`` except the allowed bits-vs-bytes one."""
    need(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    proc = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True,
                          text=True, check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    problems = [line for line in lines if not _ALLOWED.match(line)]
    if proc.returncode not in (0, 3):  # 3 = lint findings; anything else is a parse failure
        problems.append(f"promtool exited {proc.returncode}")
    return problems
