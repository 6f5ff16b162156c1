"""The pipeline database: one SQLite file (WAL) shared by the legs of the box.

Invariants:

- Each leg reads its input table in id order and, in ONE transaction, writes
  its output rows and marks its input rows done. A crash before COMMIT leaves
  both untouched; a crash after leaves both done. Nothing is lost, nothing is
  repeated.
- ``raw_entries.id`` is the store-wide monotone entry number. It never goes
  back (AUTOINCREMENT never reuses an id, even after deletes).
- A change's *version* is ``epoch_base + raw id`` (see :func:`version_of`):
  ``epoch`` is the second the database was created, so a reflashed box (new
  database, new epoch) still produces larger versions than the box it replaced.
- ``outbox.lane_seq`` is contiguous per lane (1, 2, 3...): the hub's watermark
  counts these, applies only ``watermark + 1`` and skips what is below.

Worked example of the version: the database was created at 2026-12-04
18:00:00 UTC (unix 1796407200); ``epoch = 1796407200 - 1577836800 = 218570400``;
raw entry 41 gets version ``218570400 * 10**10 + 41 = 2185704000000000041``,
which fits a signed 64-bit integer until the year 2049.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
EPOCH_ORIGIN = 1577836800  # 2020-01-01T00:00:00Z
VERSION_SPAN = 10**10

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    journal TEXT NOT NULL,
    receiver_library TEXT NOT NULL,
    receiver_name TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    code TEXT NOT NULL,
    entry_type TEXT NOT NULL,
    entry_ts TEXT NOT NULL,
    commit_cycle INTEGER NOT NULL DEFAULT 0,
    object TEXT NOT NULL DEFAULT '',
    object_type TEXT NOT NULL DEFAULT '',
    rrn INTEGER NOT NULL DEFAULT 0,
    job TEXT NOT NULL DEFAULT '',
    program TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL DEFAULT '',
    indicator_flag TEXT NOT NULL DEFAULT '',
    null_map BLOB,
    data BLOB,
    mined_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS raw_entries_new ON raw_entries (state, id);
CREATE TABLE IF NOT EXISTS bookmark (
    journal TEXT PRIMARY KEY,
    receiver_library TEXT NOT NULL,
    receiver_name TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    processed INTEGER NOT NULL,
    entry_ts TEXT NOT NULL DEFAULT '',
    attach_ts TEXT NOT NULL DEFAULT '',
    first_sequence INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_head (
    journal TEXT PRIMARY KEY,
    receiver_library TEXT NOT NULL,
    receiver_name TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    read_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS held_changes (
    cycle_key TEXT NOT NULL,
    raw_id INTEGER NOT NULL,
    change TEXT NOT NULL,
    PRIMARY KEY (cycle_key, raw_id)
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    raw_id INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('c', 'u', 'd', 'r', 't')),
    key TEXT NOT NULL,
    before TEXT,
    after TEXT,
    source TEXT NOT NULL,
    entry_ts_ms INTEGER NOT NULL,
    mined_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS changes_new ON changes (state, id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    lane_seq INTEGER NOT NULL,
    interest INTEGER NOT NULL,
    version INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'in_flight', 'sent', 'confirmed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    mined_at REAL NOT NULL,
    sent_at REAL,
    partition INTEGER,
    kafka_offset INTEGER,
    confirmed_at REAL,
    dict_id INTEGER,
    UNIQUE (lane, lane_seq)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, lane, lane_seq);
CREATE TABLE IF NOT EXISTS outbox_dicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    sample BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    lane INTEGER PRIMARY KEY,
    upto INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    stage TEXT NOT NULL,
    table_name TEXT NOT NULL DEFAULT '',
    position TEXT NOT NULL DEFAULT '',
    field TEXT NOT NULL DEFAULT '',
    byte_offset INTEGER,
    bytes_hex TEXT NOT NULL DEFAULT '',
    expected TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    raw_id INTEGER,
    payload TEXT,
    state TEXT NOT NULL DEFAULT 'parked'
        CHECK (state IN ('parked', 'retried', 'discarded'))
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS guardian_outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    after_change_id INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    body TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS guardian_outbound_new ON guardian_outbound (state, id);
CREATE TABLE IF NOT EXISTS guardian_requests (
    request TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    run TEXT NOT NULL,
    table_name TEXT NOT NULL,
    body TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS guardian_requests_new
    ON guardian_requests (state, received_at);
CREATE TABLE IF NOT EXISTS guardian_cache (
    run TEXT NOT NULL,
    table_name TEXT NOT NULL,
    pk TEXT NOT NULL,
    pk_hash INTEGER NOT NULL,
    row_hash INTEGER,
    PRIMARY KEY (run, table_name, pk)
);
CREATE INDEX IF NOT EXISTS guardian_cache_hash
    ON guardian_cache (run, table_name, pk_hash);
CREATE TABLE IF NOT EXISTS guardian_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    table_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    finished_at REAL,
    state TEXT NOT NULL DEFAULT 'reading',
    rows_read INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL DEFAULT 0,
    parts INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    narrowed INTEGER NOT NULL DEFAULT 0,
    repaired INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    loaded INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    v_low INTEGER,
    UNIQUE (run, table_name)
);
CREATE TABLE IF NOT EXISTS guardian_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    run TEXT NOT NULL,
    table_name TEXT NOT NULL,
    what TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS heartbeats (
    leg TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
"""

