"""The checker: after the faults stop and the relay drains, account for everything.

What it proves, each as a number that must be zero (or a flag that must be
true):

- the ODH tables equal the emulator's tables value for value
  (:meth:`appliance.devstack.Stack.compare`);
- *lost*: every ``R`` journal entry of a relayed table is in ``raw_entries``
  (entry by entry, by receiver and sequence), and each raw entry is accounted
  for: shipped (a change was made from it), a before image paired with its
  after image, folded into its commit cycle's net effect, rolled back,
  filtered by configuration, or parked in dead letters with a reason; every
  change is in the outbox (or parked), and every outbox message is in the
  hub's ``applied`` (or in the hub's dead letters);
- *doubled*: no journal entry mined twice, no change emitted twice for one
  raw entry, no version in the outbox twice, no version applied twice;
- *moved backwards*: the history table (filled by a trigger on every ODH
  table, installed by :func:`install_history` before the sink writes) never
  shows a row going to a version lower than or equal to its previous one, so
  the per-key order held.

The history table and the failure switch live in schema ``faults`` of the
ODH database, owned by the superuser; the trigger functions are SECURITY
DEFINER so the sink role needs no right on them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from appliance import store

logger = logging.getLogger(__name__)

_HISTORY_DDL = (
    "CREATE SCHEMA IF NOT EXISTS faults",
    "CREATE TABLE IF NOT EXISTS faults.history (id bigserial PRIMARY KEY,"
    " tbl text NOT NULL, store_id text NOT NULL, pk text NOT NULL,"
    " old_version bigint, new_version bigint NOT NULL, deleted boolean NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE TABLE IF NOT EXISTS faults.control (id int PRIMARY KEY CHECK (id = 1),"
    " fail_upto bigint NOT NULL DEFAULT 0,"
    " until timestamptz NOT NULL DEFAULT '-infinity',"
    " sqlstate text NOT NULL DEFAULT 'XX000')",
    "INSERT INTO faults.control (id) VALUES (1) ON CONFLICT DO NOTHING",
    "CREATE SEQUENCE IF NOT EXISTS faults.fail_seq",
    "CREATE OR REPLACE FUNCTION faults.record() RETURNS trigger"
    " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$"
    " BEGIN"
    "  INSERT INTO faults.history (tbl, store_id, pk, old_version, new_version,"
    "   deleted) VALUES (TG_TABLE_NAME, NEW.store_id, NEW.pk,"
    "   CASE WHEN TG_OP = 'UPDATE' THEN OLD.version END, NEW.version, NEW.deleted);"
    "  RETURN NULL;"
    " END $$",
    "CREATE OR REPLACE FUNCTION faults.fail() RETURNS trigger"
    " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$"
    " DECLARE c record;"
    " BEGIN"
    "  SELECT fail_upto, until, sqlstate INTO c FROM faults.control WHERE id = 1;"
    "  IF c.until > clock_timestamp() THEN"
    "   RAISE EXCEPTION 'injected outage' USING ERRCODE = c.sqlstate;"
    "  END IF;"
    "  IF c.fail_upto > 0 AND nextval('faults.fail_seq') <= c.fail_upto THEN"
    "   RAISE EXCEPTION 'injected statement failure' USING ERRCODE = c.sqlstate;"
    "  END IF;"
    "  RETURN NEW;"
    " END $$",
)


def install_history(admin: psycopg.Connection[Any], tables: list[str]) -> None:
    """Create the history and failure triggers on ``odh."<table>"`` (superuser).

    The ODH tables must exist (the harness creates them as the sink role, so
    the sink still owns them); triggers are replaced, so this is idempotent.
    """
    with admin.transaction():
        for statement in _HISTORY_DDL:
            admin.execute(statement)
        for table in tables:
            target = sql.Identifier("odh", table.lower())
            for name, when, func in (
                ("faults_history", "AFTER", "record"),
                ("faults_fail", "BEFORE", "fail"),
            ):
                admin.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(name), target
                    )
                )
                admin.execute(
                    sql.SQL(
                        "CREATE TRIGGER {} " + when + " INSERT OR UPDATE ON {}"
                        " FOR EACH ROW EXECUTE FUNCTION faults.{}()"
                    ).format(sql.Identifier(name), target, sql.Identifier(func))
                )


def fail_next(admin: psycopg.Connection[Any], rows: int, sqlstate: str) -> None:
    """Make the next ``rows`` ODH row writes fail with ``sqlstate``."""
    with admin.transaction():
        last = admin.execute("SELECT last_value FROM faults.fail_seq").fetchone()
        upto = int(last[0] if last else 0) + rows
        admin.execute(
            "UPDATE faults.control SET fail_upto = %s, sqlstate = %s WHERE id = 1",
            (upto, sqlstate),
        )


def fail_for(admin: psycopg.Connection[Any], seconds: float, sqlstate: str) -> None:
    """Make every ODH row write fail with ``sqlstate`` for ``seconds``."""
    with admin.transaction():
        admin.execute(
            "UPDATE faults.control SET sqlstate = %s,"
            " until = clock_timestamp() + make_interval(secs => %s) WHERE id = 1",
            (sqlstate, seconds),
        )


@dataclass
class Report:
    """What the checker found; :attr:`ok` only when nothing is wrong."""

    tables_equal: bool = False
    table_detail: dict[str, dict[str, Any]] = field(default_factory=dict)
    journal_entries: int = 0
    accounted: Counter[str] = field(default_factory=Counter)
    changes_checked: int = 0
    lost: int = 0
    lost_detail: list[str] = field(default_factory=list)
    applied_twice: int = 0
    doubled_detail: list[str] = field(default_factory=list)
    moved_backwards: int = 0
    history_rows: int = 0
    hub_dead_letters: int = 0
    box_dead_letters: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.tables_equal
            and self.lost == 0
            and self.applied_twice == 0
            and self.moved_backwards == 0
            and not self.doubled_detail
        )

    def lines(self) -> list[str]:
        """The figures, one per line, for the harness's printout."""
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.accounted.items()))
        return [
            f"ODH equals source: {self.tables_equal} {self._tables()}",
            f"journal R entries checked: {self.journal_entries} ({kinds})",
            f"changes checked: {self.changes_checked}",
            f"lost = {self.lost}",
            f"applied twice = {self.applied_twice}",
            f"moved backwards = {self.moved_backwards}"
            f" (history rows {self.history_rows})",
            f"dead letters: box {self.box_dead_letters}, hub {self.hub_dead_letters}",
            *[f"  lost: {d}" for d in self.lost_detail[:10]],
            *[f"  doubled: {d}" for d in self.doubled_detail[:10]],
        ]

    def _tables(self) -> str:
        return " ".join(
            f"{t}={d['source']}/{d['odh']}" for t, d in self.table_detail.items()
        )


