"""CPU time per change of the enricher alone, in-process, on a copy of a backlog.

Copies a pipeline database whose ``changes`` are transformed but not yet
enriched (``scripts/profile_legs.py --legs miner`` leaves one), runs the
enricher's steps on the copy until it is drained and prints one JSON line:
the process's CPU time (``time.process_time()``: every thread, the in-process
JVM included) spent in the steps, per change. Start-up (JVM, script loading
and warm-up) is outside the figure. With ``--dump`` it also writes the outbox
rows it made, ``created_at`` left out (the only column that depends on the
clock), so two runs on the same input can be compared byte for byte.

It also prints how long the leg held SQLite's write lock (wall time from
``BEGIN IMMEDIATE`` through ``COMMIT``, per change: what the other legs would
have waited for) and, on a tree that has it, how many batches were written
the old way, built inside the transaction (``under_lock``).

    .venv/bin/python scripts/enricher_cpu.py --db /tmp/prof-x/pipeline.db \
        --dump /tmp/outbox.tsv

One run per process: JPype starts one JVM per process. Run it a few times
and take the median; the copy is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from appliance import payloads, store
from appliance.config import BoxSettings
from appliance.enricher import EnricherLeg

SCRIPTS = Path(__file__).resolve().parent.parent / "config" / "scripts"
PRODUCT_SCRIPTS = [
    {"name": "business_key", "language": "beanshell", "path": "business_key.bsh"},
    {"name": "region", "language": "javascript", "path": "region.js"},
    {"name": "message_interest", "language": "python", "path": "interest.py"},
]


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of ``source`` (WAL included) at ``target``."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def dump_outbox(conn: sqlite3.Connection, path: Path) -> str:
    """Write the outbox rows (clock column aside) to ``path``; their sha256.

    Payloads are read back as their JSON text, however they are stored.
    """
    digest = hashlib.sha256()
    unpacker = payloads.Unpacker()
    with path.open("w", encoding="utf-8") as out:
        for row in conn.execute(
            "SELECT id, lane, lane_seq, interest, version, table_name, op,"
            " mined_at, payload, dict_id FROM outbox ORDER BY id"
        ):
            *head, payload, dict_id = tuple(row)
            text = unpacker.value(conn, payload, dict_id).decode()
            line = "\t".join(map(str, [*head, text])) + "\n"
            out.write(line)
            digest.update(line.encode())
    return digest.hexdigest()


def time_the_lock(held: list[float]) -> None:
    """Add the wall time of every ``store.transaction`` (lock taken through
    commit) to ``held[0]``."""
    original = store.transaction

    @contextlib.contextmanager
    def timed(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        started: list[float] = []

        def stop() -> None:  # runs after the COMMIT (or ROLLBACK)
            if started:
                held[0] += time.perf_counter() - started[0]

        with contextlib.ExitStack() as stack:
            stack.callback(stop)
            entered = stack.enter_context(original(conn))
            started.append(time.perf_counter())
            yield entered

    store.transaction = timed


def run(db: Path, store_id: str, batch: int, dump: Path | None) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="enricher-cpu-"))
    try:
        copy = workdir / "pipeline.db"
        copy_database(db, copy)
        scripts = [dict(s, path=SCRIPTS / s["path"]) for s in PRODUCT_SCRIPTS]
        settings = BoxSettings(
            store={"id": store_id},
            pipeline={"db_path": copy, "batch": batch},
            enricher={"scripts": scripts},
        )
        conn = store.connect(copy)
        held = [0.0]
        time_the_lock(held)
        leg = EnricherLeg(settings, conn)
        leg.setup()
        waiting = conn.execute("SELECT count(*) FROM changes WHERE state = 0")
        changes = int(waiting.fetchone()[0])
        cpu0, wall0 = time.process_time(), time.monotonic()
        steps = 0
        while leg.step():
            steps += 1
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        leg.close()
        result: dict[str, object] = {
            "changes": changes,
            "steps": steps,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "cpu_us_per_change": round(cpu / max(changes, 1) * 1e6, 1),
            "lock_held_us_per_change": round(held[0] / max(changes, 1) * 1e6, 1),
            "under_lock": getattr(leg, "under_lock", None),
        }
        if dump is not None:
            result["outbox_sha256"] = dump_outbox(conn, dump)
        conn.close()
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True, help="backlog pipeline.db")
    ap.add_argument("--store", default="RE01", help="store id of the backlog")
    ap.add_argument("--batch", type=int, default=500, help="pipeline.batch")
    ap.add_argument("--dump", type=Path, default=None, help="outbox dump file")
    args = ap.parse_args()
    print(json.dumps(run(args.db, args.store, args.batch, args.dump)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
