"""``include:``: the site config split over district files (issue 22), loaded, checked and followed at reload.

The daemon test runs ``connmon run --config.watch`` in a lab's prober namespace with loopback sites, so
every probe stays on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.targets import build_targets
from tests.netlab import Lab
from tests.running import endpoints, running_daemon, scrape_when, value

REPO = Path(__file__).resolve().parent.parent
DISTRICTS = ("Aktobe", "Khromtau", "Shalkar", "Mugalzhar", "Temir")
HEAD = """\
defaults:
  target_mbps: 20
  icmp: {interval: 30s, count: 3}
"""


def district_groups(district: str, index: int) -> str:
    """Two groups of one district (schools with a Cyrillic name and quotes, clinics), as YAML under `groups:`."""
    schools = "".join(f'      - {{name: "Школа №{n} «{district}»", host: 192.0.2.{10 * index + n}, '
                      f"lat: 50.{n}, lon: 57.{index}}}\n" for n in range(1, 4))
    return (f"  - name: {district.lower()}-schools\n    kind: school\n    district: {district}\n    link: fibre\n"
            f"    endpoints:\n{schools}"
            f"  - name: {district.lower()}-clinics\n    kind: clinic\n    district: {district}\n    link: lte\n"
            f"    target_mbps: 10\n    endpoints:\n"
            f"      - {{name: clinic-{district.lower()}, host: clinic.{district.lower()}.example.org}}\n")


def single_file(tmp: Path) -> Path:
    path = tmp / "single.yaml"
    path.write_text(HEAD + "groups:\n" + "".join(district_groups(d, i) for i, d in enumerate(DISTRICTS)),
                    encoding="utf-8")
    return path


def split_files(tmp: Path, main_text: str = HEAD + "include: sites.d/*.yaml\n") -> Path:
    """The same config over a main file and five district files (numbered so the glob's order is the single's)."""
    (tmp / "sites.d").mkdir(exist_ok=True)
    for i, district in enumerate(DISTRICTS):
        (tmp / "sites.d" / f"{i}-{district.lower()}.yaml").write_text(
            "groups:\n" + district_groups(district, i), encoding="utf-8")
    path = tmp / "connmon.yaml"
    path.write_text(main_text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=60, check=False)


# ----------------------------------------------------------------------------- loading


def test_five_district_files_give_exactly_the_single_files_targets(tmp_path: Path) -> None:
    """A config split over five district files builds the same targets, in the same order, as the single file."""
    single = build_targets(load_config(single_file(tmp_path)))
    split_config = load_config(split_files(tmp_path))
    assert len(single) == 20
    assert build_targets(split_config) == single
    assert [Path(s.path).name for s in split_config.sources] == [
        "connmon.yaml", *(f"{i}-{d.lower()}.yaml" for i, d in enumerate(DISTRICTS))]
    assert {Path(g.location.file).name for g in split_config.groups} == {
        f"{i}-{d.lower()}.yaml" for i, d in enumerate(DISTRICTS)}


def test_entries_are_relative_to_the_including_file_in_list_order_and_a_file_is_read_once(tmp_path: Path) -> None:
    """A list of a plain path and a glob: joined to the main file's directory, in the list's order, each file once."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    main = split_files(config_dir, HEAD + "include:\n  - sites.d/4-temir.yaml\n  - sites.d/*.yaml\n")
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    os.chdir(other_dir)  # the working directory plays no part
    config = load_config(main)
    districts = [g.district for g in config.groups]
    assert districts[:2] == ["Temir", "Temir"]
    assert districts[2:] == [d for d in DISTRICTS[:4] for _ in range(2)]


def test_a_glob_beside_the_main_file_does_not_include_the_main_file(tmp_path: Path) -> None:
    """`include: "*.yaml"` in the districts' own directory takes every district file but the main file."""
    split_files(tmp_path)
    main = tmp_path / "sites.d" / "all.yaml"
    main.write_text(HEAD + 'include: "*.yaml"\n', encoding="utf-8")
    config = load_config(main)
    assert len(build_targets(config)) == 20
    assert [Path(s.path).name for s in config.sources] == [
        "all.yaml", *(f"{i}-{d.lower()}.yaml" for i, d in enumerate(DISTRICTS))]


def test_an_error_in_an_included_file_names_that_file_line_and_column(tmp_path: Path) -> None:
    """A typo in one district file is reported at that file's line and column, with the path inside it."""
    main = split_files(tmp_path)
    broken = tmp_path / "sites.d" / "2-shalkar.yaml"
    broken.write_text(broken.read_text(encoding="utf-8").replace("link: lte", "lnk: lte"), encoding="utf-8")
    assert problems(main) == [
        f"{broken}:13:5: groups[1].lnk: unknown key 'lnk'; did you mean 'link'?"]


def test_a_yaml_syntax_error_in_an_included_file_is_located_in_it(tmp_path: Path) -> None:
    """An included file that is not YAML: the syntax error names it, line and column."""
    main = split_files(tmp_path)
    broken = tmp_path / "sites.d" / "1-khromtau.yaml"
    broken.write_text("groups:\n  - name: x\n   endpoints: []\n", encoding="utf-8")
    [problem] = problems(main)
    assert problem.startswith(f"{broken}:3:")
    assert "YAML syntax" in problem


def test_duplicate_names_across_files_name_both_places(tmp_path: Path) -> None:
    """The same site name in two district files, and one district file's group named as in the main file."""
    main = split_files(tmp_path, HEAD + "include: sites.d/*.yaml\ngroups:\n  - name: temir-clinics\n"
                       "    endpoints:\n      - {name: centre, host: 198.51.100.1}\n")
    second = tmp_path / "sites.d" / "1-khromtau.yaml"
    second.write_text(second.read_text(encoding="utf-8").replace("clinic-khromtau", "clinic-aktobe"),
                      encoding="utf-8")
    first, temir = tmp_path / "sites.d" / "0-aktobe.yaml", tmp_path / "sites.d" / "4-temir.yaml"
    assert problems(main) == [
        f"{second}:16:16: groups[1].endpoints[0].name: duplicate endpoint name 'clinic-aktobe' "
        f"(first at {first}:16:16)",
        f"{temir}:10:11: groups[1].name: duplicate group name 'temir-clinics' (first at {main}:6:11)",
    ]


def test_what_an_included_file_may_hold_and_entries_that_find_nothing(tmp_path: Path) -> None:
    """Includes do not nest, an included file holds only groups, and an entry finding no file is an error."""
    main = split_files(tmp_path, HEAD + "include: [sites.d/*.yaml, missing.yaml, 'gone.d/*.yaml']\n")
    nested = tmp_path / "sites.d" / "3-mugalzhar.yaml"
    nested.write_text(nested.read_text(encoding="utf-8") + "include: more/*.yaml\ndefaults: {target_mbps: 5}\n",
                      encoding="utf-8")
    assert problems(main) == [
        f"{main}:4:27: include[1]: 'missing.yaml': no such file ({tmp_path / 'missing.yaml'})",
        f"{main}:4:41: include[2]: 'gone.d/*.yaml' matches no file (looked for {tmp_path / 'gone.d/*.yaml'})",
        f"{nested}:17:1: include: 'include' belongs in the file given with --config; an included file holds "
        "only 'groups:' (includes do not nest)",
        f"{nested}:18:1: defaults: 'defaults' belongs in the file given with --config; an included file holds "
        "only 'groups:'",
    ]


def test_an_entry_with_a_nul_is_a_located_error_and_the_watcher_digest_survives_it(tmp_path: Path) -> None:
    """`include: "x\\0/*.yaml"` (no file's name can hold NUL; glob would raise) is a problem at the entry:
    `connmon check` exits 2 naming file, line and column, no traceback; the watcher's digest takes it too."""
    from monitor.config.includes import digest_now

    main = split_files(tmp_path, HEAD + 'include: [sites.d/*.yaml, "x\\0/*.yaml", "one\\0.yaml"]\n')
    expected = [f"{main}:4:27: include[1]: holds the character U+0000, which no file's name can",
                f"{main}:4:41: include[2]: holds the character U+0000, which no file's name can"]
    assert problems(main) == expected
    result = run_check(main)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and all(line in result.stderr for line in expected), result.stderr
    main_only = digest_now(str(main), [])
    assert main_only is not None
    assert digest_now(str(main), [str(tmp_path / "x\0/*.yaml"), str(tmp_path / "one\0.yaml")]) == main_only


def test_connmon_check_counts_per_file(tmp_path: Path) -> None:
    """`connmon check` of a split config prints the totals, then each file's groups and endpoints."""
    main = split_files(tmp_path)
    result = run_check(main)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{main}: OK, 10 groups, 20 endpoints",
        f"  {main}: 0 groups, 0 endpoints",
        *(f"  {tmp_path / 'sites.d' / f'{i}-{d.lower()}.yaml'}: 2 groups, 4 endpoints"
          for i, d in enumerate(DISTRICTS)),
    ]


# ----------------------------------------------------------------------------- following the files


def test_watcher_reloads_when_an_included_file_changes_or_a_new_one_appears(tmp_path: Path) -> None:
    """The watcher follows every included file: an edit, a new file in the globbed directory, not a touch."""
    from monitor.reload import ConfigWatcher, Reloader, load

    main = split_files(tmp_path)
    first = load(str(main))
    applied: list[int] = []
    reports: list[bool] = []
    reloader = Reloader(str(main), lambda _c, targets: applied.append(len(targets)), reports.append, first.digest,
                        include_patterns=first.config.include_patterns)
    district = tmp_path / "sites.d" / "2-shalkar.yaml"

    async def scenario() -> None:
        task = asyncio.ensure_future(ConfigWatcher(reloader, 0.02).run())

        async def settle(expected: int) -> None:
            for _ in range(250):  # bounded: 5 s of polls at most
                if reloader.reloads == expected:
                    await asyncio.sleep(0.1)  # a few more polls: no further reload may follow
                    return
                await asyncio.sleep(0.02)

        district.touch()
        await settle(0)
        district.write_text(district.read_text(encoding="utf-8").replace(
            "clinic-shalkar, host: clinic.shalkar.example.org}",
            "clinic-shalkar, host: clinic.shalkar.example.org}\n      - {name: fap-shalkar, host: 192.0.2.99}"),
            encoding="utf-8")
        await settle(1)
        (tmp_path / "sites.d" / "5-new.yaml").write_text(
            "groups:\n  - name: new\n    endpoints:\n      - {name: n1, host: 192.0.2.200}\n", encoding="utf-8")
        await settle(2)
        (tmp_path / "sites.d" / "5-new.yaml").write_text("groups:\n  - name: new\n    endpoints: 5\n",
                                                         encoding="utf-8")
        await settle(3)
        os.utime(tmp_path / "sites.d" / "5-new.yaml", ns=(1, 1))  # a new stat, same broken content
        await settle(3)
        task.cancel()

    asyncio.run(scenario())
    assert reports == [True, True, False]
    assert applied == [21, 22]


def test_editing_one_included_file_reloads_the_running_daemon(lab: Lab, tmp_path: Path) -> None:
    """`connmon run --config.watch` with a split config: an edited district file is reloaded, a broken one is
    refused with its own file named and the sites kept."""
    (tmp_path / "sites.d").mkdir()
    main = tmp_path / "connmon.yaml"
    main.write_text("defaults:\n  icmp: {interval: 1s, count: 2, spacing: 10ms, timeout: 200ms}\n"
                    "include: sites.d/*.yaml\n", encoding="utf-8")
    files = {district: tmp_path / "sites.d" / f"{district.lower()}.yaml" for district in DISTRICTS[:2]}

    def write(district: str, hosts: dict[str, str]) -> None:
        rows = "".join(f"      - {{name: {name}, host: {host}}}\n" for name, host in hosts.items())
        files[district].write_text(f"groups:\n  - name: {district}\n    district: {district}\n    endpoints:\n{rows}",
                                   encoding="utf-8")

    write("Aktobe", {"a1": "127.0.0.2", "a2": "127.0.0.3"})
    write("Khromtau", {"k1": "127.0.0.4"})
    url = f"http://{lab.prober_v4}:19401"
    with running_daemon(lab, main, 19401, "--config.watch", "--config.watch-interval", "200ms") as proc:
        scrape_when(f"{url}/metrics", lambda p: endpoints(p) == {"a1", "a2", "k1"}, proc)
        write("Khromtau", {"k1": "127.0.0.4", "k2": "127.0.0.5"})
        scrape_when(f"{url}/metrics", lambda p: endpoints(p) == {"a1", "a2", "k1", "k2"}
                    and value(p, "connmon_up", endpoint="k2") == 1, proc)
        files["Aktobe"].write_text("groups:\n  - name: Aktobe\n    endpoints:\n      - {name: a1, hots: x}\n",
                                   encoding="utf-8")
        failed = scrape_when(f"{url}/metrics", lambda p: value(p, "connmon_config_last_reload_successful") == 0,
                             proc)
        assert endpoints(failed) == {"a1", "a2", "k1", "k2"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"{files['Aktobe']}:4:20: groups[0].endpoints[0].hots: unknown key 'hots'" in stderr
    assert stderr.count("reloaded") == 1 and "reload failed (file change)" in stderr
