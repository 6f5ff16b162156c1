"""The shipper sends stored payloads as the enricher's exact JSON, and holds a
lane whose next payload cannot be read instead of skipping it.

The producer and the confirm consumer are stand-ins that record what they
are handed; the outbox is real SQLite and ``step()`` is the leg's own.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance import commands, outbox, store
from appliance.commands import CommandError
from appliance.config import BoxSettings
from appliance.shipper import ShipperLeg


class Producer:
    """Keeps each value handed to it, in order."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.values.append(value)

    def poll(self, timeout: float) -> int:
        return 0


class Confirmations:
    """A confirm topic with nothing in it."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def poll(self, timeout: float) -> None:
        return None


def text(lane: int, seq: int) -> str:
    body = {
        "schema": "store-relay/1",
        "store": "MQ01",
        "lane": lane,
        "lane_seq": seq,
        "op": "u",
        "table": "PRIX",
        "key": {"ARTNUM": f"{seq:06d}"},
        "after": {"ARTNUM": f"{seq:06d}", "LIBELLE": "Pâté «maison» ✓", "PRIX": "6.90"},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def new_leg(path: Path) -> ShipperLeg:
    settings = BoxSettings(
        store={"id": "MQ01"},
        pipeline={"db_path": path},
        shipper={"max_in_flight": 100},
    )
    leg = ShipperLeg(settings, store.connect(path))
    leg._producer = Producer()
    leg._consumer = Confirmations()
    leg._confirm_partition = 0
    return leg


@pytest.fixture
def leg(tmp_path: Path) -> ShipperLeg:
    leg = new_leg(tmp_path / "pipeline.db")
    rows = [
        (n, lane, seq, 50, n, "PRIX", "u", text(lane, seq), 0.0, 0.0)
        for n, (lane, seq) in enumerate([(0, 1), (0, 2), (0, 3), (1, 1)], start=2)
    ]
    with store.transaction(leg.conn):
        # Row 1 was written as text before the upgrade; rows 2-5 compressed.
        leg.conn.execute(
            "INSERT INTO outbox (id, lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at) VALUES (1, 2, 1, 50, 1, 'PRIX',"
            " 'u', ?, 0, 0)",
            (text(2, 1),),
        )
        outbox.insert(leg.conn, rows)
    return leg


def corrupt(conn: sqlite3.Connection, outbox_id: int, stored: bytes) -> bytes:
    """Replace a row's stored payload; the bytes it held before."""
    good = conn.execute("SELECT payload FROM outbox WHERE id = ?", (outbox_id,))
    before = bytes(good.fetchone()[0])
    with store.transaction(conn):
        conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (stored, outbox_id))
    return before


def sent(leg: ShipperLeg) -> list[bytes]:
    producer: Producer = leg._producer
    return producer.values


def states(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT id, state FROM outbox").fetchall())


def letters(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT stage, table_name, position, field, state, reason, bytes_hex,"
            " expected FROM dead_letters ORDER BY id"
        )
    ]


def test_kafka_values_are_the_enricher_json_byte_for_byte(leg: ShipperLeg) -> None:
    """Compressed rows and a row stored as text go out as the same bytes as before."""
    stored = leg.conn.execute(
        "SELECT count(*) FROM outbox WHERE typeof(payload) = 'blob'"
    ).fetchone()[0]
    assert stored == 4
    leg.step()
    # Lanes in order, each by lane_seq: what row.payload.encode() sent before.
    expected = [text(0, 1), text(0, 2), text(0, 3), text(1, 1), text(2, 1)]
    assert sent(leg) == [t.encode() for t in expected]
    assert set(states(leg.conn).values()) == {"in_flight"}


