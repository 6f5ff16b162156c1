"""Doorbells: a ring wakes the next leg's idle pause; a lost ring costs a pause."""

from __future__ import annotations

import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from appliance import daemon, doorbell


def _pair(directory: Path) -> tuple[doorbell.Doorbell, doorbell.Doorbell]:
    upstream = doorbell.Doorbell(directory, "transformer", ("enricher",))
    downstream = doorbell.Doorbell(directory, "enricher", ("shipper",))
    upstream.open()
    downstream.open()
    return upstream, downstream


def test_a_ring_ends_the_wait_at_once(tmp_path: Path) -> None:
    upstream, downstream = _pair(tmp_path)
    try:
        assert downstream.wait(0.01) is False  # nobody rang: the full pause
        for _ in range(5):  # several rings while the leg worked: one wake-up
            upstream.ring()
        started = time.monotonic()
        assert downstream.wait(5.0) is True
        assert time.monotonic() - started < 1.0
        assert downstream.wait(0.01) is False  # all drained
        # The socket is the legs' user's only, in a 0700 directory.
        wake = tmp_path / "wake"
        assert stat.S_IMODE(wake.stat().st_mode) == 0o700
        assert stat.S_ISSOCK((wake / "enricher").stat().st_mode)
    finally:
        upstream.close()
        downstream.close()


def test_ringing_a_leg_that_is_not_there_is_harmless(tmp_path: Path) -> None:
    upstream = doorbell.Doorbell(tmp_path, "transformer", ("enricher",))
    upstream.open()
    try:
        upstream.ring()  # no socket at all
        gone = doorbell.Doorbell(tmp_path, "enricher")
        gone.open()
        gone.close()  # the file stays, nobody reads it
        upstream.ring()
    finally:
        upstream.close()


def test_a_restarted_leg_replaces_the_socket_a_dead_one_left(tmp_path: Path) -> None:
    upstream, first = _pair(tmp_path)
    first.close()
    second = doorbell.Doorbell(tmp_path, "enricher")
    second.open()
    try:
        upstream.ring()
        assert second.wait(5.0) is True
    finally:
        upstream.close()
        second.close()


def test_a_path_too_long_for_a_socket_uses_an_abstract_name(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    upstream, downstream = _pair(deep)
    try:
        assert downstream.own.startswith("\0appliance-wake-")
        assert downstream.own != doorbell.address(tmp_path, "enricher")
        upstream.ring()
        assert downstream.wait(5.0) is True
    finally:
        upstream.close()
        downstream.close()


class _IdleLeg:
    """Idle at every step; counts steps; rings nobody."""

    name = "enricher"
    idle_first_s = 0.005

    def __init__(self, directory: Path) -> None:
        self.doorbell = doorbell.Doorbell(directory, "enricher")
        self.steps = 0

    def setup(self) -> None:
        pass

    def step(self) -> bool:
        self.steps += 1
        return False

    def close(self) -> None:
        pass

    def status(self) -> str:
        return f"steps={self.steps}"


def test_the_runner_looks_again_when_rung_and_stops_promptly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leg idle for long (pauses of idle_s) steps again right after a ring."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    leg = _IdleLeg(tmp_path)
    stopper = daemon.Stopper()
    runner = threading.Thread(
        target=daemon.run, args=(leg,), kwargs={"idle_s": 30.0, "stopper": stopper}
    )
    runner.start()
    upstream = doorbell.Doorbell(tmp_path, "transformer", ("enricher",))
    upstream.open()
    try:
        deadline = time.monotonic() + 10
        while leg.steps < 10 and time.monotonic() < deadline:
            time.sleep(0.05)  # the pause grows towards 30 s
        time.sleep(0.5)
        before = leg.steps
        upstream.ring()
        deadline = time.monotonic() + 5
        while leg.steps == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leg.steps > before  # woken long before the 30 s pause ended
        # A stop request (the signal handler's work) ends the wait too.
        started = time.monotonic()
        stopper._handle(signal.SIGTERM, None)
        runner.join(5)
        assert not runner.is_alive()
        assert time.monotonic() - started < 2.0
    finally:
        upstream.close()
        if runner.is_alive():
            stopper.event.set()
            leg.doorbell.interrupt()
            runner.join(5)


def test_a_leg_whose_doorbell_cannot_bind_still_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling only: the runner's own pause, never a spin (a busy IBM i)."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    (tmp_path / "wake" / "enricher").mkdir(parents=True)  # bind fails
    leg = _IdleLeg(tmp_path)
    stopper = daemon.Stopper()
    runner = threading.Thread(
        target=daemon.run, args=(leg,), kwargs={"idle_s": 0.2, "stopper": stopper}
    )
    runner.start()
    time.sleep(1.0)
    stopper.event.set()
    runner.join(5)
    assert not runner.is_alive()
    assert leg.doorbell.bound is False
    # 5, 10, 20, 40, 80, 160, 200 ms... : about ten steps in a second.
    assert 3 <= leg.steps <= 20
