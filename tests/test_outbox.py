"""The outbox state machine, on a real SQLite pipeline database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from appliance import outbox, store


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.connect(tmp_path / "pipeline.db")


def add(conn: sqlite3.Connection, lane: int, lane_seq: int) -> int:
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
            " payload, created_at, mined_at) VALUES (?, ?, 50, ?, 'PRIX', 'u', ?,"
            " 0, 0)",
            (lane, lane_seq, lane * 1000 + lane_seq, json.dumps({"s": lane_seq})),
        )
    return int(cur.lastrowid or 0)


def states(conn: sqlite3.Connection) -> dict[tuple[int, int], str]:
    rows = conn.execute("SELECT lane, lane_seq, state FROM outbox")
    return {(r[0], r[1]): r[2] for r in rows}


def test_next_batch_takes_lower_lanes_first_in_lane_order(
    conn: sqlite3.Connection,
) -> None:
    """A backlog drains lane 0 before lane 1, each lane by lane_seq."""
    for lane, seq in [(1, 1), (0, 2), (2, 1), (0, 1), (1, 2)]:
        add(conn, lane, seq)
    batch = outbox.next_batch(conn, 4)
    assert [(r.lane, r.lane_seq) for r in batch] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert outbox.next_batch(conn, 0) == []


def test_row_walks_pending_in_flight_sent_confirmed(conn: sqlite3.Connection) -> None:
    """Produce, delivery report, confirmation: each moves the row one state on."""
    row_id = add(conn, 0, 1)
    with store.transaction(conn):
        assert outbox.mark_in_flight(conn, [row_id], now=100.0) == 1
    assert states(conn)[(0, 1)] == "in_flight"
    assert outbox.unconfirmed(conn) == 1
    with store.transaction(conn):
        ok, failed = outbox.apply_deliveries(conn, [outbox.Delivery(row_id, 2, 9120)])
    assert (ok, failed) == (1, 0)
    row = conn.execute(
        "SELECT state, partition, kafka_offset, attempts, sent_at FROM outbox"
    ).fetchone()
    assert tuple(row) == ("sent", 2, 9120, 1, 100.0)
    with store.transaction(conn):
        assert outbox.confirm(conn, 0, 1, now=200.0) == 1
    assert states(conn)[(0, 1)] == "confirmed"
    assert outbox.lane_confirmations(conn) == {0: 1}
    assert outbox.unconfirmed(conn) == 0


def test_confirm_covers_every_lane_seq_up_to_and_no_further(
    conn: sqlite3.Connection,
) -> None:
    """upto=3 confirms 1..3 of that lane only, and an older upto changes nothing."""
    ids = [add(conn, 0, s) for s in range(1, 5)] + [add(conn, 1, 1)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids)
        assert outbox.confirm(conn, 0, 3) == 3
        assert outbox.confirm(conn, 0, 2) == 0
    got = states(conn)
    assert [got[(0, s)] for s in range(1, 5)] == ["confirmed"] * 3 + ["in_flight"]
    assert got[(1, 1)] == "in_flight"
    assert outbox.lane_confirmations(conn) == {0: 3}


def test_report_after_confirmation_keeps_row_confirmed(
    conn: sqlite3.Connection,
) -> None:
    """A hub faster than the delivery report: the row stays confirmed."""
    row_id = add(conn, 0, 1)
    with store.transaction(conn):
        outbox.mark_in_flight(conn, [row_id])
        outbox.confirm(conn, 0, 1)
        outbox.apply_deliveries(conn, [outbox.Delivery(row_id, 0, 5)])
    row = conn.execute("SELECT state, kafka_offset FROM outbox").fetchone()
    assert tuple(row) == ("confirmed", 5)


def test_failed_report_requeues_row_and_later_rows_of_its_lane(
    conn: sqlite3.Connection,
) -> None:
    """Row 2 failed: 2 and 3 go back to pending, 1 and the other lane stay."""
    ids = [add(conn, 0, s) for s in (1, 2, 3)] + [add(conn, 1, 1)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids)
        reports = [
            outbox.Delivery(ids[0], 0, 1),
            outbox.Delivery(ids[1], -1, -1, "Local: Message timed out"),
            outbox.Delivery(ids[2], 0, 3),
        ]
        assert outbox.apply_deliveries(conn, reports) == (2, 1)
    got = states(conn)
    assert got == {
        (0, 1): "sent",
        (0, 2): "pending",
        (0, 3): "pending",
        (1, 1): "in_flight",
    }


def test_unconfirmed_rows_go_back_to_pending_after_timeout(
    conn: sqlite3.Connection,
) -> None:
    """in_flight and sent rows older than the timeout are resent; attempts grow."""
    old, recent, done = add(conn, 0, 1), add(conn, 0, 2), add(conn, 0, 3)
    with store.transaction(conn):
        outbox.mark_in_flight(conn, [old, done], now=100.0)
        outbox.mark_in_flight(conn, [recent], now=125.0)
        outbox.apply_deliveries(conn, [outbox.Delivery(old, 0, 1)])
        conn.execute("UPDATE outbox SET state = 'confirmed' WHERE id = ?", (done,))
        assert outbox.requeue_expired_lane(conn, 0, timeout_s=20, now=130.0) == 1
        outbox.mark_in_flight(conn, [old], now=131.0)
    row = conn.execute("SELECT state, attempts FROM outbox WHERE id = ?", (old,))
    assert tuple(row.fetchone()) == ("in_flight", 2)
    assert states(conn)[(0, 2)] == "in_flight"
    assert states(conn)[(0, 3)] == "confirmed"


def test_in_flight_rows_are_requeued_at_start(conn: sqlite3.Connection) -> None:
    """A crash between produce and report leaves in_flight rows; start resets them."""
    a, b = add(conn, 0, 1), add(conn, 0, 2)
    with store.transaction(conn):
        outbox.mark_in_flight(conn, [a, b])
        outbox.apply_deliveries(conn, [outbox.Delivery(a, 0, 0)])
        assert outbox.requeue_in_flight(conn) == 1
    assert states(conn) == {(0, 1): "sent", (0, 2): "pending"}


def test_prune_deletes_only_confirmed_rows_past_the_window(
    conn: sqlite3.Connection,
) -> None:
    """Confirmed and old: gone. Confirmed and recent, or unconfirmed: kept."""
    ids = [add(conn, 0, s) for s in (1, 2, 3)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids, now=0.0)
        outbox.confirm(conn, 0, 1, now=1000.0)
        outbox.confirm(conn, 0, 2, now=9000.0)
        assert outbox.prune(conn, window_h=1, now=1000.0 + 3601) == 1
    assert set(states(conn)) == {(0, 2), (0, 3)}
    assert outbox.state_counts(conn) == {
        "pending": 0,
        "in_flight": 1,
        "sent": 0,
        "confirmed": 1,
    }


def test_replay_sends_confirmed_rows_again(conn: sqlite3.Connection) -> None:
    """An operator's replay from lane_seq 2 puts confirmed rows 2.. back to pending."""
    ids = [add(conn, 0, s) for s in (1, 2, 3)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids)
        outbox.confirm(conn, 0, 3)
        assert outbox.replay(conn, 0, 2) == 2
    assert [r.lane_seq for r in outbox.next_batch(conn, 10)] == [2, 3]


