"""The hub sink's apply rules on real Kafka and PostgreSQL.

Messages are put on the changes topic directly, so each rule is seen alone:
versions, tombstones, truncation, gaps, poison, confirmations, PG failures.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipping_support import STORE, Rig, payload, pump

from appliance.hub import odh
from appliance.hub.sink import SinkLeg
from appliance.kafka import partition_for

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def send(rig: Rig, *messages: dict[str, Any]) -> None:
    rig.produce_raw([json.dumps(m).encode() for m in messages])


def drain(rig: Rig, sink: SinkLeg, lane: int, upto: int, epoch: int = 7) -> None:
    """Step the sink until the lane's watermark reaches ``upto``."""
    pump(
        [sink],
        lambda: (
            odh.fetch_watermarks(rig.pg, schema=rig.schema).get((STORE, epoch, lane))
            == upto
        ),
        timeout_s=30,
    )


def row(rig: Rig, key: str) -> dict[str, Any]:
    got = rig.pg.execute(
        f'SELECT data, version, deleted FROM "{rig.schema}".prix'
        " WHERE store_id = %s AND pk = %s",
        (STORE, odh.canonical_pk({"ARTNUM": key})),
    ).fetchone()
    assert got is not None
    return {"data": got[0], "version": got[1], "deleted": got[2]}


def test_stale_version_never_overwrites_newer(rig: Rig) -> None:
    """lane_seq 2 carries an older version: applied in order, no effect on the row."""
    sink = rig.sink()
    send(
        rig,
        payload(0, 1, key="A", price="2.00", version=200),
        payload(0, 2, key="A", price="1.00", version=100),
    )
    drain(rig, sink, 0, 2)
    assert row(rig, "A") == {
        "data": {"ARTNUM": "A", "PRIX": "2.00"},
        "version": 200,
        "deleted": False,
    }
    assert sink.counts["stale"] == 1
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 2


def test_delete_tombstone_blocks_late_older_upsert(rig: Rig) -> None:
    """Delete at v300, then an upsert at v200 (other lane): the row stays deleted."""
    sink = rig.sink()
    send(
        rig,
        payload(0, 1, key="A", price="1.00", version=100),
        payload(0, 2, key="A", op="d", price="1.00", version=300),
        payload(1, 1, key="A", price="9.99", version=200),
    )
    drain(rig, sink, 1, 1)
    assert row(rig, "A") == {
        "data": {"ARTNUM": "A", "PRIX": "1.00"},
        "version": 300,
        "deleted": True,
    }
    assert odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema) == {}


