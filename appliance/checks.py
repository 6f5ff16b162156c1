"""Guardian checks the journal legs ask for when ODH can no longer follow a table.

A data gap (the miner), journaling ended then restarted (F EJ ... F JM) and a
restored member (F MR) leave ODH with rows the journal will never correct.
The leg that sees the event asks the guardian's ``control`` leg for a
``check`` in mode ``repair`` of the table, which re-reads the source and
repairs missing, changed and extra rows (docs/guardian.md §5).

Invariants:

- One request per event and table, never two. The event queues its checks in
  ``pending_checks`` inside the transaction that handles the event (the
  miner's bookmark move, the transformer's batch), keyed by ``origin`` (the
  event's journal position and the table). :func:`flush` then files each as
  a command whose ``requested_by`` is that origin, and skips an origin that
  already has one, so a crash between the two never files it twice.
- A request the commands table refuses (no ``control`` leg on this box yet)
  stays pending and is tried again at the next flush; it is never dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

from appliance import commands, store

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_checks (
    origin TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    queued_at REAL NOT NULL
)
"""
RETRY_EVERY_S = 30.0


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create ``pending_checks`` (and the commands tables) if missing."""
    commands.ensure_schema(conn)
    conn.execute(SCHEMA)


def queue(conn: sqlite3.Connection, table: str, reason: str, origin: str) -> bool:
    """Queue a repair check of ``table`` (inside the caller's transaction).

    ``origin`` names the event (``<reason> <position> <table>``); a second
    queue of the same origin is ignored. True when it was queued now.
    """
    cur = conn.execute(
        "INSERT OR IGNORE INTO pending_checks (origin, table_name, reason,"
        " queued_at) VALUES (?, ?, ?, ?)",
        (origin, table, reason, time.time()),
    )
    return cur.rowcount > 0


# The meta key is the transformer's (kept, so a box upgraded between an F EJ
# and its F JM still asks for the check).
ENDED_KEY = "transformer.journaling_ended."


def journaling_ended(
    conn: sqlite3.Connection, library: str, table: str, position: str
) -> None:
    """F EJ: changes made while journaling is off show only once it is back
    on, so the check waits for the F JM (:func:`journaling_started`)."""
    text = json.dumps({"at": position}, sort_keys=True, separators=(",", ":"))
    store.meta_put(conn, f"{ENDED_KEY}{library}/{table}", text)


def journaling_started(conn: sqlite3.Connection, library: str, table: str) -> bool:
    """F JM: queue the check an earlier F EJ of the table owes; False if none."""
    ended = conn.execute(
        "DELETE FROM meta WHERE key = ? RETURNING value",
        (f"{ENDED_KEY}{library}/{table}",),
    ).fetchone()
    if ended is None:
        return False
    since = json.loads(ended[0]).get("at", "")
    queue(conn, table, "EJ", f"transformer EJ {since} {library}/{table}")
    return True


class Flusher:
    """Files queued checks as ``control`` commands; retries refused ones."""

    def __init__(self, conn: sqlite3.Connection, stage: str) -> None:
        self.conn = conn
        self.stage = stage
        self._retry_at = 0.0
        self._refused = False
        # Here, not only in the leg's setup: a step must find its tables.
        ensure_schema(conn)

    def flush(self, *, force: bool = False) -> int:
        """File every pending check; how many were filed now."""
        if not force and time.monotonic() < self._retry_at:
            return 0
        rows = self.conn.execute(
            "SELECT origin, table_name, reason FROM pending_checks ORDER BY queued_at"
        ).fetchall()
        filed = 0
        for origin, table, reason in rows:
            try:
                filed += self._file(str(origin), str(table), str(reason))
            except commands.CommandError as exc:
                self._retry_at = time.monotonic() + RETRY_EVERY_S
                if not self._refused:
                    logger.warning(
                        "guardian check not accepted yet, will retry stage=%s"
                        " table=%s error=%s",
                        self.stage,
                        table,
                        exc,
                    )
                self._refused = True
                return filed
        self._refused = False
        return filed

    def _file(self, origin: str, table: str, reason: str) -> int:
        known = self.conn.execute(
            "SELECT 1 FROM commands WHERE requested_by = ? LIMIT 1", (origin,)
        ).fetchone()
        if known is None:
            args = {"table": table, "mode": "repair", "reason": reason}
            commands.request(self.conn, "control", "check", args, origin)
        with store.transaction(self.conn):
            self.conn.execute("DELETE FROM pending_checks WHERE origin = ?", (origin,))
            if known is None:
                store.bump(self.conn, f"{self.stage}.guardian_checks")
        if known is None:
            logger.warning(
                "guardian check requested stage=%s table=%s reason=%s origin=%s",
                self.stage,
                table,
                reason,
                origin,
            )
        return 0 if known is not None else 1


def pending(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(origin, table, reason) of the checks not filed yet."""
    rows = conn.execute(
        "SELECT origin, table_name, reason FROM pending_checks ORDER BY queued_at"
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def asked(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(table, reason) of every repair check asked: filed or still queued."""
    filed = conn.execute(
        "SELECT args FROM commands WHERE leg = 'control' AND kind = 'check'"
    ).fetchall()
    found = [json.loads(row[0]) for row in filed]
    tables = [
        (str(a.get("table")), str(a.get("reason")))
        for a in found
        if a.get("mode") == "repair"
    ]
    return sorted(tables + [(t, r) for _, t, r in pending(conn)])