def check(
    pipeline: sqlite3.Connection,
    emulator_pg: psycopg.Connection[Any],
    odh_pg: psycopg.Connection[Any],
    *,
    store_id: str,
    tables: list[str],
    library: str = "MAG",
    compare: dict[str, dict[str, Any]] | None = None,
) -> Report:
    """Run every check; ``compare`` is the result of ``Stack.compare()``."""
    report = Report()
    if compare is not None:
        report.table_detail = compare
        report.tables_equal = all(item["equal"] for item in compare.values())
    _journal_to_raw(report, pipeline, emulator_pg, tables, library)
    _raw_to_changes(report, pipeline, tables, library)
    _changes_to_hub(report, pipeline, odh_pg, store_id)
    _history(report, odh_pg)
    logger.info(
        "check done count=%d lost=%d applied_twice=%d moved_backwards=%d",
        report.changes_checked,
        report.lost,
        report.applied_twice,
        report.moved_backwards,
    )
    return report


def _objects(tables: list[str], library: str) -> set[str]:
    return {f"{t:<10}{library:<10}" for t in tables}


def _journal_to_raw(
    report: Report,
    pipeline: sqlite3.Connection,
    emulator_pg: psycopg.Connection[Any],
    tables: list[str],
    library: str,
) -> None:
    """Entry by entry: each R entry of a relayed table was mined exactly once."""
    rows = emulator_pg.execute(
        "SELECT r.receiver_name, e.sequence_number::bigint, substr(e.object, 1, 20)"
        " FROM qsys2.emu_entry e JOIN qsys2.emu_receiver r USING (receiver_id)"
        " WHERE e.journal_code = 'R'"
    ).fetchall()
    wanted = _objects(tables, library)
    journal = {(r[0].strip(), int(r[1])) for r in rows if r[2] in wanted}
    mined = Counter(
        (r[0].strip(), int(r[1]))
        for r in pipeline.execute(
            "SELECT receiver_name, sequence, substr(object, 1, 20) FROM raw_entries"
            " WHERE code = 'R'"
        )
        if r[2] in wanted
    )
    report.journal_entries = len(journal)
    missing = sorted(journal - set(mined))
    report.lost += len(missing)
    report.lost_detail += [f"journal entry {r}:{s} never mined" for r, s in missing]
    twice = [pos for pos, n in mined.items() if n > 1]
    report.doubled_detail += [f"journal entry {r}:{s} mined twice" for r, s in twice]


