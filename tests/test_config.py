"""Tests of the config loader, the cascade into targets, durations and ``connmon check``.

Error reporting is tested against a corpus: every ``tests/configs/*.bad.yaml`` starts with
``# expect: LINE:COL: path: message`` comment lines, the exact problems (file path prepended)
that loading it must report, in order. To add a case, write the file and its expect lines.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Config, IcmpSettings, load_config, parse_config
from monitor.config.durations import format_duration, parse_duration
from monitor.errors import ConfigError
from monitor.targets import build_targets

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "endpoints.sample.yaml"
EXAMPLE = REPO / "config" / "example.yaml"
BAD_CONFIGS = sorted((Path(__file__).resolve().parent / "configs").glob("*.bad.yaml"))

DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
DOCUMENTATION_DOMAINS = ("example.net", "example.org", "example.com")


def expected_problems(path: Path) -> list[str]:
    """The ``# expect:`` lines at the top of a corpus file, with the file's path prepended."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# expect: "):
            break
        out.append(f"{path}:{line.removeprefix('# expect: ')}")
    return out


def problems_of(path: Path) -> list[str]:
    """The problems loading ``path`` reports, as printed; fails the test if the file is valid."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def run_check(config: Path | str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m monitor check --config CONFIG`` the way an operator would."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=60, check=False)


# ----------------------------------------------------------------------------- shipped configs


def test_sample_parses_with_its_groups_and_endpoints() -> None:
    """The sample region parses into its 4 groups and 20 endpoints, with every kind and link type."""
    config = load_config(SAMPLE)
    targets = build_targets(config)
    assert [g.name for g in config.groups] == [
        "aktobe-city-schools", "district-schools", "satellite-schools", "clinics"]
    assert len(targets) == 20
    assert {t.kind for t in targets} == {"school", "clinic"}
    assert {t.link for t in targets} == {"fibre", "dsl", "lte", "satellite"}
    assert {t.district for t in targets} == {"Aktobe", "Khromtau", "Shalkar", "Mugalzhar", "Temir"}
    assert all(t.lat is not None and t.lon is not None for t in targets)
    assert "№12 мектеп" in {t.name for t in targets}
    assert any(t.address is None for t in targets), "the sample should show a DNS-name host"
    assert any(t.address is not None and ":" in t.address for t in targets), "and an IPv6 host"


def test_sample_uses_only_documentation_addresses() -> None:
    """Every sample host is in a documentation range or under example.net/.org, so nothing real is probed."""
    for target in build_targets(load_config(SAMPLE)):
        if target.address is not None:
            address = ipaddress.ip_address(target.address)
            assert any(address in net for net in DOCUMENTATION_NETWORKS), (target.name, target.host)
        else:
            assert target.host.rstrip(".").endswith(DOCUMENTATION_DOMAINS), (target.name, target.host)


def test_example_parses_and_is_loopback_only() -> None:
    """config/example.yaml parses into 2 groups and 4 endpoints, every one on this machine."""
    config = load_config(EXAMPLE)
    targets = build_targets(config)
    assert len(config.groups) == 2
    assert len(targets) == 4
    for target in targets:
        if target.address is None:
            assert target.host == "localhost", target
        else:
            assert ipaddress.ip_address(target.address).is_loopback, target


def test_sample_satellite_group_overrides_icmp() -> None:
    """The sample's satellite schools get the group's slower ICMP settings and keep the default payload."""
    by_name = {t.name: t for t in build_targets(load_config(SAMPLE))}
    satellite = by_name["shalkar-aul-bestamak-school"].icmp
    assert satellite == IcmpSettings(interval_seconds=300.0, count=4, spacing_seconds=1.0,
                                     timeout_seconds=8.0, payload_bytes=56, family="any")
    assert by_name["mugalzhar-aul-zhuryn-school"].icmp.timeout_seconds == 10.0
    assert by_name["mugalzhar-aul-zhuryn-school"].icmp.interval_seconds == 300.0
    assert by_name["aktobe-regional-hospital"].icmp.family == "ipv6"
    assert by_name["aktobe-regional-hospital"].icmp.interval_seconds == 30.0


# ----------------------------------------------------------------------------- the cascade

CASCADE = """\
defaults:
  target_mbps: 8
  icmp: {interval: 2m, count: 3, spacing: 100ms, timeout: 1s, payload_bytes: 64, family: ipv4}
