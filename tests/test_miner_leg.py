"""Unit tests of the miner leg against an in-memory journal (no ODBC).

The integration tests in test_miner.py drive the same leg through real ODBC
and the emulator; these isolate the leg's own failure handling.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyodbc
import pytest

from appliance import daemon, miner, store
from appliance.config import BoxSettings, IbmiSection
from appliance.errors import DataGapError

TS = dt.datetime(2026, 12, 4, 8, 0, 0)


@dataclass
class FakeReceiver:
    name: str
    first: int
    last: int
    status: str = "ATTACHED"
    attach: dt.datetime = TS
    previous: str | None = None
    next: str | None = None
    shown_last: int | None = None  # a stale LAST_SEQUENCE_NUMBER, shown once


@dataclass
class FakeJournal:
    receivers: list[FakeReceiver] = field(default_factory=list)
    failures: int = 0
    calls: list[str] = field(default_factory=list)

    def add(self, name: str, count: int, *, reset: bool) -> FakeReceiver:
        before = self.receivers[-1] if self.receivers else None
        first = 1 if reset or before is None else before.last + 1
        if before is not None:
            before.status, before.next = "ONLINE", name
        stamp = TS + dt.timedelta(hours=len(self.receivers))
        r = FakeReceiver(name, first, first + count - 1, attach=stamp)
        r.previous = before.name if before else None
        self.receivers.append(r)
        return r

    def grow(self, count: int) -> None:
        self.receivers[-1].last += count

    def receiver_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for r in self.receivers:
            last = r.last if r.shown_last is None else r.shown_last
            r.shown_last = None
            prev_lib = "MAG" if r.previous else None
            next_lib = "MAG" if r.next else None
            ident = ("MAG", r.name, r.status, r.attach, None, Decimal(r.first))
            rows.append((*ident, Decimal(last), prev_lib, r.previous, next_lib, r.next))
        return rows

    def entry_rows(self, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        name, start, end = params[3], int(params[4]), int(params[7])
        r = next((x for x in self.receivers if x.name == name), None)
        if r is None:
            raise pyodbc.Error("42704", f"[42704] CPF9801 receiver {name} not found")
        lo, hi = max(start, r.first), min(end, r.last)
        return [self._entry(r, s) for s in range(lo, hi + 1)]

    @staticmethod
    def _entry(r: FakeReceiver, seq: int) -> tuple[Any, ...]:
        table = "PRIX" if seq % 3 else "CLIENT"  # CLIENT is not relayed
        code = "C" if seq % 5 == 0 else "R"
        obj = "" if code == "C" else f"{table:<10}MAG       {table:<10}"
        head = (TS, Decimal(seq), code, "PT", Decimal(seq), Decimal(0), obj)
        job = ("*QDDS", "0", "QPADEV0001", "CAISSE", "123456", "CAISSE", "PGM")
        return (*head, *job, "MAG", r.name, "", b"\xc1")


class FakeCursor:
    def __init__(self, fake: FakeJournal) -> None:
        self.fake = fake
        self.rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, *params: Any) -> None:
        if self.fake.failures:
            self.fake.failures -= 1
            raise pyodbc.OperationalError("08S01", "[08S01] communication link failure")
        if "JOURNAL_RECEIVER_INFO" in sql:
            self.fake.calls.append("info")
            self.rows = self.fake.receiver_rows()
        else:
            self.fake.calls.append("window")
            self.rows = self.fake.entry_rows(params)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def close(self) -> None:
        pass


class FakeConnection:
    timeout = 0

    def __init__(self, fake: FakeJournal) -> None:
        self.fake = fake

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.fake)

    def close(self) -> None:
        pass


def settings(tmp_path: Path, window: int = 100) -> BoxSettings:
    return BoxSettings(
        store={"id": "MQ01"},
        ibmi=IbmiSection(
            dialect="emulator", window=window, poll_interval_s=0.05, preflight=False
        ),
        pipeline={"db_path": tmp_path / "pipeline.db"},
    )


def leg_for(
    fake: FakeJournal, conn: sqlite3.Connection, s: BoxSettings
) -> miner.MinerLeg:
    leg = miner.MinerLeg(s, conn, lambda ibmi: FakeConnection(fake))
    leg.setup()
    return leg


def drain(leg: miner.MinerLeg, idle_steps: int = 3) -> None:
    idle = 0
    for _ in range(10_000):
        idle = 0 if leg.step() else idle + 1
        if idle >= idle_steps:
            return
    raise AssertionError("miner never went idle")


def positions(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    rows = conn.execute("SELECT receiver_name, sequence FROM raw_entries ORDER BY id")
    return [(r[0], r[1]) for r in rows]


def expected(fake: FakeJournal) -> list[tuple[str, int]]:
    out = []
    for r in fake.receivers:
        for seq in range(r.first, r.last + 1):
            if seq % 5 == 0 or seq % 3:  # C entries, and R entries of PRIX
                out.append((r.name, seq))
    return out


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.connect(tmp_path / "pipeline.db")


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(miner, "BACKOFF_FIRST_S", 0.0)


def test_miner_stores_every_relevant_entry_once_across_resets(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    fake = FakeJournal()
    fake.add("QSQJRN0001", 450, reset=True)
    fake.add("QSQJRN0002", 120, reset=False)
    fake.add("QSQJRN0003", 230, reset=True)
    leg = leg_for(fake, conn, settings(tmp_path))
    drain(leg)
    assert positions(conn) == expected(fake)
    counts = store.counters(conn)
    assert counts["miner.entries"] == len(expected(fake))
    head = conn.execute("SELECT receiver_name, sequence FROM journal_head").fetchone()
    assert tuple(head) == ("QSQJRN0003", 230)
    assert leg.status() == "receiver=QSQJRN0003 seq=230 head=230"


def test_restart_resumes_after_the_last_stored_entry(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    fake = FakeJournal()
    fake.add("QSQJRN0001", 300, reset=True)
    first = leg_for(fake, conn, settings(tmp_path))
    for _ in range(3):
        first.step()
    first.close()
    fake.add("QSQJRN0002", 200, reset=True)
    again = store.connect(tmp_path / "pipeline.db")
    drain(leg_for(fake, again, settings(tmp_path)))
    assert positions(again) == expected(fake)


def test_communication_failure_is_retried_not_a_gap(
    tmp_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeJournal()
    fake.add("QSQJRN0001", 250, reset=True)
    leg = leg_for(fake, conn, settings(tmp_path))
    leg.step()
    fake.failures = 3
    with caplog.at_level(logging.WARNING, logger="appliance.miner"):
        drain(leg, idle_steps=6)
    assert positions(conn) == expected(fake)
    assert "miner.data_gaps" not in store.counters(conn)
    assert "attempt=3" in caplog.text


def test_deleted_bookmarked_receiver_raises_and_records_a_gap(
    tmp_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeJournal()
    fake.add("QSQJRN0001", 500, reset=True)
    fake.add("QSQJRN0002", 100, reset=True)
    leg = leg_for(fake, conn, settings(tmp_path))
    leg.step()
    leg.step()
    stored = positions(conn)
    del fake.receivers[0]
    with caplog.at_level(logging.ERROR), pytest.raises(DataGapError) as info:
        drain(leg)
    assert info.value.cpf == "CPF9801"
    assert "QSQJRN0001" in str(info.value)
    assert positions(conn) == stored  # nothing from QSQJRN0002 was taken instead
    assert store.counters(conn)["miner.data_gaps"] == 1
    beat = conn.execute("SELECT state, status FROM heartbeats WHERE leg = 'miner'")
    state, status = beat.fetchone()
    assert state == "data_gap" and "QSQJRN0001" in status
    assert "data gap" in caplog.text
    with pytest.raises(DataGapError):
        leg.step()


def test_stale_last_sequence_after_chgjrn_does_not_skip_the_tail(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """jhc PR #83: the just-detached receiver shows an old last sequence once."""
    fake = FakeJournal()
    fake.add("QSQJRN0001", 400, reset=True)
    leg = leg_for(fake, conn, settings(tmp_path, window=1000))
    drain(leg)
    fake.grow(100)
    fake.add("QSQJRN0002", 50, reset=True)
    fake.receivers[0].shown_last = 400
    drain(leg)
    assert positions(conn) == expected(fake)


