"""The one YAML walker (issue 23): the site, agent and web config are read by it, so they locate problems alike.

Before, each had its own copy: only the site config located a control character, and the agent's host
check had lost the site config's scoped-IPv6 rule. These tests hold the three loaders to one behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.agent.site.config import parse_agent_config
from monitor.config import parse_config
from monitor.config.walker import TooManyNodes, Walker, compose
from monitor.errors import ConfigError
from monitor.web.config import parse_web_config

Parse = Callable[[str, str], object]


def _agent(text: str, source: str) -> object:
    return parse_agent_config(text, source, Path("/nonexistent"))


def _agent_in(base: Path) -> Parse:
    return lambda text, source: parse_agent_config(text, source, base)


LOADERS: dict[str, tuple[Parse, str]] = {
    # loader: (parse, a valid first line, so that the bad character is on line 2)
    "site": (parse_config, "groups: []"),
    "agent": (_agent, "centre: https://connmon.example.net"),
    "web": (parse_web_config, "basic_auth_users: {}"),
}


def problems(parse: Parse, text: str, source: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, source)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("character", ["\x01", "\x7f", "\ud800"], ids=["SOH", "DEL", "lone-surrogate"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_character_yaml_does_not_allow_is_located_in_every_config(loader: str, character: str) -> None:
    """A control character or a lone surrogate is reported at its own file:line:col by all three loaders."""
    parse, first = LOADERS[loader]
    text = f"{first}\n# bad {character} here\n"
    assert problems(parse, text, f"{loader}.yaml") == [
        f"{loader}.yaml:2:7: YAML: character U+{ord(character):04X} is not allowed "
        "(control characters and lone surrogates cannot appear in YAML)"]


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_syntax_errors_are_located_alike(loader: str) -> None:
    """A YAML syntax error is reported at the same place, with the same words, by all three loaders."""
    parse, first = LOADERS[loader]
    text = f"{first}\nkey: [unclosed\n"
    found = problems(parse, text, "f.yaml")
    assert len(found) == 1 and found[0].startswith("f.yaml:3:1: YAML syntax: ")


@pytest.mark.parametrize("host", ["fe80::1%eth0", "fe80::1%2", "not a host", "-bad.example.net"])
def test_agent_and_site_config_hold_a_host_to_the_same_rule(host: str, tmp_path: Path) -> None:
    """A scoped IPv6 host (fe80::1%eth0) or a malformed name is refused with the same words in both configs."""
    site = problems(parse_config, f"groups:\n  - name: g\n    endpoints:\n      - {{name: a, host: '{host}'}}\n",
                    "sites.yaml")
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    token.chmod(0o600)
    agent = problems(_agent_in(tmp_path), f"centre: https://connmon.example.net\nsite: a\ntoken_file: {token}\n"
                     f"icmp: {{host: '{host}'}}\n", "agent.yaml")
    assert len(site) == 1 and site[0].startswith("sites.yaml:4:25: groups[0].endpoints[0].host: '")
    assert agent == [f"agent.yaml:4:14: icmp.host: {site[0].split('.host: ', 1)[1]}"]
    if "%" in host:
        assert "scoped (link-local) IPv6 addresses are not supported" in agent[0]


def test_the_same_hosts_pass_in_both_configs(tmp_path: Path) -> None:
    """An IPv6 literal without a scope and a DNS name are accepted by the agent as by the site config."""
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    token.chmod(0o600)
    for host in ("2001:db8::1", "gw.example.net"):
        parse_config(f"groups:\n  - name: g\n    endpoints:\n      - {{name: a, host: '{host}'}}\n", "sites.yaml")
        config = parse_agent_config(f"centre: https://connmon.example.net\nsite: a\ntoken_file: {token}\n"
                                    f"icmp: {{host: '{host}'}}\n", "agent.yaml", tmp_path)
        assert config.icmp_host == host


def test_an_empty_document_composes_to_nothing_and_visits_are_budgeted() -> None:
    """compose gives None for a document of comments; a walker refuses to visit more nodes than its budget."""
    assert compose("# only a comment\n", "f.yaml") is None
    walker = Walker("f.yaml", max_visits=2)
    walker.visit()
    walker.visit()
    with pytest.raises(TooManyNodes):
        walker.visit()
