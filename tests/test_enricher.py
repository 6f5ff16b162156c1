"""The enricher leg: outbox payloads, lanes, lane_seq, dead letters, counters."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import payloads, store
from appliance.config import BoxSettings
from appliance.enricher import EnricherLeg, interest_of, lane_of
from appliance.errors import ScriptError

SCRIPTS = Path(__file__).resolve().parent.parent / "config" / "scripts"
SAMPLES = [
    {
        "name": "business_key",
        "language": "beanshell",
        "path": SCRIPTS / "business_key.bsh",
    },
    {"name": "region", "language": "javascript", "path": SCRIPTS / "region.js"},
    {"name": "message_interest", "language": "python", "path": SCRIPTS / "interest.py"},
]
SOURCE = {
    "journal": "MAG/QSQJRN",
    "receiver": "QSQJRN0001",
    "receiver_library": "MAG",
    "sequence": 41,
    "commit_cycle": 0,
    "library": "MAG",
    "table": "PRIX",
    "rrn": 7,
    "entry_ts": "2026-12-04T14:00:00.123000",
    "entry_ts_utc": "2026-12-04T18:00:00.123000Z",
}


def settings(db: Path, scripts: list[dict[str, Any]], **enricher: Any) -> BoxSettings:
    return BoxSettings(
        store={"id": "MQ01"},
        pipeline={"db_path": db, "batch": 50},
        # Generous: a loaded CI machine must not turn a sample script into a
        # timeout. Tests of the time limit pass their own.
        enricher={"scripts": scripts, "timeout_ms": 5000, **enricher},
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.db"


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(db)
    yield connection
    connection.close()


def add_change(
    conn: sqlite3.Connection,
    *,
    table: str = "PRIX",
    op: str = "u",
    artnum: str = "000123",
    after: dict[str, Any] | None = None,
    raw_id: int = 41,
) -> int:
    before = {"ARTNUM": artnum, "PRIX": "12.50", "PRIX_PROMO": None}
    if after is None and op != "d":
        after = {"ARTNUM": artnum, "PRIX": "11.90", "PRIX_PROMO": None}
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO changes (raw_id, table_name, op, key, before, after, source,"
            " entry_ts_ms, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                raw_id,
                table,
                op,
                json.dumps({"ARTNUM": artnum}),
                json.dumps(before) if op != "c" else None,
                json.dumps(after) if after is not None else None,
                json.dumps(dict(SOURCE, table=table)),
                1796407200123,
                1796407200.05,
            ),
        )
    return int(cur.lastrowid or 0)


def run_leg(leg: EnricherLeg) -> None:
    leg.setup()
    try:
        while leg.step():
            pass
    finally:
        leg.close()


def outbox(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The outbox rows, each payload read back as its JSON text."""
    return [
        {**dict(r), "payload": payloads.read_text(conn, r["payload"], r["dict_id"])}
        for r in conn.execute("SELECT * FROM outbox ORDER BY id")
    ]


