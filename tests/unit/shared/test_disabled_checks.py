"""Test-only switches found in what systemd would hand to a unit, each named with the file
or command that sets it."""

from __future__ import annotations

from pathlib import Path

from mushishi.shared.disabled_checks import (
    CONNECT_CHECK_TEST_ENV,
    DESCRIPTIONS,
    locate,
    switches,
)
from mushishi.shared.systemd import UnitEnvironment
from tests.paths import REPO

NAME = "MUSHISHI_TEST_DISABLE_CONNECT_CHECK"


def read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def test_every_switch_a_daemon_reads_is_described() -> None:
    assert CONNECT_CHECK_TEST_ENV == NAME and NAME in DESCRIPTIONS
    # No daemon spells a switch itself: each reads its name from shared/disabled_checks.py.
    spelled = [str(path.relative_to(REPO)) for path in sorted((REPO / "services").rglob("*.py"))
               if "MUSHISHI_TEST_" in path.read_text(encoding="utf-8")]
    assert spelled == []


def test_only_the_test_prefix_counts_and_the_last_assignment_wins() -> None:
    assert switches(["PATH=/usr/bin", f"{NAME}=0", f"{NAME}=1", "MUSHISHI_TEST_X",
                     "MUSHISHI_CREDENTIAL_A=b"]) == {NAME: "1"}


def test_the_manager_environment_is_named_with_unset_environment() -> None:
    (found,) = locate(["LANG=C.UTF-8", f"{NAME}=1"], {}, read)
    assert (found.unit, found.value) == (None, "1")
    assert found.source.startswith("`systemctl set-environment`")
    assert found.fix.startswith(f"`systemctl unset-environment {NAME}`")
    assert found.what == "turns the router's connect-time sovereignty check off"


def test_a_unit_switch_is_traced_to_the_drop_in_that_sets_it(tmp_path: Path) -> None:
    fragment = tmp_path / "mushishi-router.service"
    fragment.write_text("[Service]\nEnvironment=MUSHISHI_CONFIG=/etc/mushishi/mushishi.toml\n")
    early = tmp_path / "10-early.conf"
    early.write_text(f'[Service]\nEnvironment="{NAME}=0" OTHER=1\n')
    late = tmp_path / "zz-test.conf"
    late.write_text(f"[Service]\nEnvironment={NAME}=1\n")
    reset = tmp_path / "zzz-reset.conf"
    reset.write_text("[Service]\nEnvironment=\n")
    unit = UnitEnvironment("mushishi-router.service", ("MUSHISHI_CONFIG=/etc/x", f"{NAME}=1"),
                           (), str(fragment), (str(early), str(late)))
    (found,) = locate([], {unit.name: unit}, read)
    assert (found.unit, found.source) == ("mushishi-router.service", f"drop-in {late}")
    assert found.fix == ("remove its Environment= line, then `systemctl daemon-reload` and "
                         "`systemctl restart mushishi-router.service`")
    assert found.line().startswith(f"{NAME}=1 (turns the router's connect-time sovereignty "
                                   "check off) in mushishi-router.service, from drop-in ")
    # A later empty Environment= resets it: the files say nothing, systemd's list still does.
    unit = UnitEnvironment(unit.name, unit.environment, (), str(fragment),
                           (str(early), str(late), str(reset)))
    (found,) = locate([], {unit.name: unit}, read)
    assert found.source.startswith("an Environment= line of the unit (")
    unreadable = UnitEnvironment(unit.name, unit.environment, (), str(tmp_path / "gone"), ())
    assert locate([], {unit.name: unreadable}, read)[0].source.startswith(
        "an Environment= line of the unit (")


def test_an_environment_file_is_named_when_it_sets_a_switch(tmp_path: Path) -> None:
    env = tmp_path / "router.env"
    env.write_text(f"# tests\nexport {NAME}='1'\nOTHER=2\n")
    unit = UnitEnvironment("mushishi-router.service", (), (str(env), str(tmp_path / "absent")))
    (found,) = locate([], {unit.name: unit}, read)
    assert (found.value, found.source) == ("1", f"environment file {env}")