def _sent(conn: sqlite3.Connection, lane: int, count: int, at: float) -> list[int]:
    first = (
        1
        + (
            conn.execute(
                "SELECT coalesce(max(lane_seq), 0) FROM outbox WHERE lane = ?", (lane,)
            ).fetchone()[0]
        )
    )
    ids = [add(conn, lane, seq) for seq in range(first, first + count)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids, now=at)
        outbox.apply_deliveries(conn, [outbox.Delivery(i, 0, i) for i in ids])
    return ids


def _sweep(pacer: outbox.ResendPacer, conn: sqlite3.Connection, now: float) -> int:
    with store.transaction(conn):
        moved = pacer.sweep(conn, now)
        # What went back to pending is produced again at once.
        ids = [
            r[0] for r in conn.execute("SELECT id FROM outbox WHERE state = 'pending'")
        ]
        outbox.mark_in_flight(conn, ids, now=now)
        outbox.apply_deliveries(conn, [outbox.Delivery(i, 0, i) for i in ids])
    return moved


def test_hub_outage_resends_everything_once_then_probes_with_backoff(
    conn: sqlite3.Connection,
) -> None:
    """The worked example of ResendPacer: 5,400 resends in 10 minutes, not 100,000."""
    pacer = outbox.ResendPacer(timeout_s=30, probe_rows=100, max_backoff=8, now=0.0)
    pacer.confirmed({0: 0}, now=0.0)
    _sent(conn, 0, 5000, at=0.0)
    rounds = {}
    for second in range(1, 601):
        moved = _sweep(pacer, conn, float(second))
        if moved:
            rounds[second] = moved
    assert rounds == {31: 5000, 91: 100, 211: 100, 451: 100}
    # The hub is back: its confirmation resets the lane, nothing is due at once.
    pacer.confirmed({0: 4000}, now=601.0)
    assert _sweep(pacer, conn, 602.0) == 0
    # The probes were the head of the lane: sent once, again at 31 s, then 3 probes.
    by_attempts = dict(
        conn.execute(
            "SELECT attempts, count(*) FROM outbox WHERE lane = 0 GROUP BY attempts"
        ).fetchall()
    )
    assert by_attempts == {5: 100, 2: 4900}
    head = conn.execute("SELECT max(lane_seq) FROM outbox WHERE attempts = 5")
    assert head.fetchone()[0] == 100