def _raw_to_changes(
    report: Report, pipeline: sqlite3.Connection, tables: list[str], library: str
) -> None:
    """Classify every raw R entry: shipped, paired, folded, rolled back, ..."""
    ends = {
        (r[0], r[1]): r[2]
        for r in pipeline.execute(
            "SELECT job, commit_cycle, entry_type FROM raw_entries"
            " WHERE code = 'C' AND entry_type IN ('CM', 'RB')"
        )
    }
    made = Counter(r[0] for r in pipeline.execute("SELECT raw_id FROM changes"))
    parked = {
        r[0]
        for r in pipeline.execute(
            "SELECT raw_id FROM dead_letters WHERE raw_id IS NOT NULL"
        )
    }
    wanted = _objects(tables, library)
    for raw_id, entry_type, cycle, obj in pipeline.execute(
        "SELECT id, entry_type, commit_cycle, substr(object, 1, 20)"
        " FROM raw_entries WHERE code = 'R' ORDER BY id"
    ):
        kind = _classify(
            raw_id, entry_type, cycle, obj in wanted, made=made, parked=parked
        )
        if kind is None and _no_op_update(pipeline, raw_id, entry_type):
            kind = "no_op_update"
        if kind is None:
            kind = "unaccounted"
            report.lost += 1
            report.lost_detail.append(f"raw entry {raw_id} ({entry_type}) made nothing")
        report.accounted[kind] += 1
    twice = [raw_id for raw_id, n in made.items() if n > 1]
    report.doubled_detail += [f"raw entry {i} made {made[i]} changes" for i in twice]
    _classify_cycles(report, pipeline, ends, made, parked)


def _classify(
    raw_id: int,
    entry_type: str,
    cycle: int,
    relayed: bool,
    *,
    made: Counter[int],
    parked: set[int],
) -> str | None:
    """The class of one entry that does not need its cycle's end (else None)."""
    if not relayed:
        return "filtered"
    if raw_id in made:
        return "shipped"
    if raw_id in parked:
        return "dead_letter"
    if entry_type in ("UB", "BR"):
        return "before_image"
    if cycle:
        return "in_cycle"
    return None


def _no_op_update(pipeline: sqlite3.Connection, raw_id: int, entry_type: str) -> bool:
    """An after image equal to its paired before image changes nothing.

    The pair is the latest UB/BR before it of the same object, RRN and job
    (the transformer's pairing rule); equal images make no change event.
    """
    if entry_type not in ("UP", "UR"):
        return False
    row = pipeline.execute(
        "SELECT b.data = a.data FROM raw_entries a JOIN raw_entries b"
        " ON b.object = a.object AND b.rrn = a.rrn AND b.job = a.job"
        " AND b.id < a.id AND b.entry_type IN ('UB', 'BR')"
        " WHERE a.id = ? ORDER BY b.id DESC LIMIT 1",
        (raw_id,),
    ).fetchone()
    return bool(row and row[0])


