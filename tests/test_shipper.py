"""Shipper + hub sink end to end on real Kafka and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from shipping_support import STORE, Rig, all_confirmed, pump

from appliance import outbox, store
from appliance.hub import odh
from appliance.kafka import partition_for

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


@pytest.fixture
def quick_rig(tmp_path: Path) -> Iterator[Rig]:
    """Unconfirmed rows are sent again after 0.5 s."""
    rig = Rig(tmp_path, confirm_timeout_s=0.5)
    yield rig
    rig.close()


def test_rows_go_pending_sent_confirmed_and_odh_holds_after_images(rig: Rig) -> None:
    """Every row ends confirmed with its Kafka position; ODH equals the after images."""
    for seq in (1, 2, 3):
        rig.add(1, seq, key=f"B{seq}", price=f"{seq}.50")
    for seq in (1, 2):
        rig.add(0, seq, key=f"A{seq}", price=f"{seq}.00")
    shipper, sink = rig.shipper(), rig.sink()

    pump([shipper, sink], all_confirmed(rig.conn, 5))

    rows = rig.conn.execute(
        "SELECT lane, lane_seq, partition, kafka_offset, attempts FROM outbox"
        " ORDER BY kafka_offset"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
    assert {r[2] for r in rows} == {partition_for(STORE.encode(), 3)}
    assert {r[4] for r in rows} == {1}
    odh_rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    expected = {f"A{s}": f"{s}.00" for s in (1, 2)} | {
        f"B{s}": f"{s}.50" for s in (1, 2, 3)
    }
    assert odh_rows == {
        odh.canonical_pk({"ARTNUM": k}): {"ARTNUM": k, "PRIX": p}
        for k, p in expected.items()
    }
    counters = store.counters(rig.conn)
    assert counters["shipper.sent"] == 5
    assert counters["shipper.confirmed"] == 5
    assert outbox.lane_confirmations(rig.conn) == {0: 2, 1: 3}


def test_versions_decide_across_lanes_end_to_end(rig: Rig) -> None:
    """Lane 0 ships first: its newer image and tombstone beat lane 1's older ones."""
    rig.add(0, 1, key="A", op="d", version=300)
    rig.add(0, 2, key="B", price="5.00", version=500)
    rig.add(1, 1, key="A", price="2.00", version=200)
    rig.add(1, 2, key="B", price="4.00", version=400)
    shipper, sink = rig.shipper(), rig.sink()

    pump([shipper, sink], all_confirmed(rig.conn, 4))

    rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert rows == {odh.canonical_pk({"ARTNUM": "B"}): {"ARTNUM": "B", "PRIX": "5.00"}}
    assert sink.counts["stale"] == 2
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 4


def test_resent_message_is_applied_once(quick_rig: Rig) -> None:
    """Sent twice before the hub runs: ODH applies each lane_seq once."""
    rig = quick_rig
    for seq in (1, 2, 3):
        rig.add(0, seq, key=f"K{seq}")
    shipper = rig.shipper()
    pump([shipper], lambda: set(rig.states().values()) == {"sent"}, timeout_s=20)
    time.sleep(0.6)
    pump(
        [shipper],
        lambda: rig.conn.execute("SELECT min(attempts) FROM outbox").fetchone()[0] >= 2,
        timeout_s=20,
    )
    sink = rig.sink()

    pump([shipper, sink], all_confirmed(rig.conn, 3))

    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 3
    assert sink.counts["applied"] == 3
    assert sink.counts["duplicates"] >= 3
    assert store.counters(rig.conn)["shipper.resends"] >= 3


