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
``idle_s``. A leg whose idle step itself blocks until work arrives (the
hub sink waits in Kafka's poll) may also cap the pause with ``idle_max_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Protocol

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

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("stop requested signal=%s", signal.Signals(signum).name)
        self.event.set()

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
) -> int:
    """Drive ``leg`` until stopped; return the process exit code.

    With ``commands``, the leg's pending commands run between two steps; a
    paused leg does not step but keeps pinging and heartbeats ``paused``.
    """
    stopper = stopper or Stopper()
    if threading.current_thread() is threading.main_thread():
        stopper.install()
    leg.setup()
    notify(f"READY=1\nSTATUS={leg.status()}")
    logger.info("leg ready stage=%s pid=%s", leg.name, os.getpid())
    ping_every = watchdog_interval_s()
    first_idle = getattr(leg, "idle_first_s", None)
    idle_s = min(idle_s, float(getattr(leg, "idle_max_s", idle_s)))
    idle_now = idle_s
    last_ping = last_beat = 0.0
    steps = 0
    closed = False
    try:
        while not stopper.stopping:
            paused = False
            if commands is not None:
                commands.run_pending()
                paused = commands.paused
            try:
                worked = False if paused else _step(leg, stopper, ping_every, heartbeat)
            except _StoppedWhileDown:
                closed = True
                break
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
                if first_idle is not None:
                    idle_now = min(float(first_idle), idle_s)
            else:
                stopper.event.wait(_idle_wait(idle_now, ping_every))
                idle_now = min(idle_now * 2, idle_s)
    finally:
        notify("STOPPING=1")
        started = time.monotonic()
        if not closed:
            leg.close()
        if heartbeat is not None:
            heartbeat("stopped", leg.status())
        logger.info(
            "leg stopped stage=%s elapsed_s=%.2f",
            leg.name,
            time.monotonic() - started,
        )
    return 0


_TRANSIENT_SQLITE = ("database or disk is full", "disk i/o error", "database is locked")
_DISK_RETRY_FIRST_S = 1.0
_DISK_RETRY_MAX_S = 30.0
_DISK_ERROR_AFTER_S = 300.0


def _step(
    leg: Leg,
    stopper: Stopper,
    ping_every: float | None,
    heartbeat: Callable[[str, str], None] | None,
) -> bool:
    """One step; a full or failing pipeline disk is waited out, not fatal.

    The step's transaction rolled back, so nothing was half written. The leg
    is closed and set up again once the disk answers, which reloads what it
    keeps in memory (lane counters, bookmarks) from the database, exactly as
    a restart would, without spending systemd's restart budget on an outage
    that can last hours. WARNING at first, ERROR once it lasts (an operator
    must free space).
    """
    try:
        return leg.step()
    except sqlite3.OperationalError as exc:
        if not str(exc).lower().startswith(_TRANSIENT_SQLITE):
            raise
        _wait_for_disk(leg, stopper, ping_every, heartbeat, exc)
        return False


def _wait_for_disk(
    leg: Leg,
    stopper: Stopper,
    ping_every: float | None,
    heartbeat: Callable[[str, str], None] | None,
    first: sqlite3.OperationalError,
) -> None:
    started = time.monotonic()
    delay = _DISK_RETRY_FIRST_S
    error: Exception = first
    attempt = 0
    leg.close()
    while not stopper.stopping:
        attempt += 1
        elapsed = time.monotonic() - started
        level = logging.ERROR if elapsed >= _DISK_ERROR_AFTER_S else logging.WARNING
        logger.log(
            level,
            "pipeline database unavailable, waiting stage=%s attempt=%d"
            " elapsed_s=%.0f error=%s",
            leg.name,
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
        try:
            leg.setup()
        except sqlite3.OperationalError as exc:
            error = exc
            continue
        logger.warning(
            "pipeline database back stage=%s elapsed_s=%.0f",
            leg.name,
            time.monotonic() - started,
        )
        return
    raise _StoppedWhileDown


class _StoppedWhileDown(Exception):
    """Stop requested while the leg was closed for a disk outage."""


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
