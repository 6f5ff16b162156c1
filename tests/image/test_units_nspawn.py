"""The legs' units under a real systemd (PID 1 of an nspawn boot of the tree).

The container has no network (``--private-network``), so the IBM i and Kafka
are unreachable. The miner and the shipper still reach READY (they retry the
IBM i and Kafka in their steps), the transformer and the enricher run for real
(SQLite, the JVM and the scripts of the image's settings).
Secrets are stored the way a technician stores them on a NUC, with
appliance-set-secret (systemd-creds, host key).
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from image_support import Container, wait_for

LEGS = ["miner", "transformer", "enricher", "shipper"]
READY_LEGS = LEGS  # even without an IBM i and a Kafka
SECRETS = {"ibmi-password": "ibmi-test-Secret-1", "kafka-password": "kafka-test-2"}


def _unit(leg: str) -> str:
    return f"appliance-{leg}.service"


def _running(box: Container, unit: str) -> bool:
    state = box.show(unit, "ActiveState", "SubState")
    return (state["ActiveState"], state["SubState"]) == ("active", "running")


@pytest.fixture(scope="module")
def relay(container: Container) -> Container:
    """The booted box with its secrets stored and the target (re)started."""
    for name, value in SECRETS.items():
        container.run("appliance-set-secret", name, stdin=value)
    container.run("systemctl", "reset-failed")
    container.run("systemctl", "--no-block", "restart", "appliance.target")
    for leg in READY_LEGS:
        wait_for(f"{leg} running", lambda leg=leg: _running(container, _unit(leg)), 120)
    return container


def _pid(box: Container, leg: str) -> str:
    return box.show(_unit(leg), "MainPID")["MainPID"]


def _as_leg(box: Container, leg: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the leg's mount namespace, as the leg's user."""
    return box.run(
        "nsenter", "-t", _pid(box, leg), "-m",
        "setpriv", "--reuid=appliance", "--regid=appliance", "--clear-groups",
        *argv, check=False,
    )  # fmt: skip


def test_the_shipper_without_kafka_is_ready_and_retries(relay: Container) -> None:
    unit = _unit("shipper")
    wait_for("a retry", lambda: "will retry" in relay.journal(unit), 90)
    journal = relay.journal(unit)
    assert "kafka metadata" in journal
    assert "Traceback" not in journal
    assert relay.show(unit, "NRestarts")["NRestarts"] == "0"


