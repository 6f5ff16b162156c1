"""Commands: requested by the page, carried out once by the leg they name."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import commands, daemon, store
from appliance.commands import CommandError, Runner


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(tmp_path / "pipeline.db")
    commands.ensure_schema(connection)
    yield connection
    connection.close()


def _outbox_row(conn: sqlite3.Connection, lane: int, seq: int, table: str) -> None:
    payload = {"lane": lane, "lane_seq": seq, "outbox_id": 0, "version": 1000 + seq}
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
            " payload, state, created_at, mined_at, confirmed_at)"
            " VALUES (?, ?, 50, ?, ?, 'u', ?, 'confirmed', 1, ?, 2)",
            (lane, seq, 1000 + seq, table, json.dumps(payload), 100.0 + seq),
        )


def test_resend_copies_with_new_lane_seqs_and_the_same_versions(
    conn: sqlite3.Connection,
) -> None:
    for seq, table in enumerate(("PRIX", "STOCK", "PRIX"), start=1):
        _outbox_row(conn, 0, seq, table)
    count, seqs = commands.resend(conn, {0: 3}, table="prix")
    assert count == 2
    assert seqs == {0: 5}
    copies = conn.execute("SELECT * FROM outbox WHERE id > 3 ORDER BY id").fetchall()
    assert [c["lane_seq"] for c in copies] == [4, 5]
    assert [c["version"] for c in copies] == [1001, 1003]
    assert all(c["state"] == "pending" for c in copies)
    for copy in copies:
        message = json.loads(copy["payload"])
        assert message["lane_seq"] == copy["lane_seq"]
        assert message["outbox_id"] == copy["id"]
        assert message["version"] == copy["version"]
    meta = conn.execute("SELECT value FROM meta WHERE key = 'enricher.lane_seq.0'")
    assert meta.fetchone()[0] == "5"
    # The copies are not confirmed yet: asking again copies the originals only.
    conn.execute("UPDATE outbox SET state = 'confirmed'")
    count, seqs = commands.resend(conn, seqs, table="PRIX")
    assert count == 2 and seqs == {0: 7}


def test_resend_by_time_range(conn: sqlite3.Connection) -> None:
    for seq in range(1, 6):
        _outbox_row(conn, 1, seq, "STOCK")
    count, _ = commands.resend(conn, {1: 5}, since=102, until=104)
    assert count == 2


def test_resend_arguments_are_validated() -> None:
    with pytest.raises(CommandError):
        commands.resend_args({})
    with pytest.raises(CommandError):
        commands.resend_args({"table": "PRIX; DROP"})
    assert commands.resend_args({"table": "prix", "since": "5"}) == {
        "table": "PRIX",
        "since": 5.0,
    }


def test_request_refuses_unknown_kinds_and_wrong_legs(
    conn: sqlite3.Connection,
) -> None:
    with pytest.raises(CommandError):
        commands.request(conn, "miner", "format_disk", {}, "tech")
    with pytest.raises(CommandError):
        commands.request(conn, "shipper", "resend", {"table": "PRIX"}, "tech")
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0


class Leg:
    name = "enricher"

    def __init__(self) -> None:
        self.steps = 0
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def setup(self) -> None:
        pass

    def step(self) -> bool:
        self.steps += 1
        return False

    def close(self) -> None:
        pass

    def status(self) -> str:
        return f"steps={self.steps}"

    def handle_command(self, kind: str, args: dict[str, Any]) -> str:
        self.seen.append((kind, args))
        return "done it"


def test_runner_carries_out_each_command_once_and_audits(
    conn: sqlite3.Connection,
) -> None:
    leg = Leg()
    runner = Runner(conn, leg, "enricher", clock=iter(range(0, 100, 5)).__next__)
    first = commands.request(conn, "enricher", "resend", {"table": "PRIX"}, "tech")
    assert runner.run_pending() == 1
    assert runner.run_pending() == 0
    assert leg.seen == [("resend", {"table": "PRIX"})]
    row = conn.execute("SELECT * FROM commands WHERE id = ?", (first,)).fetchone()
    assert (row["state"], row["result"]) == ("done", "done it")
    audit = conn.execute("SELECT user_name, action, command_id FROM audit").fetchall()
    assert [tuple(a) for a in audit] == [("tech", "resend", first)]


def test_an_interrupted_command_is_not_repeated(conn: sqlite3.Connection) -> None:
    command = commands.request(conn, "enricher", "resend", {"table": "X"}, "tech")
    commands.take(conn, "enricher")  # a leg claimed it, then died
    leg = Leg()
    runner = Runner(conn, leg, "enricher")
    assert runner.run_pending() == 0
    assert leg.seen == []
    row = conn.execute("SELECT state FROM commands WHERE id = ?", (command,))
    assert row.fetchone()[0] == "failed"


def test_a_paused_leg_does_not_step_heartbeats_paused_and_stays_paused(
    conn: sqlite3.Connection,
) -> None:
    commands.request(conn, "enricher", "pause", {}, "tech")
    leg = Leg()
    beats: list[str] = []
    stopper = daemon.Stopper()
    runner = Runner(conn, leg, "enricher")
    timer = threading.Timer(0.6, stopper.event.set)
    timer.start()
    daemon.run(
        leg,
        idle_s=0.05,
        heartbeat=lambda state, status: beats.append(state),
        heartbeat_every_s=0.1,
        stopper=stopper,
        commands=runner,
    )
    timer.join()
    assert leg.steps == 0
    assert "paused" in beats and "running" not in beats
    # A restart keeps the pause; resume lets the leg step again.
    again = Runner(conn, leg, "enricher")
    assert again.paused
    commands.request(conn, "enricher", "resume", {}, "tech")
    again.run_pending()
    assert not again.paused
    daemon.run(leg, idle_s=0.01, max_steps=3, commands=again)
    assert leg.steps == 3


def _letter(conn: sqlite3.Connection, stage: str, **kw: Any) -> int:
    with store.transaction(conn):
        return store.park(conn, stage=stage, reason="bad", **kw)


def test_dead_letter_retry_and_discard(conn: sqlite3.Connection) -> None:
    change = {
        "table": "PRIX",
        "op": "u",
        "key": {"ARTNUM": "1"},
        "before": None,
        "after": {"ARTNUM": "1", "PRIX": "2.00"},
        "source": {"sequence": 7},
        "raw_id": 9,
        "entry_ts_ms": 5,
        "mined_at": 1.5,
    }
    enricher_letter = _letter(conn, "enricher", raw_id=9, payload=change)
    commands.retry_dead_letter(conn, enricher_letter, "enricher")
    row = conn.execute("SELECT * FROM changes").fetchone()
    assert (row["raw_id"], row["table_name"], row["state"]) == (9, "PRIX", 0)
    assert json.loads(row["after"]) == change["after"]
    with pytest.raises(CommandError):
        commands.retry_dead_letter(conn, enricher_letter, "enricher")

    with store.transaction(conn):
        for cycle in (0, 4):
            conn.execute(
                "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
                " sequence, code, entry_type, entry_ts, commit_cycle, mined_at,"
                " state) VALUES ('J', 'L', 'R', 1, 'R', 'UP', '', ?, 0, 1)",
                (cycle,),
            )
    alone = _letter(conn, "transformer", raw_id=1)
    in_cycle = _letter(conn, "transformer", raw_id=2)
    commands.retry_dead_letter(conn, alone, "transformer")
    with pytest.raises(CommandError, match="commit cycle"):
        commands.retry_dead_letter(conn, in_cycle, "transformer")
    states = [r[0] for r in conn.execute("SELECT state FROM raw_entries ORDER BY id")]
    assert states == [0, 1]
    commands.discard_dead_letter(conn, in_cycle)
    letters = conn.execute("SELECT state FROM dead_letters ORDER BY id").fetchall()
    assert [r[0] for r in letters] == ["retried", "retried", "discarded"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"id": float("inf")}, "argument id inf"),
        ({"id": 10**23}, "argument id:"),
        ({"since": float("nan")}, "argument since nan"),
        ({"x": [1e999]}, "argument x[0] inf"),
    ],
)
def test_numbers_no_leg_can_use_are_refused_when_queued(
    tmp_path: Path, args: dict[str, object], named: str
) -> None:
    """Breaker run: such arguments were queued, then crashed the leg."""
    conn = store.connect(tmp_path / "p.db")
    commands.ensure_schema(conn)
    with pytest.raises(commands.CommandError, match=re.escape(named)):
        commands.request(conn, "transformer", "retry_dead_letter", args, "tech")
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0
