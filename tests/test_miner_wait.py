"""The waiting read (``ibmi.wait_s``): emulator through psqlODBC, and fakes.

The integration tests build their own emulator database on the shared
PostgreSQL and read it as a least-privilege role through the miner's ODBC
boundary (:mod:`appliance.source`). Timings are bounded generously: the
machine may be busy, so only the shapes are asserted (a call that waits, a
call that returns early when an entry comes, a bounded number of calls when
idle). A fake cursor plays what the emulator cannot: IBM i's EOF_DELAY
cursor, which streams rows and never ends.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyodbc
import pytest

from appliance import daemon, journal, miner, source, store
from appliance.config import BoxSettings, IbmiSection
from appliance.emulator import Emulator, workload

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

WAIT_S = 2


@dataclass
class Box:
    emu: Emulator
    ibmi: IbmiSection
    db_path: Path

    def settings(self, **ibmi: Any) -> BoxSettings:
        return BoxSettings(
            store={"id": "MQ01"},
            ibmi=self.ibmi.model_copy(update=ibmi),
            pipeline={"db_path": self.db_path},
        )

    def leg(self, **ibmi: Any) -> miner.MinerLeg:
        conn = store.connect(self.db_path)
        return miner.MinerLeg(self.settings(**ibmi), conn, own_store=True)

    def counters(self) -> dict[str, int]:
        conn = sqlite3.connect(self.db_path)
        try:
            return store.counters(conn)
        finally:
            conn.close()

    def head_params(self, window: int = 100) -> tuple[Any, ...]:
        """Window parameters starting just past the journal's last entry."""
        head = self.emu.head()
        start = (head.sequence or 0) + 1
        return (
            self.ibmi.journal_library,
            self.ibmi.journal_name,
            head.receiver_library,
            head.receiver_name,
            Decimal(start),
            head.receiver_library,
            head.receiver_name,
            Decimal(start + window - 1),
        )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    pg = dict(services.ensure_up()["postgres"])
    password = Path(pg["password_file"]).read_text().strip()
    base = f"host={pg['host']} port={pg['port']} user={pg['user']} password={password}"
    name = f"wait_{uuid.uuid4().hex[:10]}"
    role = f"{name}_reader"
    with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    emu = Emulator(f"{base} dbname={name}", gap_rate=0.0, seed=3)
    secret = tmp_path / "ibmi.password"
    reader_password = secrets.token_urlsafe(18)
    secret.write_text(reader_password)
    secret.chmod(0o600)
    try:
        emu.install()
        emu.grant_reader(role, reader_password)
        workload.seed_store(emu, 3, seed=1)
        ibmi = IbmiSection(
            dialect="emulator",
            driver="PostgreSQL Unicode",
            host=pg["host"],
            port=pg["port"],
            database=name,
            user=role,
            password_file=secret,
            window=100,
            poll_interval_s=0.05,
        )
        yield Box(emu, ibmi, tmp_path / "pipeline.db")
    finally:
        emu.close()
        with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _waiting_call(box: Box, params: tuple[Any, ...]) -> tuple[list[Any], float]:
    conn = source.connect(box.ibmi)
    try:
        sql = journal.window_sql("emulator", eof_delay=WAIT_S)
        started = time.monotonic()
        rows, cancelled = source.fetch_bounded(
            conn, sql, params, "test", max_rows=100, deadline_s=WAIT_S + 5
        )
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert cancelled is False
    return rows, elapsed


def _drain(leg: miner.MinerLeg) -> None:
    """Step a polling leg until a step finds nothing to do."""
    leg.setup()
    for _ in range(1000):
        if not leg.step():
            return
    raise AssertionError("miner never caught up")


@pytest.mark.integration
def test_idle_waiting_call_returns_nothing_after_eof_delay(box: Box) -> None:
    rows, elapsed = _waiting_call(box, box.head_params())
    assert rows == []
    assert WAIT_S - 0.1 <= elapsed < WAIT_S + 2.5


@pytest.mark.integration
def test_entry_committed_during_the_wait_ends_that_same_call(box: Box) -> None:
    params = box.head_params()
    start = int(params[4])
    writer = threading.Timer(0.3, lambda: workload.run(box.emu, 0, changes=1, seed=11))
    writer.start()
    try:
        rows, elapsed = _waiting_call(box, params)
    finally:
        writer.join()
    assert elapsed < 1.0
    assert rows, "the committed change did not come back from the waiting call"
    assert int(rows[0][1]) == start  # the first new entry, in order
    assert all(int(r[1]) >= start for r in rows)


@pytest.mark.integration
def test_deadline_cancels_a_statement_that_does_not_end(box: Box) -> None:
    """The guard for a real EOF_DELAY cursor: cancelled, connection reusable."""
    conn = source.connect(box.ibmi)
    try:
        started = time.monotonic()
        rows, cancelled = source.fetch_bounded(
            conn, "SELECT pg_sleep(20)", (), "test", max_rows=1, deadline_s=0.5
        )
        elapsed = time.monotonic() - started
        again = source.fetch_all(conn, "SELECT 1", (), "test")
    finally:
        conn.close()
    assert cancelled is True and rows == []
    assert elapsed < 5.0
    assert [tuple(r) for r in again] == [(1,)]


