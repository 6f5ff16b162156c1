"""A guardian job (check, load, repair), its ``r`` rows, the leg's constants."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance import store
from appliance.guardian import digest
from appliance.guardian.bracket import Marks
from appliance.guardian.reader import Head, TableReader

STAGE = "control"
HOUSEKEEP_EVERY_S = 1.0
# Cache rows deleted per transaction (a few ms of write lock each).
PURGE_ROWS = 5000
REQUESTS_PER_STEP = 20
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0
REPAIR_TRIES = 10
REPAIR_AT_MOST = 1000  # pks per hub request (the hub splits longer lists)
LOAD_PAGES = 10  # pages of read_chunk_rows held per bracket of a load
LOADED = "guardian.loaded."
NEXT_CHECK = "guardian.next_check_at"
RUN_SEQ = "guardian.run_seq"


@dataclass
class Job:
    """One read in progress (see the module docstring)."""

    kind: str  # check | load | repair
    table: str  # system name, as in ibmi.tables
    run: str
    mode: str
    reason: str = ""
    send_as: str = "load"  # source.guardian.kind of r rows: load | resend | repair
    request: str | None = None
    keys: list[str] = field(default_factory=list)
    narrow: list[list[int]] = field(default_factory=list)
    table_reader: TableReader | None = None
    marks: Marks | None = None
    head_before: Head | None = None
    head_after: Head | None = None
    after: Sequence[Any] | None = None
    start_after: Sequence[Any] | None = None  # a load's key at its bracket's start
    done_reading: bool = False
    more: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    found: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    rows_read: int = 0
    read_at: float = 0.0
    wait_since: float = 0.0
    attempt: int = 0
    tries: int = 0  # repair: reads so far of keys that kept changing
    not_before: float = 0.0

    def restart(self) -> None:
        """Forget the read in progress (its cache rows are deleted by the caller)."""
        self.marks = self.head_before = self.head_after = None
        self.done_reading = self.more = False
        self.rows, self.found = [], {}
        if self.kind == "check":
            self.after, self.rows_read = None, 0


def insert_r(
    conn: sqlite3.Connection,
    job: Job,
    table: TableReader,
    rows: Sequence[tuple[str, dict[str, Any] | None]],
) -> None:
    """``r`` changes (docs/guardian.md §3): version ``v_low`` via raw_id r_low."""
    assert job.marks is not None
    layout = table.layout
    source: dict[str, Any] = {
        "library": layout.library,
        "table": layout.table,
        "guardian": {"run": job.run, "kind": job.send_as, "request": job.request},
        "read_at": job.read_at,
    }
    read_ms = int(job.read_at * 1000)
    now = time.time()

    def source_of(pk: str) -> str:
        if job.send_as == "repair":  # the pk text the hub asked (guardian.md §3)
            source["guardian"]["pk"] = pk
        return json.dumps(source, ensure_ascii=False, separators=(",", ":"))

    conn.executemany(
        "INSERT INTO changes (raw_id, table_name, op, key, before, after, source,"
        " entry_ts_ms, mined_at) VALUES (?, ?, 'r', ?, NULL, ?, ?, ?, ?)",
        [
            (
                job.marks.r_low,
                table.table,
                pk,
                None if row is None else digest.compact(row),
                source_of(pk),
                read_ms,
                now,
            )
            for pk, row in rows
        ],
    )
    if rows:
        store.bump(conn, "control.r_rows", len(rows))
