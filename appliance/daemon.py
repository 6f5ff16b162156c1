"""Run one leg as a long-lived process that systemd can supervise.

A leg is an object with ``name``, ``setup()``, ``step() -> bool`` and
``close()``. :func:`run` calls ``setup``, tells systemd READY=1, then calls
``step`` until SIGTERM: a step that did work is followed at once by the next,
an idle step by a pause. Between steps the loop pings the watchdog
(WATCHDOG=1 at half of ``WATCHDOG_USEC``) and writes a heartbeat, so a leg
stuck inside a step stops pinging and systemd restarts it.

Steps must be bounded (a window of entries, a batch of rows): SIGTERM is
honoured between two steps, and ``close`` gets ``stop_timeout_s`` at most.

Idle pauses: a leg whose idle step is cheap (a local SQLite read, no call to
the IBM i) may set ``idle_first_s``; after a step that did work the pause
starts there and doubles at each idle step up to ``idle_s``. Work arriving
just after a busy spell (the usual case at a steady rate: the leg upstream
commits a batch every few milliseconds) then waits milliseconds instead of
``idle_s``, while a leg idle for long still polls only every ``idle_s``.
Worked example with ``idle_first_s = 0.005`` and ``idle_s = 0.2``: after
work, pauses of 5, 10, 20, 40, 80, 160, 200, 200 ms...; a leg without the
attribute (the miner, whose idle step asks the IBM i) always pauses
``idle_s``, unless its idle step waited in the IBM i itself (a waiting
read, ``ibmi.wait_s``) and reported it as work. A leg whose idle step
itself blocks until work arrives (the hub sink waits in Kafka's poll) may
also cap the pause with ``idle_max_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from appliance.doorbell import Doorbell

if TYPE_CHECKING:
    from appliance.commands import Runner

logger = logging.getLogger(__name__)


class Leg(Protocol):
    """What :func:`run` drives."""

    name: str

    def setup(self) -> None: ...

    def step(self) -> bool: ...

    def close(self) -> None: ...

    def status(self) -> str: ...


def notify(message: str) -> bool:
    """Send one sd_notify datagram; False when not run by systemd.

    Uses systemd-python when installed, else the protocol directly: one
    datagram on the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract).
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    try:
        import systemd.daemon
    except ImportError:
        pass
    else:
        return bool(systemd.daemon.notify(message))
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of $WATCHDOG_USEC when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Stopper:
    """Turns SIGTERM/SIGINT into an event the loop checks between steps."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Also call ``callback`` when a stop is requested (wakes a waiter)."""
        self._on_stop.append(callback)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("stop requested signal=%s", signal.Signals(signum).name)
        self.event.set()
        for callback in self._on_stop:
            callback()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()


def run(
    leg: Leg,
    *,
    idle_s: float = 1.0,
    heartbeat: Callable[[str, str], None] | None = None,
    heartbeat_every_s: float = 2.0,
    stopper: Stopper | None = None,
    max_steps: int | None = None,
    commands: Runner | None = None,
    disk: DiskWait | None = None,
) -> int:
    """Drive ``leg`` until stopped; return the process exit code.

    With ``commands``, the leg's pending commands run between two steps; a
    paused leg does not step but keeps pinging and heartbeats ``paused``.
    With ``disk``, a full or failing pipeline disk (at set-up or in a step)
    is waited out in the process (:func:`wait_for_disk`).
    """
    stopper = stopper or Stopper()
    if threading.current_thread() is threading.main_thread():
        stopper.install()
    try:
        leg.setup()
    except sqlite3.OperationalError as exc:
        if disk is None or not is_disk_error(exc):
            raise
        wait_for_disk(
            leg.name,
            disk,
            stopper=stopper,
            ping_every=watchdog_interval_s(),
            heartbeat=None,
            error=exc,
        )
        return 0
    notify(f"READY=1\nSTATUS={leg.status()}")
    logger.info("leg ready stage=%s pid=%s", leg.name, os.getpid())
    ping_every = watchdog_interval_s()
    first_idle = getattr(leg, "idle_first_s", None)
    idle_s = min(idle_s, float(getattr(leg, "idle_max_s", idle_s)))
    idle_now = idle_s
    bell: Doorbell | None = getattr(leg, "doorbell", None)
    if bell is not None:
        bell.open()
        stopper.on_stop(bell.interrupt)
    last_ping = last_beat = 0.0
    steps = 0
    settled = False
    try:
        while not stopper.stopping:
            paused = False
            if commands is not None:
                commands.run_pending()
                paused = commands.paused
            try:
                worked = (
                    False
                    if paused
                    else _step(leg, stopper, ping_every, heartbeat, disk)
                )
            except _StoppedWhileDown:
                break
            if worked and not settled:
                disk_settled()
                settled = True
            steps += 1
            now = time.monotonic()
            if ping_every is not None and now - last_ping >= ping_every:
                notify("WATCHDOG=1")
                last_ping = now
            if now - last_beat >= heartbeat_every_s:
                status = leg.status()
                notify(f"STATUS={status}")
                if heartbeat is not None:
                    heartbeat("paused" if paused else "running", status)
                last_beat = now
            if max_steps is not None and steps >= max_steps:
                break
            if worked:
                if bell is not None:
                    bell.ring()
                if first_idle is not None:
                    idle_now = min(float(first_idle), idle_s)
            elif bell is not None and bell.bound and not stopper.stopping:
                if bell.wait(_idle_wait(idle_now, ping_every)):
                    idle_now = min(float(first_idle or idle_now), idle_s)
                else:
                    idle_now = min(idle_now * 2, idle_s)
            else:
                stopper.event.wait(_idle_wait(idle_now, ping_every))
                idle_now = min(idle_now * 2, idle_s)
    finally:
        notify("STOPPING=1")
        started = time.monotonic()
        if bell is not None:
            bell.close()
        leg.close()
        if heartbeat is not None:
            heartbeat("stopped", leg.status())
        logger.info(
            "leg stopped stage=%s elapsed_s=%.2f",
            leg.name,
            time.monotonic() - started,
        )
    return 0


