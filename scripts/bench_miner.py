"""CPU time per journal entry of the miner alone, in-process (issue 9).

``write`` fills a private emulator database with a backlog (a few receiver
changes, one with a sequence reset, hidden entries); ``run`` mines all of it
into a fresh pipeline database and prints the process's CPU time (user +
system, ``time.process_time``) spent inside ``MinerLeg.step`` per entry and a
digest of what was stored: every ``raw_entries`` column but ``mined_at``,
and the bookmark without ``updated_at``. Two runs that store the same thing
print the same digest.

The miner pauses when 50 windows are unprocessed; between steps (outside
the timed part) the harness marks stored entries processed, as the
transformer would, so the digest leaves ``state`` out.

    eval "$(.venv/bin/python scripts/services.py env)"
    .venv/bin/python scripts/bench_miner.py write --name h4 --changes 50000
    .venv/bin/python scripts/bench_miner.py run --name h4 --repeat 3
    .venv/bin/python scripts/bench_miner.py drop --name h4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from appliance import miner, store
from appliance.config import BoxSettings, IbmiSection
from appliance.emulator import Emulator, backlog, workload

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services

_DIGEST_SQL = (
    "SELECT id, journal, receiver_library, receiver_name, sequence, code,"
    " entry_type, entry_ts, commit_cycle, object, object_type, rrn, job, program,"
    " user_name, indicator_flag, null_map, data FROM raw_entries ORDER BY id"
)
_BOOKMARK_SQL = (
    "SELECT journal, receiver_library, receiver_name, sequence, processed,"
    " entry_ts, attach_ts, first_sequence FROM bookmark"
)


def _base() -> str:
    pg = services.ensure_up()["postgres"]
    password = Path(pg["password_file"]).read_text().strip()
    return f"host={pg['host']} port={pg['port']} user={pg['user']} password={password}"


def _db(name: str) -> str:
    return f"ibmi_bench_{name}"


def _workdir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"bench-miner-{name}"


def write(name: str, changes: int) -> None:
    """A fresh emulator database with ``changes`` row changes in 4 receivers."""
    base = _base()
    with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
        ident = sql.Identifier(_db(name))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    emu = Emulator(f"{base} dbname={_db(name)}", gap_rate=0.02, seed=5)
    emu.install()
    emu.create_store_tables()
    workdir = _workdir(name)
    workdir.mkdir(exist_ok=True)
    password = secrets.token_urlsafe(18)
    secret = workdir / "ibmi.password"
    secret.write_text(password)
    secret.chmod(0o600)
    emu.grant_reader(f"{_db(name)}_reader", password)
    workload.seed_store(emu, articles=500, seed=21)
    started = time.monotonic()
    for part in range(4):
        backlog.write(emu, changes=changes // 4, seed=30 + part)
        if part < 3:
            emu.change_receiver(reset=part == 1)
    print(f"written in {time.monotonic() - started:.0f}s head={emu.head()}")
    emu.close()


def drop(name: str) -> None:
    with psycopg.connect(_base() + " dbname=postgres", autocommit=True) as conn:
        ident = sql.Identifier(_db(name))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(
                sql.Identifier(f"{_db(name)}_reader")
            )
        )
    for path in sorted(_workdir(name).glob("*"), reverse=True):
        path.unlink()
    if _workdir(name).exists():
        _workdir(name).rmdir()


def _settings(name: str, db_path: Path, window: int) -> BoxSettings:
    pg = services.ensure_up()["postgres"]
    ibmi = IbmiSection(
        dialect="emulator",
        driver="PostgreSQL Unicode",
        host=pg["host"],
        port=pg["port"],
        database=_db(name),
        user=f"{_db(name)}_reader",
        password_file=_workdir(name) / "ibmi.password",
        window=window,
        poll_interval_s=0.05,
    )
    return BoxSettings(store={"id": "MQ01"}, ibmi=ibmi, pipeline={"db_path": db_path})


def digest(db_path: Path) -> tuple[int, str, list[Any]]:
    """(entries, hash of the rows, bookmark) of a pipeline database."""
    conn = sqlite3.connect(db_path)
    try:
        h = hashlib.sha256()
        count = 0
        for row in conn.execute(_DIGEST_SQL):
            h.update(repr(row).encode())
            count += 1
        mark = [list(r) for r in conn.execute(_BOOKMARK_SQL)]
    finally:
        conn.close()
    return count, h.hexdigest()[:16], mark


def run_once(name: str, window: int) -> dict[str, Any]:
    """Mine the whole backlog into a fresh database; CPU seconds inside step."""
    with tempfile.TemporaryDirectory(prefix="bench-miner-") as tmp:
        db_path = Path(tmp) / "pipeline.db"
        leg = miner.MinerLeg(
            _settings(name, db_path, window), store.connect(db_path), own_store=True
        )
        side = store.connect(db_path)
        cpu = 0.0
        idle = 0
        t0 = time.process_time()
        leg.setup()
        cpu += time.process_time() - t0
        while idle < 5:
            t0 = time.process_time()
            worked = leg.step()
            cpu += time.process_time() - t0
            with store.transaction(side):
                side.execute("UPDATE raw_entries SET state = 1 WHERE state = 0")
            idle = 0 if worked else idle + 1
            if not worked:
                time.sleep(0.06)
        leg.close()
        side.close()
        count, rows_hash, mark = digest(db_path)
    return {
        "entries": count,
        "cpu_s": round(cpu, 3),
        "us_per_entry": round(cpu / max(count, 1) * 1e6, 2),
        "digest": rows_hash,
        "bookmark": mark,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=("write", "run", "drop"))
    ap.add_argument("--name", default="bench")
    ap.add_argument("--changes", type=int, default=50_000)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.command == "write":
        write(args.name, args.changes)
    elif args.command == "drop":
        drop(args.name)
    else:
        results = [run_once(args.name, args.window) for _ in range(args.repeat)]
        for r in results:
            print(json.dumps(r))
        median = statistics.median(r["us_per_entry"] for r in results)
        print(f"median us/entry {median:.2f} (n={len(results)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
