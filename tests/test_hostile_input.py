"""Input that is not what we expect, end to end: odd site names reach /metrics intact, and a DNS name
that starts resolving elsewhere is followed at the next cycle."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.netlab import Lab
from tests.promtool import promtool_problems
from tests.running import endpoints, request, running_daemon, samples, scrape_when, value

HOSTILE_NAMES = [
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    'backslash then quote \\"',
    "two\nlines",
    "tab\there",
    "carriage\rreturn",
    "🏫 school 🇰🇿",
    "№12 мектеп",
    "Ақтөбе облысы, Шалқар ауданы",
    "{curly} = [square] # hash",
    "x\\n not a newline",
    "end with newline\n",
]


def test_hostile_site_names_survive_into_metrics_and_parse_back_exactly(lab: Lab, tmp_path: Path) -> None:
    """Quotes, backslashes, newlines, tabs, emoji and Cyrillic in names and labels come back byte for byte."""
    rows = "".join(
        f"      - {{name: {json.dumps(name, ensure_ascii=False)}, host: 127.0.0.{i + 2}, "
        f"link: {json.dumps(name[::-1], ensure_ascii=False)}}}\n"
        for i, name in enumerate(HOSTILE_NAMES))
    config = tmp_path / "hostile.yaml"
    config.write_text("defaults: {icmp: {interval: 1s, count: 1, timeout: 300ms}}\ngroups:\n"
                      "  - name: 'group \"quoted\" \\ ünï'\n    district: \"line\\nbreak\"\n    endpoints:\n" + rows,
                      encoding="utf-8")
    url = f"http://{lab.prober_v4}:9141/metrics"
    with running_daemon(lab, config, 9141) as proc:
        parsed = scrape_when(url, lambda p: len(p.get("connmon_up", {})) == len(HOSTILE_NAMES)
                             and all(v == 1 for v in p["connmon_up"].values()), proc)
        text = request(url)[2]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert endpoints(parsed) == set(HOSTILE_NAMES)
    for name in HOSTILE_NAMES:
        assert value(parsed, "connmon_up", endpoint=name, link=name[::-1], district="line\nbreak") == 1
        assert value(parsed, "connmon_endpoint_info", endpoint=name, group='group "quoted" \\ ünï') == 1
    assert samples(text).keys() == parsed.keys()
    assert promtool_problems(text) == []  # Prometheus' own parser and linter agree
    for line in stderr.splitlines():  # the log stays one line per event, whatever the names hold
        assert line[:4].isdigit(), line


def test_a_dns_name_that_moves_to_another_address_is_followed(lab: Lab, tmp_path: Path) -> None:
    """When the lab's hosts file points the name at a site that drops ICMP, the next cycles probe it (down,
    and that site's firewall counts the echoes); pointing it back brings the endpoint up again."""
    answering, silent = lab.add_site("answering"), lab.add_site("silent")
    silent.drop_icmp()
    lab.hosts["moving.lab.test"] = answering.v4
    lab._write_hosts()  # rewritten in place: the namespace's bind-mounted /etc/hosts sees it at once
    config = tmp_path / "moving.yaml"
    config.write_text("defaults: {icmp: {interval: 1s, count: 2, spacing: 10ms, timeout: 300ms, family: ipv4}}\n"
                      "groups:\n  - {name: g, endpoints: [{name: moving, host: moving.lab.test}]}\n", encoding="utf-8")
    url = f"http://{lab.prober_v4}:9142/metrics"
    try:
        with running_daemon(lab, config, 9142) as proc:
            scrape_when(url, lambda p: value(p, "connmon_up", endpoint="moving") == 1, proc)
            dropped = silent.dropped_echoes()
            lab.hosts["moving.lab.test"] = silent.v4
            lab._write_hosts()
            scrape_when(url, lambda p: value(p, "connmon_up", endpoint="moving") == 0, proc)
            assert silent.dropped_echoes() > dropped  # the echoes really went to the new address
            lab.hosts["moving.lab.test"] = answering.v4
            lab._write_hosts()
            back = scrape_when(url, lambda p: value(p, "connmon_up", endpoint="moving") == 1, proc)
            assert value(back, "connmon_probe_errors_total", endpoint="moving", reason="dns") == 0
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        del lab.hosts["moving.lab.test"]
        lab._write_hosts()


def test_log_lines_never_carry_line_breaks_or_terminal_controls() -> None:
    """A text log line stays one line and free of ESC whatever a name or message holds."""
    import logging

    from monitor.logs import TextFormatter

    nasty = "a\nb\rc\x1b[31md\u2028e\x85f\x00g"
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "down: %s", (nasty,), None)
    record.endpoint = nasty
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1 and "\x1b" not in line and "\x00" not in line
    assert 'endpoint="a\\nb\\rc\\u001b[31md\\u2028e\\u0085f\\u0000g"' in line