@pytest.mark.integration
def test_idle_leg_makes_one_waiting_call_per_wait(box: Box) -> None:
    _drain(box.leg())
    before = box.counters()
    assert "miner.waits" not in before  # wait_s = 0 never sends EOF_DELAY
    leg = box.leg(wait_s=WAIT_S)
    stopper = daemon.Stopper()
    runner = threading.Thread(
        target=daemon.run,
        args=(leg,),
        kwargs={"idle_s": box.ibmi.poll_interval_s, "stopper": stopper},
    )
    started = time.monotonic()
    runner.start()
    time.sleep(5.0)
    stopper.event.set()
    period = time.monotonic() - started
    runner.join(timeout=WAIT_S + 10)
    assert not runner.is_alive()
    after = box.counters()
    windows = after["miner.windows"] - before.get("miner.windows", 0)
    waits = after["miner.waits"]
    bound = math.ceil(period / WAIT_S) + 1
    assert 1 <= waits <= bound
    assert windows <= bound
    assert after.get("miner.rows", 0) == before.get("miner.rows", 0)


@pytest.mark.integration
def test_waiting_leg_stores_a_new_change_within_a_second(box: Box) -> None:
    _drain(box.leg())
    leg = box.leg(wait_s=WAIT_S)
    leg.setup()
    assert leg.step() is True  # an empty wait of WAIT_S is the pause
    writer = threading.Timer(0.3, lambda: workload.run(box.emu, 0, changes=1, seed=12))
    started = time.monotonic()
    writer.start()
    try:
        assert leg.step() is True
    finally:
        writer.join()
    elapsed = time.monotonic() - started
    leg.close()
    last = box.emu.head().sequence
    conn = sqlite3.connect(box.db_path)
    try:
        stored = conn.execute("SELECT max(sequence) FROM raw_entries").fetchone()
    finally:
        conn.close()
    assert elapsed < 1.0
    assert stored[0] is not None and stored[0] > 0
    assert last is not None and stored[0] <= last


class StreamingCursor:
    """A cursor that hands out ``rows`` and then blocks until cancelled."""

    def __init__(self, rows: list[tuple[int]], *, endless: bool = False) -> None:
        self.rows = rows
        self.endless = endless
        self.cancelled = threading.Event()
        self.closed = False

    def execute(self, sql: str, *params: Any) -> None:
        del sql, params

    def fetchone(self) -> tuple[int] | None:
        if self.endless:
            return (len(self.rows),)
        if self.rows:
            return self.rows.pop(0)
        if self.cancelled.wait(10):
            raise pyodbc.OperationalError("HY008", "[HY008] Operation canceled")
        raise AssertionError("the statement was never cancelled")

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        self.closed = True


class OneCursor:
    def __init__(self, cursor: StreamingCursor) -> None:
        self.made = cursor

    def cursor(self) -> StreamingCursor:
        return self.made


def test_streamed_rows_are_kept_when_the_stream_goes_quiet() -> None:
    cursor = StreamingCursor([(7,), (8,)])
    started = time.monotonic()
    rows, cancelled = source.fetch_bounded(
        OneCursor(cursor), "SQL", (), "test", max_rows=100, deadline_s=8, settle_s=0.1
    )
    assert rows == [(7,), (8,)] and cancelled is True
    assert time.monotonic() - started < 3.0  # the settle, not the deadline
    assert cursor.closed


def test_silent_stream_is_cancelled_at_the_deadline() -> None:
    cursor = StreamingCursor([])
    started = time.monotonic()
    rows, cancelled = source.fetch_bounded(
        OneCursor(cursor), "SQL", (), "test", max_rows=100, deadline_s=0.3, settle_s=0.1
    )
    assert rows == [] and cancelled is True
    assert 0.25 <= time.monotonic() - started < 3.0
    assert cursor.closed


def test_endless_stream_stops_at_one_window() -> None:
    cursor = StreamingCursor([], endless=True)
    rows, cancelled = source.fetch_bounded(
        OneCursor(cursor), "SQL", (), "test", max_rows=50, deadline_s=5
    )
    assert len(rows) == 50 and cancelled is False
    assert cursor.closed and not cursor.cancelled.is_set()


def test_waiting_sql_adds_eof_delay_and_drops_the_sort() -> None:
    for dialect in ("ibmi", "emulator"):
        plain = journal.window_sql(dialect)
        sql = journal.window_sql(dialect, eof_delay=7)
        assert "ENDING_SEQUENCE => CAST(? AS DECIMAL(21,0)), EOF_DELAY => 7" in sql
        assert "ORDER BY" not in sql and sql.count("?") == plain.count("?")
    with pytest.raises(ValueError, match="EOF_DELAY must be a whole number"):
        journal.window_sql("ibmi", eof_delay=-1)