def test_gap_waits_until_the_missing_message_arrives(quick_rig: Rig) -> None:
    """lane_seq 3 reaches the hub before 2: 3 is left, then applied after 2."""
    rig = quick_rig
    rig.add(0, 1, key="K1", price="1.00")
    rig.add(0, 3, key="K3", price="3.00")
    shipper, sink = rig.shipper(), rig.sink()
    pump([shipper, sink], lambda: sink.counts["gaps"] >= 1, timeout_s=30)
    assert odh.fetch_watermarks(rig.pg, schema=rig.schema) == {(STORE, rig.epoch, 0): 1}
    assert rig.states()[(0, 3)] != "confirmed"

    rig.add(0, 2, key="K2", price="2.00")
    pump([shipper, sink], all_confirmed(rig.conn, 3))

    assert odh.fetch_watermarks(rig.pg, schema=rig.schema) == {(STORE, rig.epoch, 0): 3}
    assert len(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == 3
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 3


def test_poison_message_is_parked_and_its_lane_goes_on(rig: Rig) -> None:
    """An unknown op is parked with its reason; the next lane_seq is applied."""
    rig.add(0, 1, key="K1")
    rig.add(0, 2, key="K2", op="x")
    rig.add(0, 3, key="K3")
    shipper, sink = rig.shipper(), rig.sink()

    pump([shipper, sink], all_confirmed(rig.conn, 3))

    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert [(d["lane"], d["lane_seq"]) for d in parked] == [(0, 2)]
    assert "op" in parked[0]["reason"]
    assert b'"op": "x"' in bytes(parked[0]["raw"])
    rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert sorted(rows) == [odh.canonical_pk({"ARTNUM": k}) for k in ("K1", "K3")]


def test_restarted_shipper_resumes_confirmations_without_loss(rig: Rig) -> None:
    """Confirmations published while the shipper is down confirm rows after restart."""
    for seq in range(1, 6):
        rig.add(0, seq, key=f"K{seq}")
    first = rig.shipper()
    pump([first], lambda: set(rig.states().values()) == {"sent"}, timeout_s=20)
    first.close()
    sink = rig.sink()
    pump(
        [sink],
        lambda: (
            odh.fetch_watermarks(rig.pg, schema=rig.schema).get((STORE, rig.epoch, 0))
            == 5
        ),
        timeout_s=30,
    )
    assert set(rig.states().values()) == {"sent"}
    # A crash between produce and report leaves a row in_flight.
    rig.add(0, 6, key="K6")
    with store.transaction(rig.conn):
        rig.conn.execute("UPDATE outbox SET state = 'in_flight' WHERE lane_seq = 6")

    second = rig.shipper()
    pump([second, sink], all_confirmed(rig.conn, 6))

    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 6
    assert len(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == 6
    offset = rig.conn.execute("SELECT next_offset FROM shipper_offsets").fetchone()
    assert offset[0] >= 2


def test_throughput_of_10000_small_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 messages go outbox -> Kafka -> ODH -> confirmed; the rate is reported."""
    rig = Rig(tmp_path, batch=2000)
    try:
        count = 10_000
        rig.add_many([(n % 3, n // 3 + 1, f"K{n:05d}") for n in range(count)])
        shipper, sink = rig.shipper(), rig.sink()

        elapsed = pump([shipper, sink], all_confirmed(rig.conn, count), timeout_s=300)

        assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == count
        assert len(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == count
        with capsys.disabled():
            print(
                f"\nthroughput: {count} messages confirmed in {elapsed:.2f}s"
                f" = {count / elapsed:.0f} msg/s"
            )
    finally:
        rig.close()


def test_confirmation_of_the_replaced_box_is_ignored(rig: Rig) -> None:
    """A confirmation for another epoch of the same store confirms nothing here."""
    shipper = rig.shipper()
    rig.add(0, 1)
    pump([shipper], lambda: rig.states() == {(0, 1): "sent"}, timeout_s=30)
    producer = Producer({"bootstrap.servers": rig.kafka["bootstrap"]})
    other = {"store": STORE, "epoch": rig.epoch - 1, "lane": 0, "upto": 99}
    producer.produce(
        rig.kafka["confirm_topic"],
        value=json.dumps(other).encode(),
        key=STORE.encode(),
        partition=shipper._confirm_partition,
    )
    assert producer.flush(10) == 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        shipper.step()
    assert rig.states() == {(0, 1): "sent"}


def test_guardian_requests_are_kept_once_and_never_confirm_a_lane(rig: Rig) -> None:
    """Hub requests land in guardian_requests (a re-delivery is harmless)."""
    shipper = rig.shipper()
    rig.add(0, 1)
    pump([shipper], lambda: rig.states() == {(0, 1): "sent"}, timeout_s=30)
    request = {
        "store": STORE,
        "epoch": rig.epoch,
        "type": "guardian",
        "run": f"{rig.epoch}-7",
        "table": "PRIX",
        "request": f"{rig.epoch}-7/3",
        "narrow": [[6, 12]],
        "repair": ['{"ARTNUM":"000123"}'],
        "done": False,
    }
    other_box = dict(request, epoch=rig.epoch - 1, request="old/1")
    producer = Producer({"bootstrap.servers": rig.kafka["bootstrap"]})
    for value in (request, request, other_box):
        producer.produce(
            rig.kafka["confirm_topic"],
            value=json.dumps(value).encode(),
            key=STORE.encode(),
            partition=shipper._confirm_partition,
        )
    assert producer.flush(10) == 0

    def kept() -> bool:
        found = rig.conn.execute("SELECT count(*) FROM guardian_requests").fetchone()
        return bool(found[0])

    pump([shipper], kept, timeout_s=30)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        shipper.step()
    rows = rig.conn.execute(
        "SELECT request, run, table_name, body, state FROM guardian_requests"
    ).fetchall()
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (request["request"], request["run"], "PRIX", 0)
    ]
    assert json.loads(rows[0][3]) == request
    assert rig.states() == {(0, 1): "sent"}
    assert not rig.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]


def test_full_in_flight_window_waits_for_confirmations_in_kafka(rig: Rig) -> None:
    """With max_in_flight spent the step waits for a confirmation, then goes on."""
    shipper_section = rig.box.shipper.model_copy(update={"max_in_flight": 2})
    rig.box = rig.box.model_copy(update={"shipper": shipper_section})
    for seq in range(1, 6):
        rig.add(0, seq, key=f"W{seq}")
    shipper, sink = rig.shipper(), rig.sink()
    assert shipper.step()  # produces 1 and 2
    # Nothing can go out: the step reports itself busy (it waited in Kafka,
    # not in the runner's pause) and has sent nothing more.
    assert shipper.step()
    assert outbox.state_counts(rig.conn)["pending"] == 3

    pump([shipper, sink], all_confirmed(rig.conn, 5))

    rows = rig.conn.execute("SELECT attempts FROM outbox ORDER BY lane_seq").fetchall()
    assert [r[0] for r in rows] == [1] * 5
    assert outbox.lane_confirmations(rig.conn) == {0: 5}
