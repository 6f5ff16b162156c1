"""The fault kinds the harness injects, each bounded in time and undone by itself.

Each function breaks one thing, waits, repairs it and returns a short note.
None of them touches the shared services: Kafka and the ODH's PostgreSQL are
the harness's own (``scripts/services.py --state-dir``), the emulator's
PostgreSQL is never stopped, and the pipeline database sits on the harness's
own small tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from appliance.faults import checker
from appliance.faults.legs import Supervisor
from appliance.faults.proxy import FaultProxy

logger = logging.getLogger(__name__)

_FILL_CHUNK = 1 << 20
# The filler writes what statvfs says is free, plus a margin for what the
# legs free meanwhile; it stops at ENOSPC.
_FILL_SPARE_CHUNKS = 256


@dataclass
class Kit:
    """What the fault kinds act on."""

    services: ModuleType
    state_dir: Path
    supervisor: Supervisor
    proxy: FaultProxy
    admin_conninfo: str
    disk: Path | None
    down_s: float
    # The broker's outage (kafka_stop) may be longer than the others.
    kafka_down_s: float = 0.0

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_conninfo, autocommit=True, connect_timeout=10)


def kafka_stop(kit: Kit) -> str:
    """Stop the broker (SIGTERM), keep it down, start it again."""
    down_s = kit.kafka_down_s or kit.down_s
    outcome = kit.services.stop_kafka(kit.state_dir)
    time.sleep(down_s)
    kit.services.start_kafka(kit.state_dir)
    return f"broker {outcome}, down {down_s:.0f}s, restarted"


def kafka_kill(kit: Kit) -> str:
    """SIGKILL the broker (by its pid, checked to be this harness's), restart."""
    entry = kit.services.load_state(kit.state_dir).get("kafka") or {}
    pid = int(entry.get("pid", 0))
    props = str(kit.state_dir / "kafka" / "server.properties")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    if props.encode() not in cmdline:
        return "broker not found: skipped"
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    time.sleep(min(kit.down_s, 2.0))
    kit.services.start_kafka(kit.state_dir)
    return f"broker pid {pid} killed, restarted"


def pg_restart(kit: Kit) -> str:
    """Stop the ODH's PostgreSQL under the sink for ``down_s``, start it again."""
    outcome = kit.services.stop_postgres(kit.state_dir)
    time.sleep(kit.down_s)
    kit.services.start_postgres(kit.state_dir)
    return f"postgresql {outcome}, down {kit.down_s:.0f}s, restarted"


def sink_statement(kit: Kit) -> str:
    """The next three ODH row writes fail (an internal error): retried."""
    with kit.admin() as conn:
        checker.fail_next(conn, 3, "XX000")
    return "next 3 row writes fail with XX000"


def pg_disk_full(kit: Kit) -> str:
    """Every ODH row write fails with disk_full (53100) for ``down_s``."""
    with kit.admin() as conn:
        checker.fail_for(conn, kit.down_s, "53100")
    time.sleep(kit.down_s)
    return f"row writes fail with 53100 for {kit.down_s:.0f}s"


def net_cut(kit: Kit) -> str:
    """The link between shipper and broker is down both ways for ``down_s``."""
    kit.proxy.set_mode("cut")
    time.sleep(kit.down_s)
    kit.proxy.set_mode("pass")
    return f"link cut {kit.down_s:.0f}s"


def net_one_way(kit: Kit, seconds: float) -> str:
    """Broker -> shipper bytes dropped: deliveries land, no ack, no confirm."""
    down, up = kit.proxy.dropped_bytes, kit.proxy.muted_up_bytes
    kit.proxy.set_mode("mute_down")
    time.sleep(seconds)
    kit.proxy.set_mode("pass")
    down = kit.proxy.dropped_bytes - down
    up = kit.proxy.muted_up_bytes - up
    return f"one-way loss {seconds:.0f}s: {up} B delivered, {down} B of replies dropped"


def disk_full(kit: Kit) -> str:
    """Fill the pipeline's own filesystem, hold it full, free it."""
    if kit.disk is None:
        return "no own filesystem: skipped"
    filler = kit.disk / "filler"
    written = 0
    room = os.statvfs(kit.disk)
    chunks = room.f_bavail * room.f_frsize // _FILL_CHUNK + _FILL_SPARE_CHUNKS
    with filler.open("wb") as out:
        for _ in range(chunks):
            try:
                out.write(b"\0" * _FILL_CHUNK)
                out.flush()
                written += _FILL_CHUNK
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    time.sleep(kit.down_s)
    filler.unlink()
    return f"disk filled ({written >> 20} MiB) for {kit.down_s:.0f}s, freed"


def power_cut(kit: Kit, workdir: Path) -> str:
    """Copy the database mid-write, cut the box's power, come back on the copy.

    A read transaction pins the WAL while the main file and then the WAL are
    copied, so the copy is what a disk could hold at one instant plus possibly
    a torn tail frame (which recovery ignores). Then every box leg is
    SIGKILLed, the live files are replaced by the copy, ``integrity_check``
    must say ok, and the legs start again from it.
    """
    db = kit.supervisor.stack.pipeline_db
    copy = workdir / "powercut"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM meta").fetchone()
        shutil.copyfile(db, copy / db.name)
        wal = db.with_name(db.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy / wal.name)
        reader.execute("COMMIT")
    finally:
        reader.close()
    kit.supervisor.hold_box()
    try:
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        for item in copy.iterdir():
            shutil.copyfile(item, db.with_name(item.name))
        check = sqlite3.connect(db)
        try:
            verdict = check.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            check.close()
        if verdict != "ok":
            raise RuntimeError(f"power cut copy is corrupt: {verdict}")
    finally:
        kit.supervisor.release_box()
    return f"copy taken mid-write, box legs killed, reopened: integrity {verdict}"
