"""The leg runner speaks sd_notify and stops between steps."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance import daemon


class CountingLeg:
    name = "counting"

    def __init__(self, stopper: daemon.Stopper | None = None, stop_at: int = 0) -> None:
        self.steps = 0
        self.closed = False
        self.stopper = stopper
        self.stop_at = stop_at

    def setup(self) -> None:
        pass

    def step(self) -> bool:
        self.steps += 1
        if self.stopper is not None and self.steps == self.stop_at:
            self.stopper.event.set()
        return True

    def close(self) -> None:
        self.closed = True

    def status(self) -> str:
        return f"steps={self.steps}"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _datagrams(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096))
    except TimeoutError:
        return out


def test_ready_watchdog_and_stopping_are_sent(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 after setup, WATCHDOG=1 while stepping, STOPPING=1 at the end."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000")  # ping every 1 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    leg = CountingLeg()
    assert daemon.run(leg, max_steps=50, stopper=daemon.Stopper()) == 0
    sent = _datagrams(notify_socket)
    assert sent[0].startswith(b"READY=1\nSTATUS=")
    assert b"WATCHDOG=1" in sent
    assert sent[-1] == b"STOPPING=1"
    assert leg.closed


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_PID of another process means the watchdog is not ours."""
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert daemon.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert daemon.watchdog_interval_s() == 2.0


def test_stop_request_ends_the_loop_between_steps() -> None:
    """A stop (SIGTERM's event) is honoured after the step in progress."""
    stopper = daemon.Stopper()
    leg = CountingLeg(stopper, stop_at=7)
    thread = threading.Thread(
        target=daemon.run, args=(leg,), kwargs={"stopper": stopper}
    )
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert leg.steps == 7
    assert leg.closed


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd nothing is sent and nothing fails."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.notify("READY=1") is False


class DiskFullOnce:
    """A leg whose second step meets a full disk; setup counts reloads."""

    name = "disky"

    def __init__(self) -> None:
        self.setups = 0
        self.closes = 0
        self.steps = 0

    def setup(self) -> None:
        self.setups += 1

    def step(self) -> bool:
        self.steps += 1
        if self.steps == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return True

    def close(self) -> None:
        self.closes += 1

    def status(self) -> str:
        return f"steps={self.steps}"