def test_a_lane_catching_up_is_not_resent(conn: sqlite3.Connection) -> None:
    """Old rows of a lane whose confirmations keep moving are left to the hub."""
    pacer = outbox.ResendPacer(timeout_s=30, now=0.0)
    _sent(conn, 0, 1000, at=0.0)
    for second in range(1, 301):
        if second % 20 == 0:  # the hub confirms 50 more every 20 s
            pacer.confirmed({0: second // 20 * 50}, now=float(second))
        assert _sweep(pacer, conn, float(second)) == 0


def test_only_the_stalled_lane_is_resent(conn: sqlite3.Connection) -> None:
    """A gap on lane 1 (hub waiting for a lost message) resends lane 1 only."""
    pacer = outbox.ResendPacer(timeout_s=30, now=0.0)
    _sent(conn, 0, 10, at=0.0)
    lane1 = _sent(conn, 1, 10, at=0.0)
    moved: dict[float, int] = {}
    for second in range(1, 61):
        pacer.confirmed({0: second}, now=float(second))  # lane 0 moves
        if n := _sweep(pacer, conn, float(second)):
            moved[second] = n
    assert moved == {31: 10}
    attempts = {
        r[0]: r[1]
        for r in conn.execute("SELECT id, attempts FROM outbox WHERE lane = 1")
    }
    assert set(attempts.values()) == {2} and set(attempts) == set(lane1)


def test_after_a_restart_nothing_is_resent_before_one_timeout(
    conn: sqlite3.Connection,
) -> None:
    """Rows sent long before the process started wait one timeout from the start."""
    _sent(conn, 0, 5, at=0.0)
    pacer = outbox.ResendPacer(timeout_s=30, now=1000.0)
    assert _sweep(pacer, conn, 1029.0) == 0
    assert _sweep(pacer, conn, 1030.0) == 5


def test_unconfirmed_counts_read_only_the_unconfirmed_part_of_the_index(
    conn: sqlite3.Connection,
) -> None:
    """The shipper's status line: unconfirmed states, never a scan of kept rows."""
    ids = [add(conn, 0, s) for s in (1, 2, 3, 4)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids[:3], now=0.0)
        outbox.confirm(conn, 0, 2, now=1.0)
    assert outbox.unconfirmed_counts(conn) == {"pending": 1, "in_flight": 1, "sent": 0}
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT state, count(*) FROM outbox"
        f" WHERE state IN {outbox._UNCONFIRMED} GROUP BY state"
    ).fetchall()
    assert any("SEARCH outbox USING COVERING INDEX outbox_state" in r[3] for r in plan)


def test_prune_takes_at_most_prune_rows_of_a_lane_per_call(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane's old rows go from its oldest on, a bounded slice per call."""
    monkeypatch.setattr(outbox, "PRUNE_ROWS", 4)
    ids = [add(conn, 0, s) for s in range(1, 11)]
    with store.transaction(conn):
        outbox.mark_in_flight(conn, ids, now=0.0)
        outbox.confirm(conn, 0, 9, now=1000.0)
        outbox.confirm(conn, 0, 10, now=9000.0)  # still inside the window
        taken = [outbox.prune(conn, window_h=1, now=1000.0 + 3601) for _ in range(4)]
    assert taken == [4, 4, 1, 0]
    assert states(conn) == {(0, 10): "confirmed"}
