"""The leg runner speaks sd_notify and stops between steps."""

from __future__ import annotations

import os
import socket
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