def _classify_cycles(
    report: Report,
    pipeline: sqlite3.Connection,
    ends: dict[tuple[str, int], str],
    made: Counter[int],
    parked: set[int],
) -> None:
    """Split ``in_cycle`` into rolled back, folded (net effect) and unaccounted."""
    count = report.accounted.pop("in_cycle", 0)
    if not count:
        return
    for raw_id, job, cycle in pipeline.execute(
        "SELECT id, job, commit_cycle FROM raw_entries WHERE code = 'R'"
        " AND commit_cycle != 0 AND entry_type NOT IN ('UB', 'BR') ORDER BY id"
    ):
        if raw_id in made or raw_id in parked:
            continue
        end = ends.get((job, cycle))
        if end == "RB":
            report.accounted["rolled_back"] += 1
        elif end == "CM":
            report.accounted["folded"] += 1
        else:
            report.lost += 1
            report.accounted["unaccounted"] += 1
            report.lost_detail.append(f"raw entry {raw_id}: cycle {cycle} never ended")


def _changes_to_hub(
    report: Report,
    pipeline: sqlite3.Connection,
    odh_pg: psycopg.Connection[Any],
    store_id: str,
) -> None:
    """Every change reached the outbox, every message the hub, none twice."""
    epoch = store.epoch(pipeline)
    changes = [r[0] for r in pipeline.execute("SELECT raw_id FROM changes")]
    report.changes_checked = len(changes)
    outbox = pipeline.execute(
        "SELECT version, lane, lane_seq, state FROM outbox"
    ).fetchall()
    versions = Counter(int(r[0]) for r in outbox)
    parked = {
        int(r[0])
        for r in pipeline.execute(
            "SELECT raw_id FROM dead_letters WHERE stage = 'enricher'"
            " AND raw_id IS NOT NULL"
        )
    }
    report.box_dead_letters = int(
        pipeline.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    )
    for raw_id in changes:
        if store.version_of(epoch, raw_id) not in versions and raw_id not in parked:
            report.lost += 1
            report.lost_detail.append(f"change of raw entry {raw_id} not in outbox")
    report.doubled_detail += [
        f"version {v} in outbox twice" for v, n in versions.items() if n > 1
    ]
    applied = {
        (int(r[0]), int(r[1])): int(r[2])
        for r in odh_pg.execute(
            "SELECT lane, lane_seq, version FROM odh.applied"
            " WHERE store_id = %s AND epoch = %s",
            (store_id, epoch),
        )
    }
    hub_parked = {
        (int(r[0]), int(r[1]))
        for r in odh_pg.execute(
            "SELECT lane, lane_seq FROM odh.dead_letters WHERE store_id = %s"
            " AND lane IS NOT NULL AND lane_seq IS NOT NULL",
            (store_id,),
        )
    }
    report.hub_dead_letters = len(hub_parked)
    for version, lane, lane_seq, state in outbox:
        got = applied.get((int(lane), int(lane_seq)))
        if got is None and (lane, lane_seq) not in hub_parked:
            report.lost += 1
            report.lost_detail.append(f"lane {lane}:{lane_seq} ({state}) not applied")
        elif got is not None and got != int(version):
            report.lost += 1
            report.lost_detail.append(
                f"lane {lane}:{lane_seq} applied version {got}, outbox {version}"
            )
    row = odh_pg.execute(
        "SELECT count(*) - count(DISTINCT version) FROM odh.applied"
        " WHERE store_id = %s",
        (store_id,),
    ).fetchone()
    report.applied_twice = int(row[0]) if row else 0


def _history(report: Report, odh_pg: psycopg.Connection[Any]) -> None:
    report.history_rows, report.moved_backwards = moved_backwards(odh_pg)


def moved_backwards(odh_pg: psycopg.Connection[Any]) -> tuple[int, int]:
    """(history rows, writes that moved a row to an older or equal version).

    Checks both what each write replaced (``old_version``) and the order of
    the writes per key, so a key's versions must strictly increase.
    """
    row = odh_pg.execute(
        "SELECT count(*), count(*) FILTER (WHERE old_version IS NOT NULL"
        " AND new_version <= old_version) FROM faults.history"
    ).fetchone()
    rows, backwards = (int(row[0]), int(row[1])) if row else (0, 0)
    row = odh_pg.execute(
        "SELECT count(*) FROM (SELECT new_version, lag(new_version) OVER"
        " (PARTITION BY tbl, store_id, pk ORDER BY id) AS prev FROM faults.history) h"
        " WHERE prev IS NOT NULL AND new_version <= prev"
    ).fetchone()
    return rows, max(backwards, int(row[0]) if row else 0)