def dead_letters(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM dead_letters ORDER BY id").fetchall()


def test_outbox_row_carries_the_exact_message(
    db: Path, conn: sqlite3.Connection
) -> None:
    """The payload is contracts.md §3, field for field, and marks the change done."""
    change_id = add_change(conn, raw_id=41)
    run_leg(EnricherLeg(settings(db, SAMPLES), conn))

    [row] = outbox(conn)
    version = store.version_of(store.epoch(conn), 41)
    assert json.loads(row["payload"]) == {
        "schema": "store-relay/1",
        "store": "MQ01",
        "epoch": store.epoch(conn),
        "lane": 0,
        "lane_seq": 1,
        "outbox_id": row["id"],
        "version": version,
        "op": "u",
        "ts_ms": 1796407200123,
        "table": "PRIX",
        "key": {"ARTNUM": "000123"},
        "before": {"ARTNUM": "000123", "PRIX": "12.50", "PRIX_PROMO": None},
        "after": {"ARTNUM": "000123", "PRIX": "11.90", "PRIX_PROMO": None},
        "source": dict(SOURCE, store="MQ01"),
        "enrichment": {
            "business_key": "MQ01:000123",
            "region": "MQ",
            "message_interest": 80,
        },
        "mined_at": 1796407200.05,
    }
    assert list(json.loads(row["payload"]))[:7] == [
        "schema",
        "store",
        "epoch",
        "lane",
        "lane_seq",
        "outbox_id",
        "version",
    ]
    assert (row["lane"], row["lane_seq"], row["interest"]) == (0, 1, 80)
    assert (row["version"], row["table_name"], row["op"]) == (version, "PRIX", "u")
    assert row["state"] == "pending"
    assert row["mined_at"] == 1796407200.05
    # Stored deflated against the table's sample (appliance/payloads.py).
    stored = conn.execute("SELECT typeof(payload), dict_id FROM outbox").fetchone()
    assert tuple(stored) == ("blob", 1)
    state = conn.execute("SELECT state FROM changes WHERE id = ?", (change_id,))
    assert state.fetchone()[0] == 1
    assert store.counters(conn)["enricher.messages"] == 1


def test_lanes_follow_message_interest(db: Path, conn: sqlite3.Connection) -> None:
    """Interest >= 70 lane 0, >= 30 lane 1, below lane 2; seqs count per lane."""
    add_change(conn, table="PRIX")  # 80
    add_change(conn, table="STOCK")  # 50
    add_change(conn, table="ARTICLE")  # 30
    add_change(conn, table="PRIX", op="d")  # 90
    add_change(conn, table="OTHER")  # 20
    run_leg(EnricherLeg(settings(db, SAMPLES), conn))

    got = [
        (r["table_name"], r["interest"], r["lane"], r["lane_seq"]) for r in outbox(conn)
    ]
    assert got == [
        ("PRIX", 80, 0, 1),
        ("STOCK", 50, 1, 1),
        ("ARTICLE", 30, 1, 2),
        ("PRIX", 90, 0, 2),
        ("OTHER", 20, 2, 1),
    ]


def test_interest_defaults_to_50_without_its_script(
    db: Path, conn: sqlite3.Connection
) -> None:
    """No message_interest script: interest 50, lane 1, enrichment without it."""
    add_change(conn)
    run_leg(EnricherLeg(settings(db, SAMPLES[:2]), conn))
    [row] = outbox(conn)
    assert (row["interest"], row["lane"]) == (50, 1)
    assert "message_interest" not in json.loads(row["payload"])["enrichment"]


def test_lane_and_interest_rules() -> None:
    """Bounds are inclusive; a bad interest is a ScriptError."""
    assert [lane_of(v, [70, 30]) for v in (100, 70, 69.9, 30, 29, 0)] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert lane_of(5, []) == 0
    assert interest_of({"message_interest": 69.9}) == 69
    for bad in ("high", True, -1, 101, None):
        with pytest.raises(ScriptError):
            interest_of({"message_interest": bad})


def test_lane_seq_stays_contiguous_across_restarts(db: Path) -> None:
    """A new leg on a reopened database goes on at last + 1, also after pruning."""
    for round_ in range(3):
        conn = store.connect(db)
        for i in range(4):
            add_change(conn, table=("PRIX", "STOCK")[i % 2], raw_id=round_ * 4 + i)
        run_leg(EnricherLeg(settings(db, SAMPLES), conn))
        if round_ == 1:
            # The shipper confirmed everything and the replay window passed.
            with store.transaction(conn):
                conn.execute(
                    "INSERT INTO confirmations (lane, upto, updated_at)"
                    " SELECT lane, MAX(lane_seq), 0 FROM outbox GROUP BY lane"
                )
                conn.execute("DELETE FROM outbox")
        conn.close()

    conn = store.connect(db)
    try:
        rows = conn.execute("SELECT lane, lane_seq FROM outbox ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(0, 5), (1, 5), (0, 6), (1, 6)]
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox ORDER BY id")]
        assert ids == [9, 10, 11, 12]
    finally:
        conn.close()


LOOPY_JS = """
function enrich(change) {
  if (change.key.ARTNUM === "LOOP") { while (true) { } }
  if (change.key.ARTNUM === "BOOM") {
    throw new Error("no price for " + change.key.ARTNUM);
  }
  return change.key.ARTNUM.length;
}
"""


def test_looping_script_parks_the_change_and_the_next_goes_through(
    db: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """The stuck change goes to dead letters with the script name; the relay goes on."""
    path = tmp_path / "loopy.js"
    path.write_text(LOOPY_JS, encoding="utf-8")
    scripts = [*SAMPLES, {"name": "loopy", "language": "javascript", "path": path}]
    first = add_change(conn, artnum="000001", raw_id=1)
    looping = add_change(conn, artnum="LOOP", raw_id=2)
    add_change(conn, artnum="000003", raw_id=3)

    leg = EnricherLeg(settings(db, scripts, timeout_ms=1000), conn)
    leg.setup()
    started = time.monotonic()
    assert leg.step()
    elapsed = time.monotonic() - started
    leg.close()

    # The endless loop was cut: the step came back, not after minutes.
    assert elapsed < 1.0 + 4.0
    assert [json.loads(r["payload"])["key"]["ARTNUM"] for r in outbox(conn)] == [
        "000001",
        "000003",
    ]
    assert [r["lane_seq"] for r in outbox(conn)] == [1, 2]
    [dead] = dead_letters(conn)
    assert dead["stage"] == "enricher"
    assert dead["reason"] == "loopy: timed out after 1000 ms"
    assert (dead["raw_id"], dead["table_name"]) == (2, "PRIX")
    assert dead["position"] == "MAG/QSQJRN0001:41"
    payload = json.loads(dead["payload"])
    assert payload["change_id"] == looping
    assert payload["key"] == {"ARTNUM": "LOOP"}
    assert payload["source"]["store"] == "MQ01"
    pending = conn.execute("SELECT COUNT(*) FROM changes WHERE state = 0").fetchone()
    assert pending[0] == 0
    counts = store.counters(conn)
    assert (counts["enricher.messages"], counts["enricher.dead_letters"]) == (2, 1)
    assert first < looping


def test_throwing_script_parks_with_its_message(
    db: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """A script's exception is the dead letter's reason, prefixed by its name."""
    path = tmp_path / "loopy.js"
    path.write_text(LOOPY_JS, encoding="utf-8")
    add_change(conn, artnum="BOOM")
    add_change(conn, artnum="000002")
    scripts = [{"name": "loopy", "language": "javascript", "path": path}]
    run_leg(EnricherLeg(settings(db, scripts), conn))

    [dead] = dead_letters(conn)
    assert dead["reason"].startswith("loopy: Error: no price for BOOM")
    [row] = outbox(conn)
    assert json.loads(row["payload"])["enrichment"] == {"loopy": 6}


def test_bad_interest_and_bad_rows_are_parked(
    db: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """An interest out of range and a change row that is not JSON both park."""
    path = tmp_path / "interest.py"
    path.write_text("def enrich(change):\n    return 250\n", encoding="utf-8")
    add_change(conn)
    broken = add_change(conn, artnum="000002")
    conn.execute("UPDATE changes SET after = '{not json' WHERE id = ?", (broken,))
    scripts = [{"name": "message_interest", "language": "python", "path": path}]
    run_leg(EnricherLeg(settings(db, scripts), conn))

    reasons = [r["reason"] for r in dead_letters(conn)]
    assert reasons[0] == "message_interest: returned 250, expected a number 0-100"
    assert reasons[1].startswith("change row is not valid JSON")
    assert outbox(conn) == []
    assert store.counters(conn)["enricher.dead_letters"] == 2


def test_unloadable_script_parks_instead_of_stopping(
    db: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """A script with a syntax error parks changes; status still answers."""
    path = tmp_path / "broken.bsh"
    path.write_text("enrich(change) { return ; ; }}", encoding="utf-8")
    add_change(conn)
    leg = EnricherLeg(
        settings(db, [{"name": "broken", "language": "beanshell", "path": path}]), conn
    )
    run_leg(leg)
    [dead] = dead_letters(conn)
    assert dead["reason"].startswith("broken: ")
    assert "parked=1" in leg.status()


def test_a_large_batch_goes_through_the_sample_scripts(
    db: Path, conn: sqlite3.Connection
) -> None:
    """3,000 changes through the three sample scripts: all enriched, none parked.

    Prints the rate for information; speed is the benchmark's business.
    """
    with store.transaction(conn):
        for i in range(3000):
            conn.execute(
                "INSERT INTO changes (raw_id, table_name, op, key, before, after,"
                " source, entry_ts_ms, mined_at) VALUES (?, 'PRIX', 'u', ?, ?, ?, ?,"
                " 1796407200123, 1796407200.05)",
                (
                    i + 1,
                    json.dumps({"ARTNUM": f"{i:06d}"}),
                    json.dumps(
                        {"ARTNUM": f"{i:06d}", "PRIX": "1.00", "PRIX_PROMO": None}
                    ),
                    json.dumps(
                        {"ARTNUM": f"{i:06d}", "PRIX": "1.10", "PRIX_PROMO": None}
                    ),
                    json.dumps(SOURCE),
                ),
            )
    leg = EnricherLeg(settings(db, SAMPLES).model_copy(), conn)
    leg.setup()
    started = time.monotonic()
    while leg.step():
        pass
    elapsed = time.monotonic() - started
    leg.close()
    rate = 3000 / elapsed
    print(f"enricher throughput: {rate:.0f} messages/s (batch 50)")
    assert len(outbox(conn)) == 3000
    assert dead_letters(conn) == []


def add_guardian_part(
    conn: sqlite3.Connection, after_change_id: int, v_low: int = 7
) -> int:
    body = {"run": "1-1", "table": "PRIX", "mode": "repair", "v_low": v_low}
    with store.transaction(conn):
        cur = conn.execute(
            "INSERT INTO guardian_outbound (created_at, after_change_id, table_name,"
            " body, state) VALUES (0, ?, 'PRIX', ?, 0)",
            (after_change_id, json.dumps(body)),
        )
    return int(cur.lastrowid or 0)


def test_guardian_part_follows_its_changes_with_fences(
    db: Path, conn: sqlite3.Connection
) -> None:
    """A part waits for the changes before it, then goes in lane 0 with fences."""
    add_change(conn, artnum="000001", raw_id=40)
    last = add_change(conn, table="STOCK", op="d", artnum="000002", raw_id=42)
    add_guardian_part(conn, after_change_id=last)
    base = settings(db, SAMPLES, lanes=[70, 30])
    config = base.model_copy(
        update={"pipeline": base.pipeline.model_copy(update={"batch": 1})}
    )
    leg = EnricherLeg(config, conn)
    leg.setup()
    try:
        assert leg.step()
        assert [r["op"] for r in outbox(conn)] == ["u"]  # change `last` still waits
        while leg.step():
            pass
    finally:
        leg.close()

    rows = outbox(conn)
    assert [(r["op"], r["lane"], r["lane_seq"]) for r in rows] == [
        ("u", 0, 1),
        ("d", 1, 1),
        ("g", 0, 2),
    ]
    message = json.loads(rows[-1]["payload"])
    assert message["version"] == rows[-1]["version"] == 7
    assert message["key"] == {} and message["table"] == "PRIX"
    assert message["guardian"]["fences"] == {"0": 1, "1": 1, "2": 0}
    assert message["guardian"]["run"] == "1-1"
    assert conn.execute("SELECT state FROM guardian_outbound").fetchone()[0] == 1
    assert store.counters(conn)["enricher.guardian_parts"] == 1


def test_guardian_part_with_no_change_waiting_is_sent_alone(
    db: Path, conn: sqlite3.Connection
) -> None:
    """With nothing to enrich, a ready part still leaves on the next step."""
    add_guardian_part(conn, after_change_id=0)
    run_leg(EnricherLeg(settings(db, SAMPLES), conn))
    [row] = outbox(conn)
    assert (row["op"], row["lane"], row["lane_seq"]) == ("g", 0, 1)


def test_sample_scripts_enrich_r_rows_with_an_after_image_or_none(
    db: Path, conn: sqlite3.Connection
) -> None:
    """An ``r`` row (after only, or NULL for a key gone) passes every script."""
    add_change(conn, op="r", artnum="000005", raw_id=9)
    with store.transaction(conn):
        conn.execute("UPDATE changes SET before = NULL WHERE op = 'r'")
    add_change(conn, op="d", artnum="000006", raw_id=9)
    with store.transaction(conn):
        conn.execute("UPDATE changes SET op = 'r', before = NULL WHERE op = 'd'")
    run_leg(EnricherLeg(settings(db, SAMPLES), conn))
    rows = outbox(conn)
    assert [r["op"] for r in rows] == ["r", "r"] and not dead_letters(conn)
    gone = json.loads(rows[1]["payload"])
    assert gone["after"] is None and gone["before"] is None
    assert gone["enrichment"]["business_key"] == "MQ01:000006"
    assert gone["enrichment"]["message_interest"] == 80
