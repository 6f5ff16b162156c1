"""The units in systemd/: exposure scores, data-flow order, watchdog, secrets, env.

The scores come from the real ``systemd-analyze security --offline=true``; the
bounds are those of issue #7 (2.0 for the Python legs, 2.5 for the JVM-backed
enricher, which cannot have MemoryDenyWriteExecute). ``systemd-analyze
verify`` needs the ExecStart binaries, so it runs on the built image tree
(tests/image/).
"""

from __future__ import annotations

import configparser
import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance import devstack, miner

UNITS = Path(__file__).resolve().parent.parent / "systemd"
BOUNDS = {
    "appliance-miner.service": 2.0,
    "appliance-transformer.service": 2.0,
    "appliance-enricher.service": 2.5,
    "appliance-shipper.service": 2.0,
    "appliance-control.service": 2.0,
    "appliance-sink.service": 2.0,
    "appliance-webui.service": 2.0,
}
BOX_LEGS = ["miner", "transformer", "enricher", "shipper"]
# Beside the data flow: the guardian reads the store tables (issue 5).
SIDE_LEGS = ["control"]
ANALYZE = shutil.which("systemd-analyze")


def _unit(name: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


def _exposure(path: Path) -> float:
    out = subprocess.run(
        [ANALYZE or "systemd-analyze", "security", "--offline=true", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, f"no score for {path.name}: {out.stdout[-500:]}{out.stderr}"
    return float(found.group(1))


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_unit_scores_within_its_exposure_bound(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = UNITS / name
    if not path.exists():
        pytest.skip(f"{name} is not in systemd/ (yet)")
    score = _exposure(path)
    with capsys.disabled():
        print(f"\nexposure {name}: {score} (bound {BOUNDS[name]})")
    assert score <= BOUNDS[name]


def test_every_service_in_systemd_has_a_bound() -> None:
    services = {p.name for p in UNITS.glob("*.service")}
    services.discard("appliance-firstboot.service")  # oneshot, root by purpose
    assert services <= set(BOUNDS)


def test_legs_start_in_data_flow_order() -> None:
    for before, after in itertools.pairwise(BOX_LEGS):
        unit = _unit(f"appliance-{after}.service")
        ordering = " ".join(unit.get("After", [])).split()
        assert f"appliance-{before}.service" in ordering, after


def test_the_target_wants_every_box_leg_but_never_the_hub_sink() -> None:
    wanted = " ".join(_unit("appliance.target")["Wants"]).split()
    legs = [*BOX_LEGS, *SIDE_LEGS]
    assert sorted(wanted) == sorted(f"appliance-{leg}.service" for leg in legs)
    for leg in legs:
        unit = _unit(f"appliance-{leg}.service")
        assert unit["PartOf"] == ["appliance.target"]
        assert unit["WantedBy"] == ["appliance.target"]


@pytest.mark.parametrize("leg", ["miner", "control"])
def test_the_odbc_legs_watchdog_outlasts_their_query_timeout(leg: str) -> None:
    watchdog = int(_unit(f"appliance-{leg}.service")["WatchdogSec"][0])
    assert watchdog > miner.QUERY_TIMEOUT_S


def test_the_guardian_starts_after_the_legs_it_waits_for() -> None:
    ordering = " ".join(_unit("appliance-control.service")["After"]).split()
    assert "appliance-transformer.service" in ordering


@pytest.mark.parametrize("leg", [*BOX_LEGS, *SIDE_LEGS, "sink"])
def test_each_leg_is_supervised_with_restart_limits(leg: str) -> None:
    unit = _unit(f"appliance-{leg}.service")
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0]) > 0
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["StartLimitBurst"][0]) >= 1
    assert int(unit["StartLimitIntervalSec"][0]) > 0
    assert unit["User"] == ["appliance"]


@pytest.mark.parametrize(
    ("leg", "credentials"),
    [
        ("miner", {"ibmi-password"}),
        ("transformer", {"ibmi-password"}),
        ("enricher", set()),
        ("shipper", {"kafka-password"}),
        ("control", {"ibmi-password"}),
        ("sink", {"kafka-password", "odh-password"}),
    ],
)
def test_each_leg_gets_only_its_own_encrypted_credentials(
    leg: str, credentials: set[str]
) -> None:
    unit = _unit(f"appliance-{leg}.service")
    assert set(unit.get("LoadCredentialEncrypted", [])) == credentials
    assert "LoadCredential" not in unit  # never a clear-text credential


@pytest.mark.parametrize("leg", ["miner", "transformer", "shipper", "control", "sink"])
def test_python_legs_deny_writable_executable_memory(leg: str) -> None:
    assert _unit(f"appliance-{leg}.service")["MemoryDenyWriteExecute"] == ["yes"]


def test_the_jvm_leg_explains_why_it_keeps_writable_executable_memory() -> None:
    text = (UNITS / "appliance-enricher.service").read_text()
    assert "MemoryDenyWriteExecute=yes" not in text
    assert re.search(r"#.*MemoryDenyWriteExecute is off.*\n#.*JIT", text)


def test_every_network_exception_carries_a_comment() -> None:
    for path in UNITS.glob("appliance-*.service"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("RestrictAddressFamilies=") and "AF_INET" in line:
                assert lines[i - 1].startswith("#"), path.name


def test_sysusers_makes_a_system_user_without_a_login_shell() -> None:
    entries = [
        line.split()
        for line in (UNITS / "appliance.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert entries[0][:3] == ["u", "appliance", "-"]
    assert entries[0][-1] == "/usr/sbin/nologin"


def test_tmpfiles_keep_settings_and_credentials_from_other_users() -> None:
    modes = {
        fields[1]: (fields[2], fields[3], fields[4])
        for line in (UNITS / "appliance.tmpfiles").read_text().splitlines()
        if line and not line.startswith("#")
        for fields in [line.split()]
    }
    assert modes["/etc/appliance"] == ("0750", "root", "appliance")
    assert modes["/etc/credstore.encrypted"] == ("0700", "root", "root")


def test_units_parse_as_ini() -> None:
    for path in UNITS.glob("appliance*.*"):
        if path.suffix in {".service", ".target"}:
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string(path.read_text())
            assert "Unit" in parser, path.name


def test_the_target_does_not_wait_for_its_legs() -> None:
    # A leg stuck restarting must not keep the boot in "starting".
    target = _unit("appliance.target")
    assert target["DefaultDependencies"] == ["no"]
    after = " ".join(target["After"]).split()
    assert not [
        unit
        for unit in after
        if unit.startswith("appliance-") and "firstboot" not in unit
    ]
    assert "shutdown.target" in target["Conflicts"]


def test_no_unit_of_the_shared_user_can_read_another_units_credentials() -> None:
    """Legs and the page share one user: each hides /run/credentials but its own."""
    for path in UNITS.glob("appliance-*.service"):
        unit = _unit(path.name)
        if unit.get("User") != ["appliance"]:
            continue
        assert unit.get("TemporaryFileSystem") == ["/run/credentials:ro"], path.name
        assert unit.get("BindReadOnlyPaths") == ["-/run/credentials/%n"], path.name


def _environment(leg: str) -> dict[str, str]:
    assignments = " ".join(_unit(f"appliance-{leg}.service")["Environment"]).split()
    return dict(a.split("=", 1) for a in assignments)


@pytest.mark.parametrize("leg", [*BOX_LEGS, *SIDE_LEGS, "sink"])
def test_each_leg_runs_with_two_malloc_arenas_as_the_devstack_legs_do(
    leg: str,
) -> None:
    environment = _environment(leg)
    assert environment["MALLOC_ARENA_MAX"] == "2"
    assert devstack.LEG_ENVIRONMENT.items() <= environment.items()


class _Spawned:
    pid = 2**22 + 1  # above pid_max: never a live process

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.args = args
        self.env: dict[str, str] = kwargs["env"]


def test_the_devstack_starts_a_leg_with_the_units_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devstack.subprocess, "Popen", _Spawned)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    services = devstack.Services("127.0.0.1:9", "127.0.0.1", 9, "u", tmp_path / "p")
    stack = devstack.Stack(services, tmp_path)
    spawned = stack.spawn_leg("enricher").process
    assert isinstance(spawned, _Spawned)
    assert spawned.env["MALLOC_ARENA_MAX"] == "2"
    assert "NOTIFY_SOCKET" not in spawned.env
    assert spawned.args[-2:] == ["run", "enricher"]


def test_a_value_the_caller_exports_wins_over_the_legs_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devstack.subprocess, "Popen", _Spawned)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "16")
    services = devstack.Services("127.0.0.1:9", "127.0.0.1", 9, "u", tmp_path / "p")
    spawned = devstack.Stack(services, tmp_path).spawn_leg("sink").process
    assert isinstance(spawned, _Spawned)
    assert spawned.env["MALLOC_ARENA_MAX"] == "16"
