"""The guardian as the page sees it: last run per table, recent events, alarms.

Reads the store-side records of docs/guardian.md §5, ``guardian_runs`` and
``guardian_events``, written by the ``control`` leg. Until that leg has
beaten or recorded a run (or while an older database lacks the tables),
``running`` is False and the page says "guardian not running yet".

Invariants: reads only (the page's one write is a command request); a
column missing from an older or newer schema shows as empty rather than
failing the page (``SELECT *``, then ``dict.get``: ``loaded`` reads 0 on a
database the control leg has not upgraded yet); a value of an odd type
(SQLite keeps whatever was written: text or a blob in a figure, an infinite
or out-of-range time) shows as empty too, and a text longer than
``TEXT_SHOWN`` is cut. Breaker run 2: one such row made the overview, the
Guardian page, the API and /metrics answer 500 (or a bogus 404), the API
wrote ``Infinity`` (not JSON) and a few 5 MB event details made a 30 MB page.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any

logger = logging.getLogger(__name__)

EVENTS_SHOWN = 100
TEXT_SHOWN = 2000  # characters of one stored text shown (page and API)
# Figures of a run, in the order the page shows them (docs/guardian.md §5).
FIGURES = (
    "rows_read",
    "changed",
    "loaded",
    "narrowed",
    "repaired",
    "deleted",
    "dropped",
)
# A run that ends so did not finish; one that carries an error is failing
# (the leg retries the read, the technician should know why).
FAILED_STATES = frozenset({"failed", "abandoned", "expired"})


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('guardian_runs', 'guardian_events')"
        )
    }


def _value(value: object) -> object:
    """A stored value fit for the page, JSON and /metrics (module doc)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) > TEXT_SHOWN:
        return value[:TEXT_SHOWN] + "\u2026"
    return value


def _record(row: sqlite3.Row) -> dict[str, Any]:
    return {key: _value(value) for key, value in dict(row).items()}


def _figure(value: object) -> int:
    """A count of a run: 0 unless a finite number was stored."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return 0


def _run(row: sqlite3.Row) -> dict[str, Any]:
    run = _record(row)
    for name in FIGURES:
        run[name] = _figure(run.get(name))
    started, finished = run.get("started_at"), run.get("finished_at")
    run["duration_s"] = None
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        duration = round(finished - started, 1)
        run["duration_s"] = duration if math.isfinite(duration) else None
    run["failed"] = str(run.get("state") or "") in FAILED_STATES or bool(
        run.get("error")
    )
    # Differences found: buckets the hub narrowed, or rows it had repaired
    # (rows a load sent are ``loaded``: no check found them different).
    run["differences"] = run["narrowed"] + run["repaired"] + run["deleted"]
    return run


def guardian(conn: sqlite3.Connection) -> dict[str, Any]:
    """Last run per table and recent events (module doc)."""
    present = _tables(conn)
    runs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    try:
        if "guardian_runs" in present:
            runs = [
                _run(r)
                for r in conn.execute(
                    "SELECT * FROM guardian_runs WHERE id IN"
                    " (SELECT max(id) FROM guardian_runs GROUP BY table_name)"
                    " ORDER BY table_name"
                )
            ]
        if "guardian_events" in present:
            events = [
                _record(r)
                for r in conn.execute(
                    "SELECT * FROM guardian_events ORDER BY id DESC LIMIT ?",
                    (EVENTS_SHOWN,),
                )
            ]
    except sqlite3.OperationalError as exc:
        # A table of another schema (no id or table_name column): the
        # overview and /metrics stay up without the guardian (breaker run 2).
        logger.warning("guardian records unreadable error=%s", exc)
    beat = conn.execute("SELECT 1 FROM heartbeats WHERE leg = 'control'").fetchone()
    running = bool(runs or events or beat)
    return {"running": running, "runs": runs, "events": events}


def alarms(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(code, table) of each last run that failed, or that found differences
    in log mode (nobody repairs those: a person must look)."""
    found = []
    for run in facts["runs"]:
        table = str(run.get("table_name") or "")
        if run["failed"]:
            found.append(("guardian_failed", table))
        elif run.get("mode") == "log" and run["differences"] > 0:
            found.append(("guardian_differences", table))
    return found