# Columns added after a table's first schema, as (table, column, SQL type),
# in the order they came. ``CREATE TABLE IF NOT EXISTS`` leaves an existing
# table as it was, so :func:`connect` adds what an older database lacks.
ADDED_COLUMNS = (("outbox", "dict_id", "INTEGER"),)

# What needs the added columns: run after they exist.
AFTER_UPGRADE = """
CREATE INDEX IF NOT EXISTS outbox_dict ON outbox (dict_id)
"""


def connect(path: Path | str, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open the pipeline database, creating its schema on first use.

    The connection is in autocommit mode (``isolation_level=None``): every
    write goes through :func:`transaction`, which issues ``BEGIN IMMEDIATE``
    so two legs never deadlock upgrading a read lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    try:
        _refuse_newer(conn, path)  # before anything is written to the file
    except BaseException:
        conn.close()
        raise
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, which is the point of the outbox.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        added = upgrade(conn)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
            (str(int(time.time()) - EPOCH_ORIGIN),),
        )
        meta_put(conn, "schema_version", str(SCHEMA_VERSION))
    if added:
        logger.info("pipeline database upgraded names=%s", ",".join(added))
    return conn


def _refuse_newer(conn: sqlite3.Connection, path: Path) -> None:
    """A rollback without its downgrade: reading on could misread rows."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    found = schema_version(conn) if has_meta else SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"pipeline database {path} is schema {found}, newer than this"
            f" release's {SCHEMA_VERSION}: run the newer release's"
            f" `appliance pipeline-downgrade --to {SCHEMA_VERSION}` first"
        )


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema the database was last opened with (1 before it was recorded)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None and str(row[0]).isdigit() else 1


def upgrade(conn: sqlite3.Connection) -> list[str]:
    """Bring an older database's tables forward (inside the caller's transaction).

    Adds the columns of ``ADDED_COLUMNS`` a table lacks, then what depends on
    them; returns the ``table.column`` names added. Rows already there keep
    their values: a ``dict_id`` added to the outbox is NULL in every old row,
    which reads as "payload stored as text" (see :mod:`appliance.payloads`).
    """
    added: list[str] = []
    for table, column, kind in ADDED_COLUMNS:
        present = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            added.append(f"{table}.{column}")
    for statement in AFTER_UPGRADE.split(";"):
        if statement.strip():
            conn.execute(statement)
    return added


def connect_existing(path: Path | str) -> sqlite3.Connection:
    """Open an existing pipeline database for reading; never create one.

    An operator command with a mistyped path must say so, not show an empty,
    healthy-looking box.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline.db_path: no pipeline database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    conn.row_factory = sqlite3.Row
    return conn


