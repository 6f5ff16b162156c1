"""``appliance bench guardian``: the guardian on one large table, timed.

Not a timed test: it prints figures (docs/benchmarks.md). Steps:

1. ``rows`` rows are bulk-inserted into the emulator's ``mag.prix``
   directly (no journal: the relay never sees them), and the same rows, as
   the emulator renders them for comparison (contracts.md section 2), are
   copied into the ODH table through the sink's role (the sink creates its
   tables itself; here the bench does, with the same DDL).
2. verify: a ``check`` of PRIX with no drift, from the command to the hub's
   ``done``; bytes store -> hub (the ``g`` messages as shipped) and hub ->
   store (the requests); the store's read rate (rows / seconds from the
   run's start to its hand-off to the enricher).
3. repair: ``differences`` scattered ODH rows are changed, deleted or added
   behind the sink's back; a second check finds and repairs them, timed the
   same way, ``r`` rows included in the bytes.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from appliance import payloads
from appliance.devstack import Services, Stack
from appliance.hub import odh

logger = logging.getLogger(__name__)

ROWS = 1_000_000
DIFFERENCES = 100
TABLE = "PRIX"
_COPY_BATCH = 50_000


def run(
    services: Services,
    workdir: Path,
    *,
    rows: int,
    differences: int,
    name: str = "benchguard",
) -> dict[str, Any]:
    """Fill, verify, drift, repair; return the figures (and ``odh_db``).

    ``name`` names the stack's databases and topics: two runs at once (the
    command and its CI test) must not share one.
    """
    stack = Stack(services, workdir, name=name, store_id="RE02")
    stack.prepare()
    _unthrottle(stack)
    try:
        started = time.monotonic()
        _fill_source(stack, rows)
        _fill_odh(stack)
        fill_s = time.monotonic() - started
        stack.start_legs()
        stack.wait_drained(timeout_s=600)
        verify = _timed_check(stack)
        changed = _drift(stack, differences)
        repair = _timed_check(stack)
        stack.wait_drained(timeout_s=3600)
        equal = _odh_equals_source(stack)
    finally:
        stack.close()
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "verify": verify,
        "differences": changed,
        "repair": repair,
        "equal_after": equal,
        "odh_db": stack.odh_db,
    }


def _unthrottle(stack: Stack) -> None:
    """Read as fast as the source answers: the figure is the read rate."""
    text = stack.box_config.read_text()
    text = re.sub(r"read_chunk_rows = \d+", "read_chunk_rows = 5000", text)
    text = re.sub(r"max_rows_per_s = \d+", "max_rows_per_s = 1000000000", text)
    stack.box_config.write_text(text)


def _fill_source(stack: Stack, rows: int) -> None:
    """Bulk rows in mag.prix, behind the journal (it never needs them)."""
    with psycopg.connect(stack.services.conninfo(stack.ibmi_db)) as pg:
        pg.execute(
            "INSERT INTO mag.prix (artnum, prix, prix_promo, deb_promo, fin_promo,"
            " heure_maj, maj_le) SELECT lpad(i::text, 6, '0'),"
            " (i %% 100000) / 100.0, CASE WHEN i %% 7 = 0 THEN (i %% 1000) / 100.0 END,"
            " CASE WHEN i %% 7 = 0 THEN date '2026-12-01' END,"
            " CASE WHEN i %% 7 = 0 THEN date '2026-12-24' END,"
            " time '08:00:00' + (i %% 36000) * interval '1 second',"
            " timestamp '2026-01-01 00:00:00' + i * interval '1 second'"
            " FROM generate_series(0, %s - 1) AS i",
            (rows,),
        )


def _fill_odh(stack: Stack) -> None:
    """The same rows into ODH, as the emulator renders them, version 1.

    Streamed (a server-side cursor on the source, COPY into ODH in batches),
    so a million rows never sit in memory at once.
    """
    tdef = stack.emulator().table(TABLE)
    columns = sql.SQL(", ").join(sql.Identifier(c.name.lower()) for c in tdef.columns)
    password = (stack.secrets / "odh-password").read_text().strip()
    hub = psycopg.connect(
        stack.hub.conninfo(stack.odh_db),
        user=f"odh_sink_{stack.name}",
        password=password,
        autocommit=True,
    )
    source = psycopg.connect(stack.services.conninfo(stack.ibmi_db))
    try:
        with hub.transaction():
            odh.ensure_base(hub, "odh")
            odh.ensure_table(hub, "odh", TABLE)
        target = odh.table_ident("odh", TABLE)
        copy = sql.SQL("COPY {} (store_id, pk, key, data, version) FROM STDIN").format(
            target
        )
        with source.cursor(name="bench_fill") as rows:
            rows.itersize = _COPY_BATCH
            rows.execute(sql.SQL("SELECT {} FROM {}").format(columns, tdef.ident))
            while batch := rows.fetchmany(_COPY_BATCH):
                with hub.transaction(), hub.cursor() as cur, cur.copy(copy) as out:
                    for values in batch:
                        row = tdef.json_row(
                            dict(
                                zip([c.name for c in tdef.columns], values, strict=True)
                            )
                        )
                        key = {k: row[k] for k in tdef.key}
                        out.write_row(
                            (
                                stack.store_id,
                                odh.canonical_pk(key),
                                json.dumps(key),
                                json.dumps(row),
                                1,
                            )
                        )
        hub.execute(sql.SQL("ANALYZE {}").format(target))
    finally:
        source.close()
        hub.close()


def _drift(stack: Stack, differences: int) -> dict[str, int]:
    """Change, delete and add scattered ODH rows behind the sink's back."""
    rng = random.Random(99)  # noqa: S311  (bench data, not secrets)
    table = odh.table_ident("odh", TABLE)
    with psycopg.connect(stack.hub.conninfo(stack.odh_db), autocommit=True) as pg:
        total = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        count = int(total[0]) if total else 0
        picks = rng.sample(range(count), min(differences, count))
        pks = [
            pg.execute(
                sql.SQL("SELECT pk FROM {} ORDER BY pk OFFSET %s LIMIT 1").format(
                    table
                ),
                (n,),
            ).fetchone()
            for n in picks[: len(picks) * 2 // 5]
        ]
        changed = deleted = added = 0
        for n, found in enumerate(pks):
            assert found is not None
            if n % 2:
                pg.execute(
                    sql.SQL("DELETE FROM {} WHERE pk = %s").format(table), (found[0],)
                )
                deleted += 1
            else:
                pg.execute(
                    sql.SQL(
                        "UPDATE {} SET data = data || %s::jsonb WHERE pk = %s"
                    ).format(table),
                    (json.dumps({"PRIX": "0.01"}), found[0]),
                )
                changed += 1
        for n in range(len(picks) - len(pks)):
            key = {"ARTNUM": f"Z{n:05d}"}
            pg.execute(
                sql.SQL(
                    "INSERT INTO {} (store_id, pk, key, data, version)"
                    " VALUES (%s, %s, %s, %s, 1)"
                ).format(table),
                (
                    stack.store_id,
                    odh.canonical_pk(key),
                    json.dumps(key),
                    json.dumps({**key, "PRIX": "1.00"}),
                ),
            )
            added += 1
    return {"changed": changed, "deleted": deleted, "added": added}


def _timed_check(stack: Stack) -> dict[str, Any]:
    """One check of the table, from the command to the hub's done."""
    first = _read(stack, "SELECT coalesce(max(id), 0) FROM outbox")[0][0]
    started = time.time()
    command = stack.guardian_command("check", {"table": TABLE})
    read_s = _wait_state(stack, command, ("sent", "done"))
    _wait_state(stack, command, ("done",))
    seconds = time.time() - started
    run = _run_of(stack, command)
    # The JSON sent, not the bytes stored (payloads are kept compressed).
    sent = _read(
        stack,
        "",
        read=lambda conn: payloads.messages(
            conn, "id > ? AND op IN ('g', 'r')", (first,)
        ),
    )
    with psycopg.connect(stack.hub.conninfo(stack.odh_db)) as pg:
        bodies = pg.execute(
            "SELECT body FROM odh.guardian_outbox WHERE body->>'run' = %s",
            (run["run"],),
        ).fetchall()
        summary = pg.execute(
            "SELECT summary FROM odh.guardian_runs WHERE run = %s", (run["run"],)
        ).fetchone()
    by_op: dict[str, tuple[int, int]] = {}
    for _oid, message in sent:
        op = json.loads(message)["op"]
        n, size = by_op.get(op, (0, 0))
        by_op[op] = (n + 1, size + len(message))
    return {
        "seconds": round(seconds, 1),
        "read_s": round(read_s, 1),
        "rows_read": int(run["rows_read"]),
        "read_rows_per_s": round(int(run["rows_read"]) / read_s) if read_s else 0,
        "g_messages": by_op.get("g", (0, 0))[0],
        "r_messages": by_op.get("r", (0, 0))[0],
        "bytes_to_hub": sum(size for _n, size in by_op.values()),
        "bytes_to_store": sum(len(json.dumps(b[0]).encode()) for b in bodies),
        "summary": summary[0] if summary else {},
    }


def _read(
    stack: Stack,
    query: str,
    params: tuple[Any, ...] = (),
    read: Callable[[sqlite3.Connection], list[Any]] | None = None,
) -> list[Any]:
    """A read of the pipeline database that waits out a long writer.

    The control leg writes a whole run's cache in one transaction, longer
    than a connection's busy timeout; the bench only reads, so it retries.
    ``read``, when given, reads instead of ``query``.
    """
    deadline = time.monotonic() + 600
    while True:
        conn = sqlite3.connect(
            f"file:{stack.pipeline_db}?mode=ro", uri=True, timeout=30
        )
        conn.row_factory = sqlite3.Row
        try:
            if read is not None:
                return read(conn)
            return conn.execute(query, params).fetchall()
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            conn.close()


def _run_of(stack: Stack, command: int) -> dict[str, Any]:
    rows = _read(
        stack,
        "SELECT r.* FROM guardian_runs r JOIN commands c"
        " ON c.result LIKE '%run=' || r.run || '%' WHERE c.id = ?",
        (command,),
    )
    return dict(rows[0]) if rows else {}


def _wait_state(stack: Stack, command: int, states: tuple[str, ...]) -> float:
    """Seconds from the run's start until it reaches one of ``states``."""
    deadline = time.monotonic() + 7200
    while time.monotonic() < deadline:
        stack.check_legs_alive()
        run = _run_of(stack, command)
        if run.get("state") in states:
            return time.time() - float(run["started_at"])
        time.sleep(0.5)
    raise TimeoutError(f"guardian run of command {command} not {states} in 7200s")


def _odh_equals_source(stack: Stack) -> bool:
    report = stack.compare((TABLE,))
    return bool(report[TABLE]["equal"])


def show(found: dict[str, Any]) -> None:
    """Print the figures beside the raw limits."""
    raw = found["raw"]
    print(f"guardian on one table of {found['rows']:,} rows (PRIX)")
    for name, label in (("verify", "no drift"), ("repair", "find + repair")):
        item = found[name]
        print(
            f"  {label:<14} {item['seconds']:>8.1f} s"
            f"  to hub {item['bytes_to_hub']:>12,} B"
            f"  to store {item['bytes_to_store']:>8,} B"
            f"  ({item['g_messages']} g, {item['r_messages']} r)"
        )
    drift = found["differences"]
    summary = found["repair"]["summary"]
    print(
        f"  drift made     changed {drift['changed']}, deleted {drift['deleted']},"
        f" added {drift['added']}; found missing {summary.get('missing')},"
        f" differs {summary.get('differs')}, extra {summary.get('extra')};"
        f" ODH equals source after: {found['equal_after']}"
    )
    verify = found["verify"]
    print(
        f"  store read     {verify['read_rows_per_s']:>10,} rows/s"
        f"  ({verify['rows_read']:,} rows in {verify['read_s']} s, read to hand-off)"
    )
    print("raw limits of this machine (same services)")
    print(f"  SQLite insert, fsync per 500     {raw['sqlite_rows_per_s']:>10,} rows/s")
    print(f"  Kafka produce, acks=all          {raw['kafka_msgs_per_s']:>10,} msgs/s")
    print(f"  PostgreSQL upsert, 500/commit    {raw['pg_upserts_per_s']:>10,} rows/s")