def test_units_verify_clean_against_the_built_tree(container: Container) -> None:
    units = [f"/etc/systemd/system/{_unit(leg)}" for leg in LEGS]
    units.append("/etc/systemd/system/appliance.target")
    units.append("/etc/systemd/system/appliance-firstboot.service")
    out = container.run("systemd-analyze", "verify", *units, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "appliance" not in out.stderr, out.stderr


def test_first_boot_made_the_identity(container: Container) -> None:
    machine_id = container.run("cat", "/etc/machine-id").stdout.strip()
    assert len(machine_id) == 32
    assert machine_id != "uninitialized"
    keys = container.run("sh", "-c", "ls /etc/ssh/ssh_host_*_key").stdout.split()
    assert "/etc/ssh/ssh_host_ed25519_key" in keys
    secret = container.run("stat", "-c", "%a %U", "/var/lib/systemd/credential.secret")
    assert secret.stdout.split() == ["400", "root"]


def test_every_leg_sends_ready_and_a_status(relay: Container) -> None:
    for leg in READY_LEGS:
        props = relay.show(_unit(leg), "ActiveState", "StatusText", "User", "Type")
        assert props["ActiveState"] == "active", leg
        assert props["Type"] == "notify"
        assert props["StatusText"], f"{leg} sent no STATUS="
        assert props["User"] == "appliance"
    assert (
        "libjvm.so" in relay.run("cat", f"/proc/{_pid(relay, 'enricher')}/maps").stdout
    )
    target = relay.show("appliance.target", "ActiveState")
    assert target["ActiveState"] == "active"


def test_every_leg_runs_as_the_unprivileged_user(relay: Container) -> None:
    for leg in READY_LEGS:
        pid = relay.show(_unit(leg), "MainPID")["MainPID"]
        status = relay.run("cat", f"/proc/{pid}/status").stdout
        uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
        effective = relay.run("id", "-u", "appliance").stdout.strip()
        assert uid.split()[1:3] == [effective, effective], leg
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        assert caps.split()[1] == "0000000000000000", leg


def test_a_leg_that_stops_pinging_is_killed_and_restarted(relay: Container) -> None:
    unit = _unit("enricher")
    dropin = f"/run/systemd/system/{unit}.d"
    relay.run("mkdir", "-p", dropin)
    relay.run("sh", "-c", f"printf '[Service]\\nWatchdogSec=3\\n' > {dropin}/test.conf")
    try:
        relay.run("systemctl", "daemon-reload")
        relay.run("systemctl", "restart", unit)
        wait_for("enricher running", lambda: _running(relay, unit), 90)
        before = relay.show(unit, "MainPID", "NRestarts")
        relay.run("kill", "-STOP", before["MainPID"])  # alive, but no more pings
        wait_for(
            "watchdog restart",
            lambda: relay.show(unit, "NRestarts")["NRestarts"] != before["NRestarts"],
            60,
        )
        assert "Watchdog timeout" in relay.journal(unit)
        assert "Failed with result 'watchdog'" in relay.journal(unit)
        wait_for("enricher running again", lambda: _running(relay, unit), 90)
        assert relay.show(unit, "MainPID")["MainPID"] != before["MainPID"]
    finally:
        relay.run("rm", "-rf", dropin)
        relay.run("systemctl", "daemon-reload")


def test_a_leg_killed_with_sigkill_comes_back(relay: Container) -> None:
    unit = _unit("miner")
    before = relay.show(unit, "MainPID", "NRestarts")
    relay.run("kill", f"-{signal.SIGKILL.value}", before["MainPID"])
    wait_for(
        "miner restarted",
        lambda: relay.show(unit, "NRestarts")["NRestarts"] != before["NRestarts"],
        60,
    )
    wait_for("miner running again", lambda: _running(relay, unit), 90)
    assert relay.show(unit, "MainPID")["MainPID"] != before["MainPID"]
    assert "Failed with result 'signal'" in relay.journal(unit)
    # The shared pipeline database survived the kill intact (WAL, FULL sync).
    check = (
        "import sqlite3; c = sqlite3.connect('/var/lib/appliance/pipeline.db');"
        "print(c.execute('PRAGMA integrity_check').fetchone()[0])"
    )
    out = relay.run("/opt/appliance/venv/bin/python", "-c", check)
    assert out.stdout.strip() == "ok"


def test_the_leg_reads_its_credential_and_no_other_user_can(relay: Container) -> None:
    path = "/run/credentials/appliance-miner.service/ibmi-password"
    # What the leg's process sees, inside its own namespaces and user.
    seen = _as_leg(relay, "miner", "cat", path)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout == SECRETS["ibmi-password"]
    # Any other account of the box: refused.
    for user, group in [("nobody", "nogroup"), ("systemd-network", "systemd-network")]:
        refused = relay.run("setpriv", f"--reuid={user}", f"--regid={group}",
                            "--clear-groups", "cat", path, check=False)  # fmt: skip
        assert refused.returncode != 0, user
        assert "Permission denied" in refused.stderr
    # At rest the secret is encrypted: the plain value is nowhere in the file.
    stored = relay.run("cat", "/etc/credstore.encrypted/ibmi-password").stdout
    assert SECRETS["ibmi-password"] not in stored
    mode = relay.run("stat", "-c", "%a %U", "/etc/credstore.encrypted").stdout
    assert mode.split() == ["700", "root"]


def test_a_leg_without_the_credential_cannot_see_another_legs(
    relay: Container,
) -> None:
    # Same user as the miner, but its own view of /run/credentials is empty.
    for leg in ["enricher", "transformer"]:
        peek = _as_leg(
            relay, leg, "cat", "/run/credentials/appliance-miner.service/ibmi-password"
        )
        assert peek.returncode != 0, leg
        assert SECRETS["ibmi-password"] not in peek.stdout
    listing = _as_leg(relay, "transformer", "ls", "/run/credentials")
    assert listing.stdout.split() == ["appliance-transformer.service"]
