"""Leg processes under the harness: a supervisor that restarts them, and kills.

The :class:`Supervisor` plays systemd's ``Restart=always``: a leg that exits
(killed by the harness, or stopping by itself) is started again after
``RESTART_S``. A kill is aimed with the SQLite locks that ``/proc/locks``
shows: in WAL mode the writer holds a POSIX lock on byte 120 of
``pipeline.db-shm`` for the whole write transaction, and a checkpointer holds
byte 121, so a leg seen holding one of them is killed inside its transaction
or inside its checkpoint.

Invariant: only processes this harness started are signalled, by pid.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from appliance.devstack import BOX_LEGS, LegProcess, Stack

logger = logging.getLogger(__name__)

RESTART_S = 0.5
MIN_LIFE_S = 1.0
WRITE_LOCK_BYTE = 120
CHECKPOINT_LOCK_BYTE = 121


class Supervisor:
    """Restart dead legs (as systemd would) in a background thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.restarts: Counter[str] = Counter()
        self.own_exits: Counter[str] = Counter()
        self.expected: set[int] = set()
        self.held: set[str] = set()
        self.born: dict[int, float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sup")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def leg(self, name: str) -> LegProcess:
        with self.lock:
            return next(p for p in self.stack.legs if p.name == name)

    def kill(self, name: str, wait_s: float = 15.0) -> int:
        """SIGKILL one leg by the pid of the process the harness started.

        A leg still down from the last kill is first given up to ``wait_s``
        to be restarted and to live ``MIN_LIFE_S``, so every kill hits a
        running process.
        """
        deadline = time.monotonic() + wait_s
        while True:
            with self.lock:
                leg = next(p for p in self.stack.legs if p.name == name)
                pid = leg.process.pid
                alive = leg.process.poll() is None and pid not in self.expected
                old_enough = time.monotonic() - self.born.get(pid, 0.0) >= MIN_LIFE_S
                if alive and (old_enough or time.monotonic() > deadline):
                    self.expected.add(pid)
                    os.kill(pid, signal.SIGKILL)
                    leg.process.wait(10)
                    return pid
            if time.monotonic() > deadline + wait_s:
                raise TimeoutError(f"leg {name} not running {2 * wait_s:.0f}s")
            time.sleep(0.1)

    def hold_box(self) -> None:
        """SIGKILL every box leg at once and keep them down (a power cut)."""
        with self.lock:
            self.held |= set(BOX_LEGS)
            for leg in self.stack.legs:
                if leg.name in BOX_LEGS and leg.process.poll() is None:
                    self.expected.add(leg.process.pid)
                    os.kill(leg.process.pid, signal.SIGKILL)
            for leg in self.stack.legs:
                if leg.name in BOX_LEGS:
                    leg.process.wait(10)

    def release_box(self) -> None:
        with self.lock:
            self.held -= set(BOX_LEGS)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self.lock:
                for i, leg in enumerate(self.stack.legs):
                    code = leg.process.poll()
                    if code is None or leg.name in self.held:
                        continue
                    if leg.process.pid in self.expected:
                        # Reaped: the pid may come back for another process
                        # (pids wrap around in a long run), which must not be
                        # taken for this dead leg.
                        self.expected.discard(leg.process.pid)
                    else:
                        self.own_exits[leg.name] += 1
                        logger.warning(
                            "leg exited by itself stage=%s code=%s", leg.name, code
                        )
                    time.sleep(RESTART_S)
                    self.stack.legs[i] = self.stack.spawn_leg(leg.name)
                    self.born[self.stack.legs[i].process.pid] = time.monotonic()
                    self.restarts[leg.name] += 1


def lock_holders(shm: Path, byte: int) -> set[int]:
    """Pids holding a POSIX lock covering ``byte`` of ``shm`` (from /proc/locks)."""
    try:
        inode = os.stat(shm).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return set()
    pids: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[1] != "POSIX":
            continue
        try:
            found = int(parts[5].rsplit(":", 1)[1])
            start = int(parts[6])
            end = parts[7]
        except (ValueError, IndexError):
            continue
        if found == inode and start <= byte and (end == "EOF" or byte <= int(end)):
            pids.add(int(parts[4]))
    return pids


def aimed_kill(
    sup: Supervisor, names: list[str], byte: int, within_s: float
) -> tuple[str, float]:
    """Kill whichever of ``names`` holds lock ``byte``; (leg caught, seconds waited).

    Polls ``/proc/locks`` for at most ``within_s``; when no such leg was seen
    holding the lock, the first of ``names`` is killed anyway and the leg
    caught is ``""``.
    """
    shm = sup.stack.pipeline_db.with_name("pipeline.db-shm")
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        holders = lock_holders(shm, byte)
        if holders:
            with sup.lock:
                for leg in sup.stack.legs:
                    pid = leg.process.pid
                    alive = leg.process.poll() is None
                    if leg.name in names and pid in holders and alive:
                        sup.expected.add(pid)
                        os.kill(pid, signal.SIGKILL)
                        leg.process.wait(10)
                        return leg.name, time.monotonic() - started
        time.sleep(0.0005)
    sup.kill(names[0])
    return "", time.monotonic() - started
