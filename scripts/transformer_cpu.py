"""CPU time per change of the transformer alone, in-process, on a copy of a backlog.

Takes a pipeline database holding mined ``raw_entries`` (transformed or not:
``scripts/profile_legs.py --legs miner`` leaves one, transformed), and for
each repetition copies it, undoes what the transformer made there (entry
states, ``changes``, held rows, dead letters, RRN map, its counters, layout
versions), runs the leg's steps on the copy until drained and times them with
``time.process_time()``. Prints one JSON line: CPU microseconds per change of
every repetition, their median, and the sha256 of the tables the leg wrote
(``changes``, dead letters without their clock column, held rows, RRN map,
counters, layout versions, entry states; ``--dump`` writes them as text), so
two versions of the code can be compared on the same input byte for byte:

    .venv/bin/python scripts/transformer_cpu.py --db /tmp/prof-x/pipeline.db

The layouts come from the database's own ``meta`` (the newest version of each
table), not from the source: no connection is made. A backlog with a layout
change (``D CG``) in it is then decoded with the newest layout throughout;
both sides of a comparison are, so the comparison holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from appliance import layouts, store
from appliance.config import BoxSettings
from appliance.transformer import TransformerLeg

UNDO = """
UPDATE raw_entries SET state = 0;
DELETE FROM changes;
DELETE FROM held_changes;
DELETE FROM dead_letters WHERE stage = 'transformer';
DELETE FROM rrn_keys;
DELETE FROM rrn_read;
DELETE FROM rrn_windows;
DELETE FROM counters WHERE name LIKE 'transformer.%';
DELETE FROM meta WHERE key LIKE 'layout.%';
DELETE FROM sqlite_sequence WHERE name IN ('changes', 'dead_letters');
"""
DUMPS = {
    "changes": "SELECT * FROM changes ORDER BY id",
    "dead_letters": "SELECT id, stage, table_name, position, field, byte_offset,"
    " bytes_hex, expected, reason, raw_id, payload FROM dead_letters ORDER BY id",
    "held": "SELECT cycle_key, raw_id, change FROM held_changes"
    " ORDER BY cycle_key, raw_id",
    "rrn_keys": "SELECT * FROM rrn_keys ORDER BY 1, 2",
    "rrn_read": "SELECT * FROM rrn_read ORDER BY 1, 2",
    "rrn_windows": "SELECT * FROM rrn_windows ORDER BY 1",
    "counters": "SELECT * FROM counters WHERE name LIKE 'transformer.%' ORDER BY 1",
    "layouts": "SELECT * FROM meta WHERE key LIKE 'layout.%' ORDER BY 1",
    "entries": "SELECT id, state FROM raw_entries ORDER BY id",
}


class MetaCatalog:
    """The newest layout of each table, as the database's ``meta`` keeps it."""

    def __init__(self, db: Path) -> None:
        self.layouts: dict[tuple[str, str], layouts.Layout] = {}
        with sqlite3.connect(db) as conn:
            for (value,) in conn.execute(
                "SELECT value FROM meta WHERE key LIKE 'layout.%' ORDER BY key"
            ):
                text = json.loads(value).get("layout")
                if text is not None:
                    layout = layouts.layout_from_json(text)
                    self.layouts[(layout.library, layout.table)] = layout

    def load_layout(self, library: str, table: str) -> layouts.Layout:
        return self.layouts[(library, table)]


def settings_for(db: Path, batch: int, tables: list[str]) -> BoxSettings:
    return BoxSettings(
        store={"id": "CPU1", "timezone": "America/Martinique"},
        ibmi={"dialect": "emulator", "tables": tables},
        pipeline={"db_path": db, "batch": batch},
    )


def one_run(source: Path, work: Path, batch: int) -> tuple[float, int]:
    """(CPU seconds of the steps, changes written) on a fresh copy of ``source``."""
    db = work / "pipeline.db"
    for stale in work.glob("pipeline.db*"):
        stale.unlink()
    with sqlite3.connect(source) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    conn = store.connect(db)
    conn.executescript(UNDO)
    catalog = MetaCatalog(source)
    tables = sorted({table for _, table in catalog.layouts})
    leg = TransformerLeg(settings_for(db, batch, tables), conn, catalog)
    started = time.process_time()
    while leg.step():
        pass
    spent = time.process_time() - started
    changes = int(conn.execute("SELECT count(*) FROM changes").fetchone()[0])
    conn.close()
    return spent, changes


def dump(db: Path, path: Path | None) -> str:
    """The sha256 of the tables the leg wrote (and their text in ``path``)."""
    digest = hashlib.sha256()
    lines: list[str] = []
    with sqlite3.connect(db) as conn:
        for name, query in DUMPS.items():
            for row in conn.execute(query):
                line = f"{name} {tuple(row)!r}\n"
                digest.update(line.encode())
                if path is not None:
                    lines.append(line)
    if path is not None:
        path.write_text("".join(lines), encoding="utf-8")
    return digest.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True, help="a mined pipeline.db")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="pipeline.batch")
    ap.add_argument("--dump", type=Path, default=None, help="write the tables here")
    args = ap.parse_args()
    per_change: list[float] = []
    with tempfile.TemporaryDirectory(prefix="transformer-cpu-") as tmp:
        work = Path(tmp)
        for _ in range(args.reps):
            spent, changes = one_run(args.db, work, args.batch)
            per_change.append(round(spent / max(changes, 1) * 1e6, 1))
        digest = dump(work / "pipeline.db", args.dump)
    result = {
        "changes": changes,
        "us_per_change": per_change,
        "median_us": statistics.median(per_change),
        "sha256": digest,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