def test_backlog_pauses_reading_and_warns_once(
    tmp_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeJournal()
    fake.add("QSQJRN0001", 100, reset=True)
    leg = leg_for(fake, conn, settings(tmp_path, window=2))
    rows = [("MAG/QSQJRN", "MAG", "X", i, "C", "SC", "", 0.0) for i in range(101)]
    with store.transaction(conn):
        conn.executemany(
            "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
            " sequence, code, entry_type, entry_ts, mined_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    with caplog.at_level(logging.WARNING, logger="appliance.miner"):
        assert leg.step() is False
        assert leg.step() is False
    assert fake.calls == []
    assert caplog.text.count("transformer behind") == 1
    conn.execute("UPDATE raw_entries SET state = 1")
    assert leg.step() is True


def test_leg_runs_under_the_daemon_loop(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """build()-style use: daemon.run drives the leg and closes it."""
    fake = FakeJournal()
    fake.add("QSQJRN0001", 30, reset=True)
    leg = miner.MinerLeg(settings(tmp_path), conn, lambda ibmi: FakeConnection(fake))
    beats: list[tuple[str, str]] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = daemon.run(
            leg,
            idle_s=0.01,
            heartbeat=lambda state, text: beats.append((state, text)),
            max_steps=4,
        )
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert code == 0
    assert positions(conn) == expected(fake)
    assert beats[-1] == ("stopped", "receiver=QSQJRN0001 seq=30 head=30")
