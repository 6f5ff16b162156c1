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


def _raw(conn: sqlite3.Connection, mined_at: float, state: int, cycle: int = 0) -> int:
    cur = conn.execute(
        "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
        " sequence, code, entry_type, entry_ts, commit_cycle, mined_at, state)"
        " VALUES ('J', 'L', 'R', 1, 'R', 'UP', '', ?, ?, ?)",
        (cycle, mined_at, state),
    )
    return int(cur.lastrowid or 0)


def _change(conn: sqlite3.Connection, raw_id: int, mined_at: float, state: int) -> int:
    cur = conn.execute(
        "INSERT INTO changes (raw_id, table_name, op, key, source, entry_ts_ms,"
        " mined_at, state) VALUES (?, 'T', 'u', '{}', '{}', 0, ?, ?)",
        (raw_id, mined_at, state),
    )
    return int(cur.lastrowid or 0)


def _ids(conn: sqlite3.Connection, table: str) -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_prune_processed_keeps_what_is_still_needed(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "p.db")
    now = 1_000_000.0
    old, young = now - 7 * 3600, now - 3600
    with store.transaction(conn):
        done_old = [_raw(conn, old, 1) for _ in range(3)]
        parked = _raw(conn, old, 1)
        store.park(conn, stage="transformer", reason="bad", raw_id=parked)
        new_old = _raw(conn, old, 0)  # not transformed yet, however old
        done_young = _raw(conn, young, 1)
        newest = _raw(conn, old - 1, 1)  # the newest row stays (guardian's max)
        ch_old = [_change(conn, r, old, 1) for r in done_old]
        ch_waiting = _change(conn, parked, old, 0)
        ch_young = _change(conn, done_young, young, 1)
        ch_newest = _change(conn, newest, old, 1)
    with store.transaction(conn):
        raw, changes = store.prune_processed(conn, 6, now)
    assert (raw, changes) == (3, 3)
    assert _ids(conn, "raw_entries") == [parked, new_old, done_young, newest]
    assert _ids(conn, "changes") == [ch_waiting, ch_young, ch_newest]
    assert ch_old[0] < ch_waiting
    # Nothing is older than 6 h any more: a second pass deletes nothing.
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now) == (0, 0)


def test_prune_processed_stops_at_an_open_commit_cycle(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "p.db")
    now = 1_000_000.0
    old = now - 7 * 3600
    with store.transaction(conn):
        before = _raw(conn, old, 1)
        start = _raw(conn, old, 1, cycle=9)  # its C SC, the cycle still open
        conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change)"
            " VALUES ('open:J:9', ?, '{}')",
            (start,),
        )
        inside = _raw(conn, old, 1, cycle=9)
        _raw(conn, old, 1)
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=10) == (1, 0)
    assert before not in _ids(conn, "raw_entries")
    assert {start, inside} <= set(_ids(conn, "raw_entries"))


def test_prune_processed_takes_at_most_limit_rows_per_table(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "p.db")
    now = 1_000_000.0
    with store.transaction(conn):
        for _ in range(10):
            _change(conn, _raw(conn, now - 7 * 3600, 1), now - 7 * 3600, 1)
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=4) == (4, 4)
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=4) == (4, 4)
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=4) == (1, 1)
    assert len(_ids(conn, "raw_entries")) == len(_ids(conn, "changes")) == 1


def test_parked_entries_and_held_before_images_do_not_stop_the_prune(
    tmp_path: Path,
) -> None:
    """The LIMIT counts only rows that may go; a before image pins nothing."""
    conn = store.connect(tmp_path / "p.db")
    now = 1_000_000.0
    old = now - 7 * 3600
    with store.transaction(conn):
        ids = [_raw(conn, old, 1) for _ in range(12)]
        for raw_id in ids[:5]:  # the five oldest named by parked dead letters
            store.park(conn, stage="transformer", reason="bad", raw_id=raw_id)
        conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change)"
            " VALUES ('before:J:PRIX:7', ?, '[]')",
            (ids[5],),
        )
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=5) == (5, 0)
    with store.transaction(conn):
        assert store.prune_processed(conn, 6, now, limit=5) == (1, 0)
    # Left: the parked five and the newest row.
    assert _ids(conn, "raw_entries") == [*ids[:5], ids[-1]]