groups:
  - name: schools
    kind: school
    district: Khromtau
    link: dsl
    target_mbps: 16
    icmp: {count: 4, timeout: 2s}
    endpoints:
      - {name: inherits, host: 192.0.2.1}
      - name: overrides
        host: overrides.example.net
        district: Temir
        link: lte
        target_mbps: 1.5
        icmp: {interval: 30s, count: 2, spacing: 50ms, timeout: 500ms, payload_bytes: 32, family: ipv6}
      - {name: overrides-timeout, host: 192.0.2.3, icmp: {timeout: 3s}}
  - name: clinics
    kind: clinic
    endpoints:
      - {name: defaults-only, host: 192.0.2.4}
"""


def test_cascade_group_values_override_defaults() -> None:
    """An endpoint that sets nothing gets the group's keys where set and the defaults' keys elsewhere."""
    target = {t.name: t for t in build_targets(parse_config(CASCADE, "c.yaml"))}["inherits"]
    assert target.icmp == IcmpSettings(interval_seconds=120.0, count=4, spacing_seconds=0.1,
                                       timeout_seconds=2.0, payload_bytes=64, family="ipv4")
    assert target.target_bits_per_second == 16_000_000
    assert (target.group, target.kind, target.district, target.link) == ("schools", "school", "Khromtau", "dsl")


def test_cascade_endpoint_values_override_group_and_defaults() -> None:
    """An endpoint's own settings and labels win over its group's and the defaults."""
    target = {t.name: t for t in build_targets(parse_config(CASCADE, "c.yaml"))}["overrides"]
    assert target.icmp == IcmpSettings(interval_seconds=30.0, count=2, spacing_seconds=0.05,
                                       timeout_seconds=0.5, payload_bytes=32, family="ipv6")
    assert target.target_bits_per_second == 1_500_000
    assert (target.district, target.link) == ("Temir", "lte")


def test_cascade_merges_key_by_key() -> None:
    """Overriding one ICMP key at the endpoint keeps the others from the group and the defaults."""
    target = {t.name: t for t in build_targets(parse_config(CASCADE, "c.yaml"))}["overrides-timeout"]
    assert target.icmp == IcmpSettings(interval_seconds=120.0, count=4, spacing_seconds=0.1,
                                       timeout_seconds=3.0, payload_bytes=64, family="ipv4")


def test_cascade_group_without_settings_uses_defaults() -> None:
    """A group that sets nothing passes the defaults through, and unset labels are empty strings."""
    target = {t.name: t for t in build_targets(parse_config(CASCADE, "c.yaml"))}["defaults-only"]
    assert target.icmp == IcmpSettings(interval_seconds=120.0, count=3, spacing_seconds=0.1,
                                       timeout_seconds=1.0, payload_bytes=64, family="ipv4")
    assert target.target_bits_per_second == 8_000_000
    assert (target.kind, target.district, target.link) == ("clinic", "", "")


def test_cascade_without_defaults_uses_built_in_values() -> None:
    """With no defaults section, endpoints get the built-in ICMP settings and 4 Mbps."""
    config = parse_config("groups:\n  - {name: g, endpoints: [{name: e, host: 192.0.2.1}]}\n", "c.yaml")
    (target,) = build_targets(config)
    assert target.icmp == IcmpSettings()
    assert target.target_bits_per_second == 4_000_000


def test_targets_carry_canonical_addresses() -> None:
    """IP literals become canonical addresses; DNS names keep address None, to be resolved per cycle."""
    text = ("groups:\n  - name: g\n    endpoints:\n"
            "      - {name: a, host: '2001:DB8::0001'}\n"
            "      - {name: b, host: ' 192.0.2.7 '}\n"
            "      - {name: c, host: site.example.net}\n")
    targets = {t.name: t for t in build_targets(parse_config(text, "c.yaml"))}
    assert targets["a"].address == "2001:db8::1"
    assert targets["b"].address == "192.0.2.7"
    assert targets["c"].address is None
    assert targets["c"].host == "site.example.net"


# ----------------------------------------------------------------------------- durations


ROLLOUT = """\
defaults:
  target_mbps: 4
