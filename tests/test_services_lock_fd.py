"""A broker started under ``flock`` must not keep the starter's lock.

Heavy work runs as ``flock /tmp/relay-bench.lock make bench``; ``make``
starts Kafka when it is not up, and ``scripts/devservices/kafka.py`` spawns
the detached broker with ``os.posix_spawn``, which (unlike ``Popen`` with
``close_fds``) hands the child every inheritable descriptor. flock(1) gives
its command the lock's descriptor, so the broker once held the lock until
``make services-down`` (14 minutes of every other ``flock`` waiting, seen by
a tester). PostgreSQL (``pg_ctl``) closes them itself.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from devservices import kafka  # noqa: E402


def test_the_broker_does_not_inherit_a_lock_held_by_its_starter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\nexec sleep 30\n")
    fake_java.chmod(0o755)
    monkeypatch.setattr(kafka, "_java", lambda: str(fake_java))
    monkeypatch.setattr(kafka, "_format_kafka_storage", lambda paths, libs: False)
    lock = tmp_path / "bench.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    os.set_inheritable(fd, True)  # as flock(1) hands it to its command
    fcntl.flock(fd, fcntl.LOCK_EX)
    pid = 0
    try:
        pid, _port, _formatted = kafka._launch_kafka(tmp_path / "state", tmp_path)
        assert str(lock) not in _descriptors_once_settled(pid)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def _descriptors_once_settled(pid: int) -> list[str]:
    """What ``pid``'s descriptors point at, once the fake java is ``sleep``
    (the shell opens and closes its own while it starts)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if handle.read().startswith(b"sleep"):
                break
        time.sleep(0.02)
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:  # closed since the listing
            continue
    return found