def test_truncate_deletes_older_rows_of_the_store_only(rig: Rig) -> None:
    """op t at v200 tombstones rows below v200 and keeps the newer one."""
    sink = rig.sink()
    other = payload(0, 1, store_id="GP01", key="A", version=50)
    send(
        rig,
        other,
        payload(0, 1, key="A", version=100),
        payload(0, 2, key="B", version=300),
        payload(0, 3, op="t", version=200),
    )
    drain(rig, sink, 0, 3)
    assert list(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == [
        odh.canonical_pk({"ARTNUM": "B"})
    ]
    assert row(rig, "A")["deleted"] is True
    assert len(odh.fetch_rows(rig.pg, "PRIX", "GP01", schema=rig.schema)) == 1


def test_gap_is_left_then_filled_by_resend(rig: Rig) -> None:
    """3 alone waits (gap); once 2 and a resent 3 arrive, both are applied."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="A"))
    drain(rig, sink, 0, 1)
    send(rig, payload(0, 3, key="C"))
    pump([sink], lambda: sink.counts["gaps"] == 1, timeout_s=30)
    assert odh.fetch_watermarks(rig.pg, schema=rig.schema)[(STORE, 7, 0)] == 1

    send(rig, payload(0, 2, key="B"), payload(0, 3, key="C"))
    drain(rig, sink, 0, 3)
    assert len(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == 3
    confirms = [c["upto"] for _p, c in rig.confirmations() if c["lane"] == 0]
    assert confirms[0] == 1
    assert confirms[-1] == 3


def test_poison_is_parked_and_lane_moves_past_it(rig: Rig) -> None:
    """Bad JSON and a bad op both land in dead_letters; lane_seq 3 is applied."""
    sink = rig.sink()
    bad_op = payload(0, 2, key="B", op="x")
    bad_table = payload(0, 3, key="C", table="PRIX; DROP TABLE x")
    rig.produce_raw([b"{not json"])
    send(rig, payload(0, 1, key="A"), bad_op, bad_table, payload(0, 4, key="D"))
    drain(rig, sink, 0, 4)
    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    reasons = {d["lane_seq"]: d["reason"] for d in parked}
    assert set(reasons) == {None, 2, 3}
    assert reasons[None].startswith("bad json")
    assert reasons[2].startswith("op:")
    assert reasons[3].startswith("table:")
    assert bytes(next(d for d in parked if d["lane_seq"] is None)["raw"]) == (
        b"{not json"
    )
    rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert sorted(rows) == [odh.canonical_pk({"ARTNUM": k}) for k in ("A", "D")]
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 2


def test_value_postgres_rejects_is_parked_not_retried(rig: Rig) -> None:
    """A NUL character cannot go into jsonb: parked, the batch still commits."""
    sink = rig.sink()
    nul = payload(0, 1, key="A")
    nul["after"]["PRIX"] = "1\u00002"
    send(rig, nul, payload(0, 2, key="B"))
    drain(rig, sink, 0, 2)
    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert [d["lane_seq"] for d in parked] == [1]
    assert parked[0]["reason"].startswith("NUL character (U+0000) table=PRIX")
    assert sink.counts["pg_errors"] == 0


def test_duplicates_only_batch_is_confirmed_again(rig: Rig) -> None:
    """A resend of applied messages is skipped and answered with a confirmation."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="A"), payload(0, 2, key="B"))
    drain(rig, sink, 0, 2)
    send(rig, payload(0, 1, key="A"), payload(0, 2, key="B"))
    pump([sink], lambda: sink.counts["duplicates"] == 2, timeout_s=30)
    confirms = rig.confirmations()
    assert [c for _p, c in confirms] == [
        {"store": STORE, "epoch": 7, "lane": 0, "upto": 2}
    ] * 2
    assert {p for p, _c in confirms} == {partition_for(STORE.encode(), 3)}
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 2


def test_lost_postgres_connection_rolls_back_and_retries(rig: Rig) -> None:
    """The backend is killed between batches: the batch is re-read and applied once."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="A"))
    drain(rig, sink, 0, 1)
    assert sink._pg is not None
    rig.pg.execute("SELECT pg_terminate_backend(%s)", (sink._pg.info.backend_pid,))

    send(rig, payload(0, 2, key="B"), payload(0, 3, key="C"))
    drain(rig, sink, 0, 3)

    assert sink.counts["pg_errors"] == 1
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 3
    assert len(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == 3


def test_reflashed_box_starts_its_own_lanes_and_wins_by_version(rig: Rig) -> None:
    """A new box (new epoch) restarts lane_seq at 1 and is applied, not skipped.

    The old box's late message (old epoch, older version) is applied in its
    own lane but cannot overwrite the newer row.
    """
    sink = rig.sink()
    old = payload(0, 1, key="A", price="1.00", version=7 * 10**10 + 5)
    send(rig, old, payload(0, 2, key="B", version=7 * 10**10 + 6))
    drain(rig, sink, 0, 2)
    new = payload(0, 1, key="A", price="3.00", version=8 * 10**10 + 1)
    new["epoch"] = 8
    late_old = payload(0, 3, key="A", price="2.00", version=7 * 10**10 + 9)
    send(rig, new, late_old)
    drain(rig, sink, 0, 1, epoch=8)
    drain(rig, sink, 0, 3, epoch=7)
    assert row(rig, "A")["data"] == {"ARTNUM": "A", "PRIX": "3.00"}
    assert row(rig, "A")["version"] == 8 * 10**10 + 1
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 4


def test_field_errors_are_kept_beside_the_row(rig: Rig) -> None:
    """A row with a field the box could not decode keeps the error at the hub."""
    sink = rig.sink()
    bad = payload(0, 1, key="A")
    bad["errors"] = [
        {"field": "PRIX", "offset": 6, "bytes_hex": "12345A", "reason": "bad sign"}
    ]
    send(rig, bad, payload(0, 2, key="B"))
    drain(rig, sink, 0, 2)
    got = dict(
        rig.pg.execute(
            f'SELECT pk, errors FROM "{rig.schema}".prix WHERE store_id = %s',
            (STORE,),
        ).fetchall()
    )
    assert got[odh.canonical_pk({"ARTNUM": "A"})] == bad["errors"]
    assert got[odh.canonical_pk({"ARTNUM": "B"})] is None


def test_like_rows_of_a_batch_share_one_statement_in_key_order() -> None:
    """Upserts and deletes gather per table; a key's writes stay in lane order."""
    from appliance.hub.sink import _statements

    def msg(seq: int, table: str, op: str, key: str) -> dict[str, Any]:
        return payload(0, seq, table=table, op=op, key=key)

    batch = [
        msg(1, "PRIX", "u", "A"),
        msg(2, "STOCK", "u", "A"),
        msg(3, "PRIX", "c", "B"),
        msg(4, "PRIX", "d", "C"),
        msg(5, "STOCK", "u", "B"),
        msg(6, "PRIX", "d", "A"),  # A waits in the PRIX upserts: a new round
        msg(7, "PRIX", "u", "D"),
        msg(8, "PRIX", "t", "-"),  # stays in place
        msg(9, "PRIX", "u", "E"),
    ]
    statements = _statements(batch)
    got = [(group, [m["lane_seq"] for m in rows]) for group, rows, _ in statements]
    assert got == [
        (("prix", "u"), [1, 3]),
        (("stock", "u"), [2, 5]),
        (("prix", "d"), [4]),
        (("prix", "d"), [6]),
        (("prix", "u"), [7]),
        (("prix", "t"), [8]),
        (("prix", "u"), [9]),
    ]
    pks = [pks for _, _, pks in statements]
    assert pks[0] == [odh.canonical_pk({"ARTNUM": k}) for k in ("A", "B")]
    assert pks[5] == []  # a truncate has no key


def test_mixed_batch_ends_as_applied_in_order(rig: Rig) -> None:
    """Interleaved tables and ops of one batch land as if applied one by one."""
    sink = rig.sink()
    send(
        rig,
        payload(0, 1, key="A", price="1.00", version=101),
        payload(0, 2, key="B", price="2.00", version=102),
        payload(0, 3, key="S", table="STOCK", version=103),
        payload(0, 4, key="A", op="d", price="1.50", version=104),
        payload(0, 5, key="A", price="3.00", version=105),
        payload(0, 6, key="B", price="2.50", version=106),
    )
    drain(rig, sink, 0, 6)
    assert row(rig, "A") == {
        "data": {"ARTNUM": "A", "PRIX": "3.00"},
        "version": 105,
        "deleted": False,
    }
    assert row(rig, "B")["data"] == {"ARTNUM": "B", "PRIX": "2.50"}
    assert sorted(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == [
        odh.canonical_pk({"ARTNUM": "A"}),
        odh.canonical_pk({"ARTNUM": "B"}),
    ]