def test_full_disk_is_waited_out_then_the_leg_starts_afresh(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A full pipeline disk does not end the process: wait, then start afresh.

    The restart (an exec of the same command in production) is recorded
    here; the leg itself is neither closed nor set up while it waits, since
    its connections may be gone with the disk.
    """
    monkeypatch.setattr(daemon, "_DISK_RETRY_FIRST_S", 0.01)
    monkeypatch.delenv("APPLIANCE_DISK_RETRY_S", raising=False)
    probes = iter([OSError(28, "No space left on device"), None])
    monkeypatch.setattr(daemon, "_probe", lambda directory: next(probes))
    restarts: list[float] = []
    leg = DiskFullOnce()
    disk = daemon.DiskWait(tmp_path, restart=restarts.append)
    assert daemon.run(leg, max_steps=5, stopper=daemon.Stopper(), disk=disk) == 0
    assert leg.steps == 2  # the second met the full disk
    assert leg.setups == 1
    assert len(restarts) == 1
    assert restarts[0] == pytest.approx(0.04)  # two waits: 0.01, then 0.02
    assert leg.closes == 1  # only at the end of run()


def test_disk_probe_writes_and_removes_its_file(tmp_path: Path) -> None:
    assert daemon._probe(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert isinstance(daemon._probe(tmp_path / "gone"), OSError)


def test_full_disk_at_set_up_is_waited_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(daemon, "_DISK_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(daemon, "_probe", lambda directory: None)
    restarts: list[float] = []

    class FullAtStart(DiskFullOnce):
        def setup(self) -> None:
            raise sqlite3.OperationalError("database or disk is full")

    leg = FullAtStart()
    disk = daemon.DiskWait(tmp_path, restart=restarts.append)
    assert daemon.run(leg, max_steps=5, stopper=daemon.Stopper(), disk=disk) == 0
    assert leg.steps == 0
    assert len(restarts) == 1


def test_busy_database_retries_the_step() -> None:
    class BusyOnce(DiskFullOnce):
        def step(self) -> bool:
            self.steps += 1
            if self.steps == 2:
                raise sqlite3.OperationalError("database is locked")
            return True

    leg = BusyOnce()
    assert daemon.run(leg, max_steps=4, stopper=daemon.Stopper()) == 0
    assert leg.steps == 4


def test_full_disk_without_a_disk_wait_ends_the_leg() -> None:
    with pytest.raises(sqlite3.OperationalError, match="full"):
        daemon.run(DiskFullOnce(), max_steps=5, stopper=daemon.Stopper())


def test_other_sqlite_errors_still_end_the_leg() -> None:
    """Only outages are waited out; a bug (e.g. a bad statement) surfaces."""

    class Broken(CountingLeg):
        def step(self) -> bool:
            raise sqlite3.OperationalError("no such table: outbox")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        daemon.run(Broken(), max_steps=3, stopper=daemon.Stopper())


class _RecordingEvent:
    """Stands in for the stopper's event: records each pause, never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._set = False

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(round(float(timeout or 0.0), 6))
        return self._set

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class _ScriptedLeg(CountingLeg):
    """Works on the steps listed in ``busy`` (1-based), idle on the others."""

    def __init__(self, busy: set[int], idle_first_s: float | None) -> None:
        super().__init__()
        self.busy = busy
        if idle_first_s is not None:
            self.idle_first_s = idle_first_s

    def step(self) -> bool:
        self.steps += 1
        return self.steps in self.busy


def _pauses(leg: CountingLeg, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    stopper = daemon.Stopper()
    event = _RecordingEvent()
    stopper.event = event  # type: ignore[assignment]
    daemon.run(leg, idle_s=0.1, max_steps=11, stopper=stopper)
    return event.waits


def test_idle_pause_starts_short_after_work_and_doubles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With idle_first_s the pause after work is short, then doubles to idle_s."""
    leg = _ScriptedLeg(busy={1, 2, 9}, idle_first_s=0.005)
    # Steps 3-8 idle (six pauses), 9 works, 10 idle again, 11 is the last.
    assert _pauses(leg, monkeypatch) == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.005]


def test_idle_pause_is_flat_without_idle_first_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leg that does not ask for short pauses (the miner) always waits idle_s."""
    leg = _ScriptedLeg(busy={1, 2, 9}, idle_first_s=None)
    assert _pauses(leg, monkeypatch) == [0.1] * 7


def test_idle_pause_is_capped_by_idle_max_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leg that waits inside its own idle step caps the runner's pause."""
    leg = _ScriptedLeg(busy={1, 2, 9}, idle_first_s=0.005)
    leg.idle_max_s = 0.02  # type: ignore[attr-defined]
    assert _pauses(leg, monkeypatch) == [0.005, 0.01, 0.02, 0.02, 0.02, 0.02, 0.005]


RESTARTING_LEG = """
import os, sqlite3, sys
from pathlib import Path
from appliance import daemon

class Leg:
    name = "restarting"
    def setup(self):
        print("setup", os.getpid(), flush=True)
    def step(self):
        if "APPLIANCE_DISK_RETRY_S" not in os.environ:
            raise sqlite3.OperationalError("database or disk is full")
        print("step", os.getpid(), os.environ["APPLIANCE_DISK_RETRY_S"], flush=True)
        return True
    def close(self):
        print("close", flush=True)
    def status(self):
        return ""

daemon._DISK_RETRY_FIRST_S = 0.01
sys.exit(daemon.run(Leg(), max_steps=1, disk=daemon.DiskWait(Path(sys.argv[1]))))
"""


def test_start_afresh_is_the_same_process_run_again(tmp_path: Path) -> None:
    """The real restart: exec of the same command, same pid, backoff carried."""
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_DISK_RETRY_S"}
    done = subprocess.run(
        [sys.executable, "-c", RESTARTING_LEG, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    lines = done.stdout.split()
    first, second = lines[1], lines[3]
    assert lines[0] == "setup" and lines[2] == "setup"
    assert first == second  # systemd sees no exit: same main pid
    assert lines[4:7] == ["step", first, "0.020"]
    assert lines[7:] == ["close"]  # the first process never closed the leg
