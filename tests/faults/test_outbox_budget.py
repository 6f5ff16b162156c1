"""The outbox budget and the replay window, on a real SQLite pipeline database."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance import miner, outbox, shipper, store
from appliance.config import BoxSettings, IbmiSection, PipelineSection


def settings(tmp_path: Path, **pipeline: Any) -> BoxSettings:
    return BoxSettings(
        store={"id": "MQ01"},
        ibmi=IbmiSection(dialect="emulator", window=100, poll_interval_s=0.05),
        pipeline={"db_path": tmp_path / "pipeline.db", **pipeline},
    )


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.connect(tmp_path / "pipeline.db")


def add(conn: sqlite3.Connection, n: int, *, created_at: float, state: str) -> None:
    with store.transaction(conn):
        start = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        conn.executemany(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
            " payload, state, created_at, mined_at, confirmed_at)"
            " VALUES (0, ?, 50, ?, 'PRIX', 'u', ?, ?, ?, 0, ?)",
            [
                (
                    start + i + 1,
                    start + i + 1,
                    json.dumps({"s": i}),
                    state,
                    created_at,
                    created_at if state == "confirmed" else None,
                )
                for i in range(n)
            ],
        )


def test_budget_use_goes_ok_slow_paused_by_rows(conn: sqlite3.Connection) -> None:
    """7 of 10 rows is ok, 8 is slow (80 %), 10 is paused; confirmed rows are free."""
    budget = PipelineSection(outbox_budget_rows=10, outbox_slow_at=0.8)
    add(conn, 5, created_at=1000.0, state="confirmed")
    add(conn, 7, created_at=1000.0, state="pending")
    assert outbox.budget_use(conn, budget, now=1000.0).state == "ok"
    add(conn, 1, created_at=1000.0, state="sent")
    assert outbox.budget_use(conn, budget, now=1000.0).state == "slow"
    add(conn, 2, created_at=1000.0, state="in_flight")
    use = outbox.budget_use(conn, budget, now=1000.0)
    assert (use.state, use.rows, use.share) == ("paused", 10, 1.0)


def test_budget_use_counts_the_age_of_the_oldest_unconfirmed_row(
    conn: sqlite3.Connection,
) -> None:
    """One row unconfirmed for the whole age budget pauses the miner."""
    budget = PipelineSection(outbox_budget_rows=1000, outbox_budget_age_s=100)
    add(conn, 1, created_at=1000.0, state="sent")
    assert outbox.budget_use(conn, budget, now=1050.0).state == "ok"
    assert outbox.budget_use(conn, budget, now=1085.0).state == "slow"
    assert outbox.budget_use(conn, budget, now=1100.0).state == "paused"


def test_gate_pauses_with_an_alarm_drops_nothing_and_resumes(
    conn: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Paused: ERROR, counter, heartbeat; confirmed again: resumes by itself."""
    monkeypatch.setattr(outbox, "_MEASURE_EVERY_S", 0.0)
    gate = outbox.BudgetGate(PipelineSection(outbox_budget_rows=4))
    add(conn, 4, created_at=9e9, state="pending")
    with caplog.at_level(logging.INFO, logger="appliance.outbox"):
        assert gate.hold(conn) is True
        assert gate.hold(conn) is True
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "nothing dropped" in caplog.records[0].getMessage()
    assert store.counters(conn)["miner.budget_paused"] == 1
    beat = conn.execute(
        "SELECT state, status FROM heartbeats WHERE leg = 'outbox-budget'"
    ).fetchone()
    assert beat[0] == "paused" and "rows=4" in beat[1]
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 4

    with store.transaction(conn):
        outbox.confirm(conn, lane=0, upto=4)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="appliance.outbox"):
        assert gate.hold(conn) is False
    assert caplog.records[0].levelname == "INFO"
    assert store.counters(conn)["miner.budget_ok"] == 1
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 4


def test_gate_when_slow_lets_one_window_through_per_pause(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near the budget the miner reads, then waits SLOW_PAUSE_S before the next."""
    monkeypatch.setattr(outbox, "_MEASURE_EVERY_S", 0.0)
    monkeypatch.setattr(outbox, "SLOW_PAUSE_S", 60.0)
    gate = outbox.BudgetGate(PipelineSection(outbox_budget_rows=10))
    add(conn, 9, created_at=9e9, state="sent")
    assert gate.hold(conn) is False
    assert gate.hold(conn) is True
    assert gate.state == "slow"
    assert store.counters(conn)["miner.budget_slow"] == 1


def test_miner_does_not_read_the_journal_while_the_budget_is_spent(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """The miner's step returns without touching its source when paused."""
    add(conn, 3, created_at=9e9, state="pending")
    calls: list[object] = []

    def source(ibmi: object) -> object:
        calls.append(ibmi)
        raise AssertionError("the journal must not be read")

    leg = miner.MinerLeg(settings(tmp_path, outbox_budget_rows=3), conn, source)
    assert leg.step() is False
    assert calls == []
    assert store.counters(conn)["miner.budget_paused"] == 1


def test_shipper_sweep_prunes_confirmed_rows_after_the_replay_window(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """Confirmed rows older than the window go; recent or unconfirmed rows stay."""
    add(conn, 2, created_at=1000.0, state="confirmed")
    add(conn, 1, created_at=1000.0 + 7000, state="confirmed")
    add(conn, 1, created_at=1000.0, state="sent")
    leg = shipper.ShipperLeg(settings(tmp_path, replay_window_h=1), conn)
    with store.transaction(conn):
        leg._sweep(now=1000.0 + 7200)
    left = conn.execute("SELECT state, created_at FROM outbox ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in left] == [("confirmed", 8000.0), ("sent", 1000.0)]
    assert store.counters(conn)["shipper.pruned"] == 2


def test_shipper_sweep_prunes_relayed_raw_entries_and_changes(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """The same sweep deletes raw entries and changes done before the window."""
    for mined_at in (1000.0, 1000.0, 1000.0 + 7000):
        raw_id = conn.execute(
            "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
            " sequence, code, entry_type, entry_ts, mined_at, state)"
            " VALUES ('J', 'L', 'R', 1, 'R', 'UP', '', ?, 1)",
            (mined_at,),
        ).lastrowid
        conn.execute(
            "INSERT INTO changes (raw_id, table_name, op, key, source,"
            " entry_ts_ms, mined_at, state) VALUES (?, 'T', 'u', '{}', '{}', 0, ?, 1)",
            (raw_id, mined_at),
        )
    leg = shipper.ShipperLeg(settings(tmp_path, processed_keep_h=1), conn)
    with store.transaction(conn):
        leg._sweep(now=1000.0 + 7200)
    for table in ("raw_entries", "changes"):
        left = conn.execute(f"SELECT mined_at FROM {table}").fetchall()
        assert [r[0] for r in left] == [8000.0]
    counters = store.counters(conn)
    assert counters["shipper.pruned_raw"] == counters["shipper.pruned_changes"] == 2