def test_unreadable_payload_holds_its_lane_and_parks_once(
    leg: ShipperLeg, tmp_path: Path
) -> None:
    """Row 3 (lane 0, seq 2) is corrupt: lane 0 stops before it, other lanes go."""
    good = corrupt(leg.conn, 3, bytes.fromhex("789C0001"))
    leg.step()
    assert sent(leg) == [text(0, 1).encode(), text(1, 1).encode(), text(2, 1).encode()]
    assert states(leg.conn) == {
        1: "in_flight",
        2: "in_flight",
        3: "pending",
        4: "pending",
        5: "in_flight",
    }
    ((stage, table, position, field, state, reason, hexed, expected),) = letters(
        leg.conn
    )
    assert (stage, table, position, field, state) == (
        "shipper",
        "PRIX",
        "outbox_id=3 lane=0 lane_seq=2",
        "payload",
        "parked",
    )
    # The letter's own columns hold the stored bytes and what was expected.
    assert (hexed, expected) == ("789C0001", "zlib stream with dictionary 1")
    assert reason.startswith("payload unreadable, lane held: payload does not inflate")
    assert leg.status().endswith(" unreadable=0:3")
    assert store.counters(leg.conn)["shipper.dead_letters"] == 1

    # Later steps, and a restarted shipper, neither send nor park it again.
    leg.step()
    again = new_leg(tmp_path / "pipeline.db")
    again.step()
    assert len(sent(leg)) == 3 and sent(again) == []
    assert len(letters(leg.conn)) == 1
    assert states(leg.conn)[3] == states(leg.conn)[4] == "pending"

    # The row is restored: at the next read the lane goes on, in order.
    with store.transaction(leg.conn):
        leg.conn.execute("UPDATE outbox SET payload = ? WHERE id = 3", (good,))
    leg.step()
    assert sent(leg)[3:] == []  # held until its retry time
    leg._unreadable_retry_at = 0.0
    leg.step()
    assert sent(leg)[3:] == [text(0, 2).encode(), text(0, 3).encode()]
    assert letters(leg.conn)[0][4] == "retried"
    assert "unreadable" not in leg.status()


def test_missing_dictionary_holds_the_lane_too(leg: ShipperLeg) -> None:
    """Every compressed row's dictionary gone: lanes 0 and 1 held, lane 2 goes."""
    with store.transaction(leg.conn):
        leg.conn.execute("DELETE FROM outbox_dicts")
    leg.step()
    assert sent(leg) == [text(2, 1).encode()]
    positions = [r[2] for r in letters(leg.conn)]
    assert positions == [
        "outbox_id=2 lane=0 lane_seq=1",
        "outbox_id=5 lane=1 lane_seq=1",
    ]
    assert all("dictionary 1 is missing" in r[5] for r in letters(leg.conn))
    assert {(r[3], r[7]) for r in letters(leg.conn)} == {
        ("dict_id", "a row of outbox_dicts")
    }
    assert leg.status().endswith(" unreadable=0:2,1:5")


def test_a_restarted_shipper_releases_the_letter_of_a_restored_row(
    leg: ShipperLeg, tmp_path: Path
) -> None:
    """The parked letter becomes 'retried' even when another run parked it."""
    good = corrupt(leg.conn, 3, b"\x00")
    leg.step()
    assert [r[4] for r in letters(leg.conn)] == ["parked"]
    with store.transaction(leg.conn):
        leg.conn.execute("UPDATE outbox SET payload = ? WHERE id = 3", (good,))
    again = new_leg(tmp_path / "pipeline.db")
    again.step()
    assert sent(again)[:2] == [text(0, 2).encode(), text(0, 3).encode()]
    assert [r[4] for r in letters(again.conn)] == ["retried"]


def test_retrying_a_shipper_letter_says_what_to_do(leg: ShipperLeg) -> None:
    """Nothing to feed back: the command names the shipper's own re-read."""
    corrupt(leg.conn, 3, b"\x00")
    leg.step()
    (letter_id,) = leg.conn.execute("SELECT id FROM dead_letters").fetchone()
    with pytest.raises(CommandError, match="reads its outbox row again every 30 s"):
        commands.retry_dead_letter(leg.conn, letter_id, "shipper")
    assert [r[4] for r in letters(leg.conn)] == ["parked"]