_DISK_ERRORS = ("database or disk is full", "disk i/o error")
_LOCKED = "database is locked"
_DISK_RETRY_FIRST_S = 1.0
_DISK_RETRY_MAX_S = 30.0
_DISK_ERROR_AFTER_S = 300.0
_DISK_PROBE_BYTES = 8 << 20
# Carried across the re-exec, so a disk that keeps filling up is not probed
# every second by a leg that restarts in place each time.
_RETRY_ENV = "APPLIANCE_DISK_RETRY_S"


@dataclass
class DiskWait:
    """How a leg waits out its pipeline disk.

    ``directory`` is the filesystem of the pipeline database; ``restart``
    replaces the process by a fresh start of the same leg (``os.execv``:
    same pid, so systemd spends no restart on it) and is replaced in tests.
    """

    directory: Path
    restart: Callable[[float], None] | None = None


def _step(
    leg: Leg,
    stopper: Stopper,
    ping_every: float | None,
    heartbeat: Callable[[str, str], None] | None,
    disk: DiskWait | None,
) -> bool:
    """One step; a full or failing pipeline disk is waited out, not fatal.

    The step's transaction rolled back, so nothing was half written. The leg
    waits (pinging the watchdog) until the disk takes a probe write again,
    then starts afresh in the same process, which reloads everything it
    keeps in memory (lane counters, bookmarks, rows in flight) from the
    database exactly as a restart would, without spending systemd's restart
    budget on an outage that can last hours. WARNING at first, ERROR once it
    lasts (an operator must free space). A busy database only retries the
    step later.
    """
    try:
        return leg.step()
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if text.startswith(_LOCKED):
            logger.warning("pipeline database busy, step retried stage=%s", leg.name)
            return False
        if disk is None or not is_disk_error(exc):
            raise
        wait_for_disk(
            leg.name,
            disk,
            stopper=stopper,
            ping_every=ping_every,
            heartbeat=heartbeat,
            error=exc,
        )
        raise _StoppedWhileDown from None


def wait_for_disk(
    name: str,
    disk: DiskWait,
    *,
    stopper: Stopper,
    ping_every: float | None,
    heartbeat: Callable[[str, str], None] | None,
    error: BaseException,
) -> None:
    """Wait until the pipeline disk takes writes, then restart the leg in place.

    Returns only when a stop was requested meanwhile.
    """
    started = time.monotonic()
    delay = float(os.environ.get(_RETRY_ENV) or _DISK_RETRY_FIRST_S)
    attempt = 0
    while not stopper.stopping:
        attempt += 1
        elapsed = time.monotonic() - started
        level = logging.ERROR if elapsed >= _DISK_ERROR_AFTER_S else logging.WARNING
        logger.log(
            level,
            "pipeline database unavailable, waiting stage=%s attempt=%d"
            " elapsed_s=%.0f error=%s",
            name,
            attempt,
            elapsed,
            error,
        )
        notify(f"STATUS=waiting for the pipeline disk: {error}")
        if heartbeat is not None:
            with contextlib.suppress(sqlite3.Error):
                heartbeat("waiting", f"pipeline disk: {error}")
        _wait_pinging(stopper, delay, ping_every)
        delay = min(delay * 2, _DISK_RETRY_MAX_S)
        problem = _probe(disk.directory)
        if problem is not None:
            error = problem
            continue
        logger.warning(
            "pipeline disk answers again, leg starts afresh stage=%s elapsed_s=%.0f",
            name,
            time.monotonic() - started,
        )
        (disk.restart or _exec_again)(delay)
        return


def _probe(directory: Path) -> OSError | None:
    """Write, sync and remove a probe file of a few MB: None if the disk took it."""
    probe = directory / f".disk-probe-{os.getpid()}"
    try:
        with probe.open("wb") as out:
            out.write(b"\0" * _DISK_PROBE_BYTES)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _exec_again(delay: float) -> None:
    """Replace this process by a fresh start of the same command (same pid)."""
    os.environ[_RETRY_ENV] = f"{delay:.3f}"
    notify("STATUS=starting afresh after a pipeline disk outage")
    logging.shutdown()
    # The same interpreter and arguments this process was started with.
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606


def is_disk_error(exc: sqlite3.OperationalError) -> bool:
    """SQLite's words for a full or failing disk (not a busy database)."""
    return str(exc).lower().startswith(_DISK_ERRORS)


def disk_settled() -> None:
    """A step went through: the next outage starts its waits short again."""
    os.environ.pop(_RETRY_ENV, None)


class _StoppedWhileDown(Exception):
    """Stop requested while the leg was waiting out a disk outage."""


def _wait_pinging(stopper: Stopper, seconds: float, ping_every: float | None) -> None:
    """Sleep (interrupted by a stop) while still telling systemd we are alive."""
    deadline = time.monotonic() + seconds
    while not stopper.stopping:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stopper.event.wait(left if ping_every is None else min(left, ping_every))
        if ping_every is not None:
            notify("WATCHDOG=1")


def _idle_wait(idle_s: float, ping_every: float | None) -> float:
    if ping_every is None:
        return idle_s
    return min(idle_s, ping_every)