# Waiting for the write lock: SQLite's own busy handler sleeps 1, 2, 5, 10,
# ... then 100 ms between tries, so a leg that waited a while wakes up to
# 100 ms after the lock came free, and a leg that re-takes the lock right
# after its COMMIT (a busy transformer) starves the others. BEGIN IMMEDIATE
# is tried instead every few milliseconds at most, up to the connection's
# busy timeout; a try costs microseconds.
_BEGIN_FIRST_S = 0.0005
_BEGIN_MAX_S = 0.004


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retried briskly while another leg writes."""
    saved = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + saved / 1000
        delay = _BEGIN_FIRST_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = (
                    str(exc)
                    .lower()
                    .startswith(("database is locked", "database is busy"))
                )
                if not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, _BEGIN_MAX_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {saved}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

    Waiting for the write lock polls every few ms (see ``_begin_immediate``)
    up to the connection's busy timeout, then raises "database is locked".
    """
    _begin_immediate(conn)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def epoch(conn: sqlite3.Connection) -> int:
    """Seconds from 2020-01-01 to this database's creation (the version prefix)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return int(row[0])


def version_of(epoch_value: int, raw_id: int) -> int:
    """The version of a change made by raw entry ``raw_id`` (see module doc)."""
    return epoch_value * VERSION_SPAN + raw_id


def meta_get(conn: sqlite3.Connection, key: str) -> str | None:
    """The text stored under ``key`` in ``meta``, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def meta_put(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Store ``value`` under ``key`` in ``meta`` (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add to a named counter (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    """Every counter by name."""
    return {r[0]: r[1] for r in conn.execute("SELECT name, value FROM counters")}


def park(
    conn: sqlite3.Connection,
    *,
    stage: str,
    reason: str,
    table: str = "",
    position: str = "",
    field: str = "",
    byte_offset: int | None = None,
    data: bytes = b"",
    expected: str = "",
    raw_id: int | None = None,
    payload: Any = None,
) -> int:
    """Park a record in dead letters (inside the caller's transaction)."""
    cur = conn.execute(
        "INSERT INTO dead_letters (created_at, stage, table_name, position, field,"
        " byte_offset, bytes_hex, expected, reason, raw_id, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            time.time(),
            stage,
            table,
            position,
            field,
            byte_offset,
            data.hex().upper(),
            expected,
            reason,
            raw_id,
            None if payload is None else json.dumps(payload, default=str),
        ),
    )
    bump(conn, f"{stage}.dead_letters")
    return int(cur.lastrowid or 0)


PRUNE_ROWS = 10_000
"""At most this many rows of each table per prune (one write transaction)."""


def prune_processed(
    conn: sqlite3.Connection,
    keep_h: float,
    now: float | None = None,
    limit: int = PRUNE_ROWS,
) -> tuple[int, int]:
    """Delete raw entries and changes done more than ``keep_h`` hours ago.

    Inside the caller's transaction; returns (raw entries, changes) deleted.
    Without it the two tables grow with every journal entry for the life of
    the box. Kept whatever their age:

    - rows not done yet (``state = 0``: the transformer's and the enricher's
      backlog);
    - the newest row of each table: the guardian takes ``max(id)`` as its
      bracket (``guardian.bracket.low_marks``);
    - raw entries from the oldest one an open commit cycle holds
      (``held_changes``, before images waiting for their after image left
      out) on: the cycle's end and the guardian's walk back to its ``C SC``
      need them;
    - raw entries a parked dead letter names (a technician's retry decodes
      them again).

    ``mined_at`` grows with ``id``, so the oldest done rows go first, in id
    order, at most ``limit`` per table per call.
    """
    cutoff = (time.time() if now is None else now) - keep_h * 3600
    # Open cycles pin their entries; a held before image (``before:``) does
    # not: it carries its own image and may wait long for its after image.
    raw = _prune_done(
        conn,
        "raw_entries",
        cutoff,
        limit,
        " AND id < coalesce((SELECT min(raw_id) FROM held_changes"
        " WHERE cycle_key NOT LIKE 'before:%'), id + 1)"
        " AND id NOT IN (SELECT raw_id FROM dead_letters"
        " WHERE state = 'parked' AND raw_id IS NOT NULL)",
    )
    return raw, _prune_done(conn, "changes", cutoff, limit)


def _prune_done(
    conn: sqlite3.Connection, table: str, cutoff: float, limit: int, kept: str = ""
) -> int:
    """Delete done rows of ``table`` older than ``cutoff``, the ``limit`` oldest.

    ``kept`` (more conditions on ``id``) applies before the LIMIT: rows that
    must stay never use up the limit, else enough of them would stop the
    prune for good. The oldest candidate is looked at first (one index
    seek), so a sweep with nothing old costs that; else at most ``limit``
    rows are visited (not every old row: after an outage's backlog ages out
    there can be millions).
    """
    candidates = (
        f"SELECT id FROM {table} WHERE state = 1"
        f" AND id < (SELECT max(id) FROM {table}){kept} ORDER BY id LIMIT ?"
    )
    oldest = conn.execute(
        f"SELECT mined_at FROM {table} WHERE id IN ({candidates})", (1,)
    ).fetchone()
    if oldest is None or oldest[0] >= cutoff:
        return 0
    return conn.execute(
        f"DELETE FROM {table} WHERE id IN ({candidates}) AND mined_at < ?",
        (limit, cutoff),
    ).rowcount


def heartbeat(
    conn: sqlite3.Connection, leg: str, pid: int, state: str, status: str = ""
) -> None:
    """Record that a leg is alive (its own short transaction)."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO heartbeats (leg, pid, state, status, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (leg) DO UPDATE SET"
            " pid = excluded.pid, state = excluded.state,"
            " status = excluded.status, updated_at = excluded.updated_at",
            (leg, pid, state, status, time.time()),
        )
