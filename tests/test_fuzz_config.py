"""More hypothesis fuzz of the loaders (issue 7), beside the general one in test_config.py: duplicated and
misspelled keys anywhere, alias bombs of any shape, and the web config. Work is bounded structurally (the
walker's node visits are counted), never by a clock: ``deadline=None``."""

from __future__ import annotations

import re
from unittest import mock

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from monitor.config import parse_config
from monitor.config.walker import Walker
from monitor.errors import ConfigError
from monitor.web.config import parse_web_config

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

VALID = """\
defaults:
  target_mbps: 4
  icmp:
    interval: 60s
    count: 5
    spacing: 200ms
    timeout: 2s
    payload_bytes: 56
    family: any
groups:
  - name: schools
    kind: school
    district: Aktobe
    link: fibre
    target_mbps: 10
    icmp:
      count: 3
    endpoints:
      - name: site-1
        host: 192.0.2.1
        district: Shalkar
        link: dsl
        lat: 50.28
        lon: 57.17
        target_mbps: 2
        icmp:
          timeout: 1s
      - name: site-2
        host: site.example.net
"""
LINES = VALID.splitlines(keepends=True)
KEY_LINES = [i for i, line in enumerate(LINES) if re.match(r"^\s*[a-z_]+:", line)]  # not "- name:" items


def problems(text: str) -> list[tuple[int, str]]:
    with_error = None
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        with_error = err
    assert with_error is not None, "expected a ConfigError"
    return [(p.line, p.message) for p in with_error.problems]


def test_the_base_config_is_valid() -> None:
    """The text the properties below mutate is itself valid."""
    parse_config(VALID, "fuzz.yaml")


@FUZZ
@given(st.sampled_from(KEY_LINES))
def test_any_duplicated_key_is_reported_on_its_second_line(index: int) -> None:
    """Repeating any key line of a valid config gives a duplicate-key problem located at the repeat."""
    text = "".join(LINES[:index + 1] + [LINES[index]] + LINES[index + 1:])
    found = problems(text)
    assert any(line == index + 2 and message.startswith("duplicate key (first given at line")
               for line, message in found), found


@FUZZ
@given(st.sampled_from(KEY_LINES), st.integers(0, 30), st.sampled_from(["delete", "double", "swap", "upper"]))
def test_any_misspelled_key_is_reported_on_its_line(index: int, at: int, how: str) -> None:
    """A key with one typo is an unknown-key problem on its own line, with a suggestion when one is close."""
    line = LINES[index]
    indent = len(line) - len(line.lstrip())
    key, rest = line.strip().split(":", 1)
    i = at % len(key)
    typo = {"delete": key[:i] + key[i + 1:], "double": key[:i] + key[i] + key[i:],
            "swap": key[:i] + key[i + 1:i + 2] + key[i] + key[i + 2:],
            "upper": key[:i] + key[i].upper() + key[i + 1:]}[how]
    assume(typo and typo != key and re.fullmatch(r"[A-Za-z_]+", typo))
    assume(list(yaml.safe_load(f"{typo}: 1")) == [typo])  # not "on", "no", "y": YAML reads those as booleans
    text = "".join(LINES[:index] + [" " * indent + typo + ":" + rest + "\n"] + LINES[index + 1:])
    found = problems(text)
    unknown = [message for at_line, message in found if at_line == index + 1 and message.startswith("unknown key")]
    assert unknown and f"unknown key '{typo}'" in unknown[0], found
    if len(key) > 4:  # one edit in a long key is always close enough for difflib to suggest it
        assert f"did you mean '{key}'?" in unknown[0], unknown


SLOTS = {
    "groups": "groups: *b\n",
    "endpoints": "groups:\n  - {name: g, endpoints: *b}\n",
    "host": "groups:\n  - {name: g, endpoints: [{name: e, host: *b}]}\n",
    "icmp": "defaults: {icmp: *b}\ngroups:\n  - {name: g, endpoints: [{name: e, host: 192.0.2.1}]}\n",
    "name-list": "groups:\n  - {name: g, endpoints: [{name: e, host: 192.0.2.1}, *b, *b]}\n",
}


def bomb(width: int, depth: int, leaf: str) -> str:
    """Aliases that multiply: level k is a list of ``width`` references to level k-1."""
    lines = [f"a0: &a0 [{', '.join([leaf] * width)}]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]" for k in range(1, depth)]
    return "\n".join(lines) + f"\nb: &b *a{depth - 1}\n"


@FUZZ
@given(st.integers(2, 12), st.integers(1, 12), st.sampled_from(sorted(SLOTS)),
       st.sampled_from(["x", "{name: e, host: 192.0.2.1}", "{count: 1}", "[]"]))
def test_alias_bombs_of_any_shape_stop_within_the_visit_budget(width: int, depth: int, slot: str, leaf: str) -> None:
    """Whatever their width, depth and place, aliases end in a located ConfigError (or a config, if small and
    well-formed), and the walk never visits more nodes than the budget the text's size allows."""
    text = bomb(width, depth, leaf) + SLOTS[slot]
    visits = 0
    original = Walker.visit

    def counting(self: Walker) -> None:
        nonlocal visits
        visits += 1
        original(self)

    with mock.patch.object(Walker, "visit", counting):
        try:
            parse_config(text, "bomb.yaml")
        except ConfigError as err:
            assert all(p.file == "bomb.yaml" and p.line >= 1 and p.column >= 1 for p in err.problems)
            assert len(err.problems) <= 10_000 + 8 * len(text)
    budget = 10_000 + 8 * len(text)
    assert visits <= budget + 1  # +1: the visit that finds the budget spent


_web_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.sampled_from(
    ["TLS12", "TLS13", "RequireAndVerifyClientCert", "NoClientCert", "$2y$10$" + "a" * 53, "cert.pem", "/nonexistent"])
_web_keys = st.sampled_from(["tls_server_config", "basic_auth_users", "cert_file", "key_file", "client_ca_file",
                             "client_auth_type", "min_version", "max_version", "cipher_suites", "http_server_config",
                             "alice"]) | st.text(max_size=6)
_web_docs = st.recursive(_web_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(_web_keys, c, max_size=5),
                         max_leaves=15)


@FUZZ
@given(_web_docs)
def test_generated_web_configs_give_a_config_or_located_errors(document: object) -> None:
    """Arbitrary YAML at the web-config loader: a WebConfig or a ConfigError whose problems are located."""
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        parse_web_config(text, "/nonexistent-dir/web.yml")
    except ConfigError as err:
        assert err.problems
        last_line = text.count("\n") + 1
        assert all(p.file == "/nonexistent-dir/web.yml" and 1 <= p.line <= last_line and p.column >= 1
                   for p in err.problems), err
