"""The pipeline database: schema, transactions, versions, dead letters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance import store


def test_versions_grow_across_a_reflash(tmp_path: Path) -> None:
    """A new database (new box) has a later epoch, so larger versions."""
    old = store.connect(tmp_path / "old.db")
    new = store.connect(tmp_path / "new.db")
    new.execute(
        "UPDATE meta SET value = ? WHERE key = 'epoch'", (str(store.epoch(old) + 1),)
    )
    biggest_old = store.version_of(store.epoch(old), store.VERSION_SPAN - 1)
    assert store.version_of(store.epoch(new), 1) > biggest_old
    assert store.version_of(store.epoch(old), 41) < 2**63


def test_epoch_is_kept_when_reopened(tmp_path: Path) -> None:
    """Reopening never changes the epoch (versions stay monotone)."""
    first = store.epoch(store.connect(tmp_path / "p.db"))
    assert store.epoch(store.connect(tmp_path / "p.db")) == first


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    """Output and done-marker move together or not at all."""
    conn = store.connect(tmp_path / "p.db")
    with pytest.raises(RuntimeError), store.transaction(conn):
        store.bump(conn, "x.done")
        raise RuntimeError("crash between two writes")
    assert store.counters(conn) == {}


def test_dead_letter_keeps_bytes_in_hex_and_counts(tmp_path: Path) -> None:
    """park() stores where, what and the bytes, and bumps <stage>.dead_letters."""
    conn = store.connect(tmp_path / "p.db")
    with store.transaction(conn):
        store.park(
            conn,
            stage="transformer",
            reason="short image",
            table="PRIX",
            position="QSQJRN0001:42",
            field="PRIX",
            byte_offset=10,
            data=b"\x12\x34\x5f",
            expected="55 bytes, got 30",
        )
    row = conn.execute("SELECT * FROM dead_letters").fetchone()
    assert row["bytes_hex"] == "12345F"
    assert row["position"] == "QSQJRN0001:42"
    assert store.counters(conn) == {"transformer.dead_letters": 1}


def test_outbox_lane_seq_is_unique_per_lane(tmp_path: Path) -> None:
    """The hub's watermark relies on one row per (lane, lane_seq)."""
    conn = store.connect(tmp_path / "p.db")
    insert = (
        "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
        " payload, created_at, mined_at) VALUES (0, 1, 80, 1, 'PRIX', 'u', '{}', 0, 0)"
    )
    conn.execute(insert)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(insert)


def test_transaction_waits_for_the_write_lock_then_gets_it(tmp_path: Path) -> None:
    """A leg waiting for another's write lock gets it once that one commits."""
    import threading

    holder = store.connect(tmp_path / "p.db")
    waiter = store.connect(tmp_path / "p.db", timeout_s=10.0)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO counters (name, value) VALUES ('held', 1)")
    entered = threading.Event()

    def wait_then_write() -> None:
        with store.transaction(waiter):
            entered.set()
            store.bump(waiter, "waited")

    thread = threading.Thread(target=wait_then_write)
    thread.start()
    assert not entered.wait(0.05)  # still held by the other connection
    holder.execute("COMMIT")
    thread.join(10.0)
    assert store.counters(holder) == {"held": 1, "waited": 1}
    # The connection's own busy timeout is back after the wait.
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_transaction_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    """Past the connection's busy timeout the wait ends as 'database is locked'."""
    holder = store.connect(tmp_path / "p.db")
    waiter = store.connect(tmp_path / "p.db", timeout_s=0.05)
    holder.execute("BEGIN IMMEDIATE")
    with (
        pytest.raises(sqlite3.OperationalError, match="database is locked"),
        store.transaction(waiter),
    ):
        pass  # pragma: no cover - never entered
    assert not waiter.in_transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    holder.execute("ROLLBACK")
