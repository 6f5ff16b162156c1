"""A lane put back to pending waits for its earlier copies before it is sent again.

Seen in fault runs: every failed delivery report put the rest of its lane
back to pending while those rows were still in the producer, so each failure
during a broker outage produced the whole window again (20,802 messages sent
116,008 times, up to 41 copies of one message in Kafka). The producer here is
a stand-in that only records what it is handed; the outbox is real SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from appliance import outbox, store
from appliance.config import BoxSettings
from appliance.shipper import ShipperLeg


class Recorder:
    """Keeps the delivery callbacks; the test decides how each copy ends."""

    def __init__(self) -> None:
        self.queued: list[tuple[int, Any]] = []
        self.handed: Counter[int] = Counter()

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        seq = json.loads(value)["s"]
        self.handed[seq] += 1
        self.queued.append((seq, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def report(
        self, ok: set[int] | None = None, failed: set[int] | None = None
    ) -> None:
        """Deliver the queued copies named in ``ok``/``failed``; keep the rest."""
        left = []
        for seq, callback in self.queued:
            if ok is not None and seq in ok:
                callback(None, Delivered(seq))
            elif failed is not None and seq in failed:
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                left.append((seq, callback))
        self.queued = left


class Delivered:
    def __init__(self, seq: int) -> None:
        self.seq = seq

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.seq


@pytest.fixture
def leg(tmp_path: Path) -> ShipperLeg:
    settings = BoxSettings(
        store={"id": "MQ01"},
        pipeline={"db_path": tmp_path / "pipeline.db"},
        shipper={"max_in_flight": 100},
    )
    shipper = ShipperLeg(settings, store.connect(tmp_path / "pipeline.db"))
    shipper._producer = Recorder()
    with store.transaction(shipper.conn):
        for seq in range(1, 11):
            shipper.conn.execute(
                "INSERT INTO outbox (lane, lane_seq, interest, version, table_name,"
                " op, payload, created_at, mined_at) VALUES (0, ?, 50, ?, 'PRIX',"
                " 'u', ?, 0, 0)",
                (seq, seq, json.dumps({"s": seq})),
            )
    return shipper


def cycle(leg: ShipperLeg) -> None:
    """Produce what may go, then write the reports (one shipper step, no Kafka)."""
    from appliance.shipper import _Step

    produced = leg._produce()
    leg._commit(_Step(produced=produced, reports=leg._take_reports()))


def states(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT lane_seq, state FROM outbox").fetchall())


def test_failed_report_holds_the_lane_until_earlier_copies_report(
    leg: ShipperLeg,
) -> None:
    producer: Recorder = leg._producer
    cycle(leg)
    assert producer.handed == Counter(range(1, 11))
    # 1-3 delivered, 4 timed out; 5-10 are still in the producer.
    producer.report(ok={1, 2, 3}, failed={4})
    cycle(leg)
    assert [s for s, state in states(leg.conn).items() if state == "pending"] == list(
        range(4, 11)
    )
    # Nothing of lane 0 goes out again while copies of 5-10 may still land.
    assert producer.handed == Counter(range(1, 11))
    producer.report(ok={5, 6, 7})
    cycle(leg)
    assert producer.handed == Counter(range(1, 11))
    # The last copies end (timed out); once their reports are written, the
    # lane is sent again from 4, once.
    producer.report(failed={8, 9, 10})
    cycle(leg)
    assert producer.handed == Counter(range(1, 11))
    cycle(leg)
    assert producer.handed == Counter({1: 1, 2: 1, 3: 1} | {s: 2 for s in range(4, 11)})
    assert all(states(leg.conn)[s] == "in_flight" for s in range(4, 11))
    producer.report(ok=set(range(4, 11)))
    cycle(leg)
    assert set(states(leg.conn).values()) == {"sent"}
    assert max(producer.handed.values()) == 2


def test_other_lanes_go_on_while_one_is_held(leg: ShipperLeg) -> None:
    producer: Recorder = leg._producer
    cycle(leg)
    producer.report(failed={2})
    with store.transaction(leg.conn):
        leg.conn.execute(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at) VALUES (1, 1, 50, 99, 'PRIX',"
            " 'u', ?, 0, 0)",
            (json.dumps({"s": 99}),),
        )
    cycle(leg)
    assert producer.handed[99] == 1
    assert producer.handed[2] == 1
    assert outbox.state_counts(leg.conn)["pending"] == 9