groups:
  - name: new-clinics
    kind: clinic
    status: planned
    provider: KazSat
    planned_date: 2026-11-15
    contracted_mbps: 10
    endpoints:
      - {name: no-host-yet, district: Temir}
      - {name: switched-on, host: 192.0.2.9, status: connected, contracted_mbps: 20, planned_date: "2026-10-01"}
      - {name: closed, host: 192.0.2.10, status: retired, provider: Kazakhtelecom}
  - name: schools
    endpoints:
      - {name: plain, host: 192.0.2.11}
"""


def test_rollout_keys_cascade_from_group_to_endpoint() -> None:
    """status, planned_date, provider and contracted_mbps: the endpoint's value, else the group's, else the default."""
    by_name = {t.name: t for t in build_targets(parse_config(ROLLOUT, "rollout.yaml"))}
    planned, switched, closed, plain = (by_name[n] for n in ("no-host-yet", "switched-on", "closed", "plain"))
    assert (planned.status, planned.host, planned.address, planned.probed) == ("planned", "", None, False)
    assert planned.planned_date == dt.date(2026, 11, 15) and planned.provider == "KazSat"
    assert planned.contracted_bits_per_second == 10e6 and planned.target_bits_per_second == 4e6
    assert (switched.status, switched.probed, switched.planned_date) == ("connected", True, dt.date(2026, 10, 1))
    assert switched.contracted_bits_per_second == 20e6 and switched.provider == "KazSat"
    assert (closed.status, closed.probed, closed.provider) == ("retired", False, "Kazakhtelecom")
    assert (plain.status, plain.probed, plain.planned_date, plain.provider, plain.contracted_bits_per_second) == (
        "connected", True, None, None, None)


def test_check_command_says_how_many_sites_are_not_probed(tmp_path: Path) -> None:
    """`connmon check` counts the planned and retired sites apart, since nothing will probe them."""
    path = tmp_path / "rollout.yaml"
    path.write_text(ROLLOUT, encoding="utf-8")
    proc = run_check(path)
    assert (proc.returncode, proc.stdout) == (0, f"{path}: OK, 2 groups, 4 endpoints (1 planned and 1 retired: "
                                                 "not probed)\n")


def test_only_a_planned_site_may_leave_out_its_host() -> None:
    """A connected or retired site without host is a located error; the same site planned is valid."""
    text = "groups:\n  - name: g\n    endpoints:\n      - {name: s, status: STATUS}\n"
    assert build_targets(parse_config(text.replace("STATUS", "planned"), "ok.yaml"))[0].host == ""
    for status in ("connected", "retired"):
        with pytest.raises(ConfigError) as caught:
            parse_config(text.replace("STATUS", status), "bad.yaml")
        assert [str(p) for p in caught.value.problems] == [
            "bad.yaml:4:9: groups[0].endpoints[0]: missing required key 'host' (only a site with status: planned "
            "or mode: agent may leave it out)"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("60s", 60.0), ("1h30m", 5400.0), ("6h", 21600.0), ("1.5s", 1.5),
    ("2m30s", 150.0), ("1d", 86400.0), (" 5m ", 300.0), ("1h0m1s", 3601.0),
])
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    """Durations with units, combined largest first, parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("60", "'60' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
    ("5x", "'5x' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
    ("1s1h", "'1s1h': units must go from largest to smallest, each once (e.g. 1h30m)"),
    ("1m1m", "'1m1m': units must go from largest to smallest, each once (e.g. 1h30m)"),
    ("", "'' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
    ("-5s", "'-5s' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
    ("1.s", "'1.s' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
    ("5 s", "'5 s' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h"),
])
def test_parse_duration_refuses(text: str, message: str) -> None:
    """Bare numbers, unknown units, units out of order and empty text are refused with a clear message."""
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


@pytest.mark.parametrize("seconds", [0.25, 1.0, 60.0, 90.0, 5400.0, 21600.0, 86400.0, 1.5])
def test_format_duration_round_trips(seconds: float) -> None:
    """format_duration writes durations that parse_duration reads back to the same value."""
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# ----------------------------------------------------------------------------- error corpus


def test_corpus_is_present() -> None:
    """The bad-config corpus exists and every file states its expected problems."""
    assert len(BAD_CONFIGS) >= 15
    for path in BAD_CONFIGS:
        assert expected_problems(path), f"{path.name} has no '# expect:' lines"


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda p: p.name.removesuffix(".bad.yaml"))
def test_bad_config_reports_exactly_the_expected_problems(path: Path) -> None:
    """Each corpus file yields exactly its expected FILE:LINE:COL: path: message lines, in file order."""
    assert problems_of(path) == expected_problems(path)


def test_several_errors_are_all_reported() -> None:
    """A file with many mistakes reports every one of them, not just the first."""
    path = next(p for p in BAD_CONFIGS if p.name == "several-errors.bad.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert len(problems) >= 10
    assert len({p.line for p in problems}) >= 8, "problems on many different lines"
    assert problems == sorted(problems, key=lambda p: (p.line, p.column)), "in file order"


def test_control_character_is_located() -> None:
    """A control character is reported at its own line and column (libyaml gives a byte offset)."""
    text = "groups:\n  - name: Ақтөбе\n    endpoints: []\n# bad \x01 here\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "f.yaml:4:7: YAML: character U+0001 is not allowed "
        "(control characters and lone surrogates cannot appear in YAML)"]


def test_lone_surrogate_is_a_config_error() -> None:
    """Text with a lone surrogate (possible only through parse_config) is a located ConfigError."""
    with pytest.raises(ConfigError) as caught:
        parse_config("groups:\n  - name: \ud800\n", "f.yaml")
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 11)]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that does not exist is a ConfigError naming the file, not an OSError."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert [str(p) for p in caught.value.problems] == [
        f"{missing}:1:1: cannot read the file: No such file or directory"]


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A file in a legacy encoding (here CP1251 Cyrillic) is a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "cp1251.yaml"
    path.write_bytes("groups:\n  - {name: Шалкар, endpoints: []}\n".encode("cp1251"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.column) == (str(path), 1, 1)
    assert problem.message.startswith("cannot read the file:")


# ----------------------------------------------------------------------------- names


UNICODE_NAMES = r"""groups:
  - name: "Ақтөбе мектептері"
    kind: school
    district: Ақтөбе
    endpoints:
      - {name: "№12 мектеп", host: 192.0.2.12}
      - {name: 'O''Brien "North" clinic', host: 192.0.2.13}
      - {name: "back\\slash and \"quotes\"", host: 192.0.2.14}
      - {name: 'C:\sites\12', host: 192.0.2.15}
      - {name: "tab\there", host: 192.0.2.16}
      - name: Шалқар ФАП
        host: 192.0.2.17
"""


def test_unicode_and_quoted_names_survive_unchanged(tmp_path: Path) -> None:
    """Kazakh/Cyrillic names and names with quotes or backslashes reach Target unchanged."""
    path = tmp_path / "names.yaml"
    path.write_text(UNICODE_NAMES, encoding="utf-8")
    targets = build_targets(load_config(path))
    assert [t.name for t in targets] == [
        "№12 мектеп", "O'Brien \"North\" clinic", 'back\\slash and "quotes"', "C:\\sites\\12",
        "tab\there", "Шалқар ФАП"]
    assert {t.group for t in targets} == {"Ақтөбе мектептері"}
    assert {t.district for t in targets} == {"Ақтөбе"}


def test_unicode_names_are_counted_in_columns_as_characters() -> None:
    """Columns after Cyrillic text count characters, as editors do, not UTF-8 bytes."""
    text = 'groups:\n  - {name: "Ақтөбе", endpoints: [{name: "№12 мектеп", host: 192.0.2.1, hots: 1}]}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "f.yaml:2:72: groups[0].endpoints[0].hots: unknown key 'hots'; did you mean 'host'?"]


def test_duplicate_unicode_names_are_detected() -> None:
    """Uniqueness compares names exactly, Cyrillic included."""
    text = ("groups:\n  - name: g\n    endpoints:\n"
            "      - {name: №12 мектеп, host: 192.0.2.1}\n"
            "      - {name: №12 мектеп, host: 192.0.2.2}\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "f.yaml:5:16: groups[0].endpoints[1].name: duplicate endpoint name '№12 мектеп' (first at line 4)"]


# ----------------------------------------------------------------------------- connmon check


def test_check_command_accepts_the_sample() -> None:
    """`connmon check` on the sample exits 0 and prints one OK line with the counts."""
    proc = run_check(SAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{SAMPLE}: OK, 4 groups, 20 endpoints\n"
    assert proc.stderr == ""


def test_check_command_accepts_the_example() -> None:
    """`connmon check` on the loopback example exits 0."""
    proc = run_check("config/example.yaml")
    assert (proc.returncode, proc.stdout) == (0, "config/example.yaml: OK, 2 groups, 4 endpoints\n")


@pytest.mark.parametrize("name", ["several-errors", "not-a-number", "yaml-syntax", "empty"])
def test_check_command_reports_a_bad_file(name: str) -> None:
    """`connmon check` on a bad file exits 2 and prints exactly the problems on stderr, no traceback."""
    path = next(p for p in BAD_CONFIGS if p.name == f"{name}.bad.yaml")
    proc = run_check(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == expected_problems(path)
    assert "Traceback" not in proc.stdout + proc.stderr


def test_check_command_reports_a_missing_file(tmp_path: Path) -> None:
    """`connmon check` on a missing file exits 2 with one line naming the file and the reason."""
    missing = tmp_path / "no-such-config.yaml"
    proc = run_check(missing)
    assert proc.returncode == 2
    assert proc.stderr == f"{missing}:1:1: cannot read the file: No such file or directory\n"
    assert "Traceback" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- robustness

_REAL_KEYS = ("defaults", "groups", "name", "kind", "district", "link", "lat", "lon", "target_mbps",
              "icmp", "endpoints", "host", "interval", "count", "spacing", "timeout", "payload_bytes",
              "family", "status", "planned_date", "provider", "contracted_mbps")
_YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_config_or_located_error(text: str) -> None:
    """parse_config returns a Config or raises a ConfigError whose problems are all located in the text."""
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        assert err.problems, "a ConfigError must carry at least one problem"
        last_line = len(_YAML_LINE_BREAK.findall(text)) + 1
        for problem in err.problems:
            assert problem.file == "fuzz.yaml", problem
            assert 1 <= problem.line <= last_line, problem
            assert problem.column >= 1, problem
            assert problem.message, problem
    else:
        assert isinstance(config, Config)
        build_targets(config)


_scalars = (st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats()
            | st.text(max_size=12)
            | st.sampled_from(["250ms", "60s", "1h30m", "5x", "60", "0x_", "192.0.2.1", "2001:db8::1",
                               "10.1.2.300", "bad host!", "site.example.net", "any", "ipv4", "ipv7",
                               "№12 мектеп", "", " "]))
_keys = st.sampled_from(_REAL_KEYS) | st.text(max_size=8) | st.integers(0, 3) | st.booleans()
_values = st.recursive(_scalars, lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(_keys, children, max_size=5), max_leaves=20)
_mappings = st.dictionaries(_keys, _values, max_size=6)
_groups = st.tuples(_mappings, st.lists(_mappings, max_size=4)).map(
    lambda pair: {**pair[0], "endpoints": pair[1]})
_documents = _values | st.fixed_dictionaries(
    {"groups": st.lists(_groups, max_size=3)}, optional={"defaults": _mappings})


@_FUZZ
@given(_documents)
def test_generated_documents_give_a_config_or_located_errors(document: object) -> None:
    """Arbitrary YAML documents shaped roughly like configs give a Config or located ConfigError, never a crash."""
    assert_config_or_located_error(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


_SAMPLE_TEXT = SAMPLE.read_text(encoding="utf-8")
_BASE_TEXTS = (
    _SAMPLE_TEXT,
    "\n".join(line for line in _SAMPLE_TEXT.splitlines() if not line.lstrip().startswith("#")),
    EXAMPLE.read_text(encoding="utf-8"),
)
_edit_chars = st.sampled_from(list(":-[]{}&*!|>#'\"\n\t ,%@`?~.0123456789") + ["\r", "\x85", "  ", "- "]) \
    | st.characters()
_edits = st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from(("delete", "replace", "insert")),
                            _edit_chars), min_size=1, max_size=8)


@_FUZZ
@given(st.sampled_from(_BASE_TEXTS), _edits)
def test_mutated_valid_configs_give_a_config_or_located_errors(
        base: str, edits: list[tuple[int, str, str]]) -> None:
    """Valid configs with random characters deleted, replaced or inserted never crash the loader."""
    text = base
    for position, action, char in edits:
        at = position % (len(text) + 1)
        if action == "delete":
            text = text[:at] + text[at + 1:]
        elif action == "replace":
            text = text[:at] + char + text[at + 1:]
        else:
            text = text[:at] + char + text[at:]
    assert_config_or_located_error(text)


_SLOTS = {  # scalar slot in the template below: a valid value for it
    "defaults_mbps": "4", "interval": "60s", "count": "5", "spacing": "200ms", "timeout": "2s",
    "payload": "56", "family": "any", "group": "schools", "group_mbps": "10", "name": "site-1",
    "host": "192.0.2.1", "lat": "50.28", "lon": "57.17", "mbps": "2",
}
_TEMPLATE = """\
defaults:
  target_mbps: {defaults_mbps}
  icmp:
    interval: {interval}
    count: {count}
    spacing: {spacing}
    timeout: {timeout}
    payload_bytes: {payload}
    family: {family}
groups:
  - name: {group}
    target_mbps: {group_mbps}
    endpoints:
      - name: {name}
        host: {host}
        lat: {lat}
        lon: {lon}
        target_mbps: {mbps}
"""
_raw_scalars = st.lists(st.sampled_from([
    "0", "1", "9", "12", "0x", "0b", "0o", "_", ":", ".", "e", "E", "+", "-", "inf", ".inf", ".nan",
    "!!int ", "!!float ", "!!str ", "!!bool ", "!!null ", "!!binary ", "!!timestamp ", "ms", "s", "m",
    "h", "d", "'", '"', " ", "~", "yes", "№", "::", "192.0.2.", "2001:db8::", "[", "]", "{", "}", ",",
    "&a ", "*a", "#", "\\", "\t"]), max_size=6).map("".join)


@_FUZZ
@given(st.fixed_dictionaries({slot: st.just(valid) | _raw_scalars for slot, valid in _SLOTS.items()}))
def test_raw_scalars_in_every_slot_give_a_config_or_located_errors(values: dict[str, str]) -> None:
    """Odd scalar text (hex and binary prefixes, explicit tags, quotes) in any value never crashes the loader."""
    assert_config_or_located_error(_TEMPLATE.format(**values))


def test_number_tagged_text_is_a_problem_not_a_crash() -> None:
    """Number-tagged scalars Python cannot convert are problems, not ValueErrors."""
    for value in ("0x_", "0b_", "!!int ten", "!!int ''", "!!float north", "!!int 1.5", "!!int '1:'"):
        text = f"groups:\n  - name: g\n    endpoints:\n      - {{name: e, host: 192.0.2.1, icmp: {{count: {value}}}}}\n"
        with pytest.raises(ConfigError) as caught:
            parse_config(text, "fuzz.yaml")
        assert [(p.path, p.line) for p in caught.value.problems] == [
            ("groups[0].endpoints[0].icmp.count", 4)], value


LAUGHS = """\
lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]
lol1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]
lol2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]
lol3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]
lol4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]
lol5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]
lol6: &l6 [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]
lol7: &l7 [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6]
lol8: &l8 [*l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7]
"""


@pytest.mark.parametrize("use", [
    "groups: *l8\n",
    "groups:\n  - {name: g, endpoints: *l8}\n",
    "groups:\n  - {name: g, endpoints: [{name: e, host: *l8, icmp: *l8}]}\n",
    "defaults: {icmp: {count: *l8}}\ngroups: *l8\n",
])
def test_billion_laughs_is_rejected_quickly(use: str) -> None:
    """A classic nested-alias bomb (9^9 expansions) is a located ConfigError, not a hang."""
    with pytest.raises(ConfigError) as caught:
        parse_config(LAUGHS + use, "bomb.yaml")
    assert all(p.file == "bomb.yaml" and p.line >= 1 for p in caught.value.problems)
    assert len(caught.value.problems) < 100


def test_alias_bomb_through_the_schema_hits_a_budget_proportional_to_the_text() -> None:
    """Aliased groups of aliased endpoints (1000 × 1000 from ~12 KB) stop at a visit budget of 8 per character."""
    n = 1000
    text = ("groups:\n  - &g {name: g, endpoints: [&e {name: e, host: 192.0.2.1}"
            + ", *e" * (n - 1) + "]}\n" + "  - *g\n" * (n - 1))
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bomb.yaml")
    budget = 10_000 + 8 * len(text)
    assert [str(p) for p in caught.value.problems] == [
        f"bomb.yaml:1:1: the document expands to more than {budget:,} nodes "
        "(too large, or aliases that multiply); refusing to read it"]


def test_a_large_honest_config_stays_within_the_budget() -> None:
    """10,000 endpoints written out in full, and aliases used for shared settings, load without hitting it."""
    rows = "".join(f"      - {{name: s{i}, host: 192.0.2.{i % 250 + 1}, icmp: *fast}}\n" for i in range(10_000))
    text = "defaults: {icmp: &fast {count: 3}}\ngroups:\n  - name: g\n    endpoints:\n" + rows
    config = parse_config(text, "big.yaml")
    assert len(config.groups[0].endpoints) == 10_000


def test_scoped_ipv6_and_a_family_that_contradicts_the_address_are_refused() -> None:
    """fe80::1%eth0 cannot be matched to its replies, and family: ipv6 on an IPv4 address is a typo."""
    text = (
        "groups:\n"
        "  - name: g\n"
        "    endpoints:\n"
        "      - {name: a, host: 'fe80::1%eth0'}\n"
        "      - {name: b, host: 192.0.2.1, icmp: {family: ipv6}}\n"
        "      - {name: c, host: '2001:db8::1', icmp: {family: ipv6}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "f.yaml:4:25: groups[0].endpoints[0].host: 'fe80::1%eth0': scoped (link-local) IPv6 addresses are "
        "not supported; use a global or unique-local address",
        "f.yaml:5:9: groups[0].endpoints[1].host: '192.0.2.1' is an IPv4 address but icmp.family is ipv6",
    ]
