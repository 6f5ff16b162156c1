"""The guardian's hub end on real Kafka and PostgreSQL (docs/guardian.md 4, 6).

Messages are hand-built per contract and put on the changes topic: ``r``
rows, ``g`` checksums (buckets, then keys answering a narrow request); the
sink applies them, the evaluator compares, and its requests are read back
from the confirmation topic.
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

from appliance.guardian import digest
from appliance.hub import guardian, odh
from appliance.hub.sink import SinkLeg
from appliance.kafka import partition_for

pytestmark = pytest.mark.integration

RUN = "7-1"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def send(rig: Rig, *messages: dict[str, Any]) -> None:
    rig.produce_raw([json.dumps(m).encode() for m in messages])


def drain(rig: Rig, sink: SinkLeg, lane: int, upto: int) -> None:
    pump(
        [sink],
        lambda: (
            odh.fetch_watermarks(rig.pg, schema=rig.schema).get((STORE, 7, lane))
            == upto
        ),
        timeout_s=60,
    )


def read_row(
    lane_seq: int,
    key: str,
    price: str | None,
    *,
    version: int,
    kind: str = "repair",
    request: str | None = None,
) -> dict[str, Any]:
    """An ``r`` message: the row as read at the source (None = key absent)."""
    msg = payload(0, lane_seq, key=key, price=price or "0", version=version)
    msg["op"] = "r"
    msg["before"] = None
    if price is None:
        msg["after"] = None
    msg["source"] = {
        "library": "MAG",
        "table": "PRIX",
        "store": STORE,
        "guardian": {"run": RUN, "kind": kind, "request": request},
    }
    return msg


def checksum(
    lane_seq: int, body: dict[str, Any], *, v_low: int, fences: dict[str, int]
) -> dict[str, Any]:
    """A ``g`` message as the enricher emits it (lane 0, key {})."""
    msg = payload(0, lane_seq, version=v_low)
    msg.update({"op": "g", "key": {}, "before": None, "after": None})
    msg["guardian"] = {
        "run": RUN,
        "table": "PRIX",
        "mode": "repair",
        "v_low": v_low,
        "part": 1,
        "parts": 1,
        "keys": None,
        "buckets": None,
        "request": None,
        "rows_read": 0,
        "changed": 0,
        **body,
        "fences": fences,
    }
    return msg


def source_of(prices: dict[str, str]) -> dict[str, dict[str, str]]:
    """pk -> data of a source table PRIX(ARTNUM, PRIX)."""
    return {
        digest.canonical_pk({"ARTNUM": k}): {"ARTNUM": k, "PRIX": p}
        for k, p in prices.items()
    }


def buckets_body(rows: dict[str, dict[str, str]], bits: int) -> dict[str, Any]:
    sums: dict[int, list[int]] = {}
    for pk, data in rows.items():
        prefix = digest.prefix_of(digest.pk_hash(pk), bits)
        sums.setdefault(prefix, []).append(digest.row_hash(pk, data))
    return {
        "kind": "buckets",
        "bits": bits,
        "prefixes": [[bits, 0], [bits, 2**bits - 1]],
        "buckets": [
            [p, *digest.add_hashes(hashes)] for p, hashes in sorted(sums.items())
        ],
        "rows_read": len(rows),
    }


def keys_body(
    rows: dict[str, dict[str, str]], buckets: list[list[int]], request: str
) -> dict[str, Any]:
    wanted = {(b, p) for b, p in buckets}
    keys = [
        [pk, digest.row_hash(pk, data)]
        for pk, data in sorted(rows.items())
        if any(
            (b, digest.prefix_of(digest.pk_hash(pk), b)) in wanted for b, _ in wanted
        )
    ]
    return {"kind": "keys", "prefixes": buckets, "keys": keys, "request": request}


def requests(rig: Rig) -> list[tuple[int, dict[str, Any]]]:
    return [(p, c) for p, c in rig.confirmations() if c.get("type") == "guardian"]


def wait_requests(rig: Rig, sink: SinkLeg, count: int) -> list[dict[str, Any]]:
    """Step the sink until ``count`` guardian messages are on the confirm topic."""
    got: list[tuple[int, dict[str, Any]]] = []

    def enough() -> bool:
        nonlocal got
        got = requests(rig)
        return len(got) >= count

    pump([sink], enough, timeout_s=60)
    assert {p for p, _c in got} == {partition_for(STORE.encode(), 3)}
    return [c for _p, c in got]


def outcomes(rig: Rig) -> dict[str, str]:
    rows = rig.pg.execute(
        f'SELECT pk, outcome FROM "{rig.schema}".guardian_repairs ORDER BY id'
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_read_rows_apply_at_equal_version_and_never_go_backwards(rig: Rig) -> None:
    """r rows: ties apply, older ones are refused, NULL after makes a tombstone."""
    sink = rig.sink()
    send(
        rig,
        payload(0, 1, key="A", price="1.00", version=100),
        payload(0, 2, key="B", price="2.00", version=100),
        payload(0, 3, key="C", price="3.00", version=100),
        read_row(4, "A", "1.50", version=100),
        read_row(5, "B", "9.99", version=50),
        read_row(6, "C", "3.00", version=120),
        read_row(7, "D", "4.00", version=120),
        read_row(8, "C", None, version=130),
        read_row(9, "E", None, version=130),
    )
    drain(rig, sink, 0, 9)
    pk = {k: digest.canonical_pk({"ARTNUM": k}) for k in "ABCDE"}
    assert outcomes(rig) == {
        pk["A"]: "changed",
        pk["B"]: "refused_newer",
        pk["D"]: "inserted",
        pk["C"]: "deleted",
        pk["E"]: "absent",
    }
    rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert rows == {
        pk["A"]: {"ARTNUM": "A", "PRIX": "1.50"},
        pk["B"]: {"ARTNUM": "B", "PRIX": "2.00"},
        pk["D"]: {"ARTNUM": "D", "PRIX": "4.00"},
    }
    tomb = rig.pg.execute(
        f'SELECT data, version, deleted FROM "{rig.schema}".prix WHERE pk = %s',
        (pk["C"],),
    ).fetchone()
    assert tomb == ({"ARTNUM": "C", "PRIX": "3.00"}, 130, True)
    same = rig.pg.execute(
        f'SELECT outcome FROM "{rig.schema}".guardian_repairs WHERE pk = %s'
        " ORDER BY id",
        (pk["C"],),
    ).fetchall()
    assert [s[0] for s in same] == ["same", "deleted"]
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 9


def test_pk_hash_and_bucket_sums_match_the_store_digest(rig: Rig) -> None:
    """The generated pk_hash and the SQL bucket sums equal the Python digest."""
    sink = rig.sink()
    prices = {f"{i:06d}": f"{i}.{i % 100:02d}" for i in range(1, 60)}
    prices["Crème é"] = "1.00"
    send(
        rig,
        *(
            payload(0, n, key=k, price=p)
            for n, (k, p) in enumerate(prices.items(), start=1)
        ),
    )
    drain(rig, sink, 0, len(prices))
    got = dict(
        rig.pg.execute(f'SELECT pk, pk_hash FROM "{rig.schema}".prix').fetchall()
    )
    assert got == {pk: digest.pk_hash(pk) for pk in got}
    rows = source_of(prices)
    body = buckets_body(rows, 3)
    hub = guardian.hub_buckets(
        rig.pg, rig.schema, STORE, "PRIX", v_low=10**6, bits=3, first=0, last=7
    )
    assert hub == {p: (c, int(s)) for p, c, s in body["buckets"]}


def test_malformed_guardian_messages_are_parked_and_lane_moves_on(rig: Rig) -> None:
    """A g with a bad body and an r with a non-object after are parked."""
    sink = rig.sink()
    bad_g = checksum(1, {"kind": "buckets", "bits": 99}, v_low=5, fences={})
    bad_r = read_row(2, "A", "1.00", version=5)
    bad_r["after"] = "nope"
    send(rig, bad_g, bad_r, payload(0, 3, key="B"))
    drain(rig, sink, 0, 3)
    reasons = {
        d["lane_seq"]: d["reason"]
        for d in odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    }
    assert reasons[1].startswith("guardian.bits:")
    assert reasons[2].startswith("after:")
    assert list(odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)) == [
        digest.canonical_pk({"ARTNUM": "B"})
    ]


def test_drift_is_narrowed_then_repaired_then_done(rig: Rig) -> None:
    """Fences wait for lane 1; a deleted and a changed ODH row are found and fixed."""
    sink = rig.sink()
    prices = {f"{i:04d}": f"{i}.00" for i in range(1, 41)}
    send(
        rig,
        *(
            payload(0, n, key=k, price=p, version=n)
            for n, (k, p) in enumerate(prices.items(), start=1)
        ),
    )
    drain(rig, sink, 0, 40)
    gone, changed = (
        digest.canonical_pk({"ARTNUM": "0007"}),
        digest.canonical_pk({"ARTNUM": "0021"}),
    )
    rig.pg.execute(f'DELETE FROM "{rig.schema}".prix WHERE pk = %s', (gone,))
    rig.pg.execute(
        f"""UPDATE "{rig.schema}".prix SET data = data || '{{"PRIX": "0.01"}}'"""
        " WHERE pk = %s",
        (changed,),
    )
    rows = source_of(prices)
    v_low = 40
    send(
        rig, checksum(41, buckets_body(rows, 4), v_low=v_low, fences={"0": 40, "1": 2})
    )
    drain(rig, sink, 0, 41)
    pump([sink], lambda: True, timeout_s=5)
    assert requests(rig) == []  # lane 1 has not reached its fence yet

    send(
        rig,
        payload(1, 1, key="X1", version=1, table="STOCK"),
        payload(1, 2, key="X2", version=2, table="STOCK"),
    )
    (narrow,) = wait_requests(rig, sink, 1)
    expected = sorted(
        {digest.prefix_of(digest.pk_hash(pk), 4) for pk in (gone, changed)}
    )
    assert narrow["request"] == f"{RUN}/41"
    assert narrow["narrow"] == [[4, p] for p in expected]
    assert narrow["repair"] == [] and narrow["done"] is False

    answer = keys_body(rows, narrow["narrow"], narrow["request"])
    send(rig, checksum(42, answer, v_low=v_low, fences={"0": 41, "1": 2}))
    repair = wait_requests(rig, sink, 2)[1]
    assert repair["request"] == f"{RUN}/42"
    assert sorted(repair["repair"]) == sorted([gone, changed])

    send(
        rig,
        *(
            read_row(
                43 + n,
                json.loads(pk)["ARTNUM"],
                rows[pk]["PRIX"],
                version=45,
                request=repair["request"],
            )
            for n, pk in enumerate(sorted(repair["repair"]))
        ),
    )
    done = wait_requests(rig, sink, 3)[2]
    assert done["done"] is True
    assert done["request"] == f"{RUN}/PRIX/done"
    summary = done["summary"]
    assert (summary["missing"], summary["differs"], summary["extra"]) == (1, 1, 0)
    assert (summary["inserted"], summary["changed"]) == (1, 1)
    hub = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert {pk: hub[pk] for pk in rows} == rows


def test_log_mode_records_differences_and_never_asks_a_repair(rig: Rig) -> None:
    """Mode log narrows to keys, records an extra row, sends no repair, then done."""
    sink = rig.sink()
    prices = {f"{i:04d}": "1.00" for i in range(1, 11)}
    send(
        rig,
        *(
            payload(0, n, key=k, price=p, version=n)
            for n, (k, p) in enumerate(prices.items(), start=1)
        ),
    )
    drain(rig, sink, 0, 10)
    rows = source_of(prices)
    extra = digest.canonical_pk({"ARTNUM": "0005"})
    del rows[extra]  # the source lost it behind the journal's back
    body = {**buckets_body(rows, 2), "mode": "log"}
    send(rig, checksum(11, body, v_low=10, fences={"0": 10}))
    (narrow,) = wait_requests(rig, sink, 1)
    answer = {**keys_body(rows, narrow["narrow"], narrow["request"]), "mode": "log"}
    answer["prefixes"] = narrow["narrow"]
    send(rig, checksum(12, answer, v_low=10, fences={"0": 11}))
    got = wait_requests(rig, sink, 2)
    assert got[1]["done"] is True
    assert all(m["repair"] == [] for m in got)
    keys = rig.pg.execute(
        f'SELECT pk, what, request FROM "{rig.schema}".guardian_keys'
    ).fetchall()
    assert keys == [(extra, "extra", None)]
    assert extra in odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)


def test_reevaluated_item_queues_the_same_request_once(rig: Rig) -> None:
    """An item evaluated twice yields the same request id; nothing new is queued."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="A", price="1.00", version=1))
    drain(rig, sink, 0, 1)
    rows = source_of({"A": "2.00"})
    send(rig, checksum(2, buckets_body(rows, 1), v_low=1, fences={"0": 1}))
    wait_requests(rig, sink, 1)
    before = rig.pg.execute(
        f'SELECT request, body FROM "{rig.schema}".guardian_outbox'
    ).fetchall()
    rig.pg.execute(f'UPDATE "{rig.schema}".guardian_pending SET state = 0')
    assert guardian.evaluate(rig.pg, rig.schema, 10) == 1
    after = rig.pg.execute(
        f'SELECT request, body FROM "{rig.schema}".guardian_outbox'
    ).fetchall()
    assert after == before
    assert [r[0] for r in after] == [f"{RUN}/2"]


def test_signed_ranges_split_at_the_sign() -> None:
    """A range of buckets across 2**63 becomes two signed ranges."""
    assert guardian.signed_ranges([(1, 0, 1)]) == [
        (0, 2**63 - 1),
        (-(2**63), -1),
    ]
    assert guardian.signed_ranges([(2, 3, 3)]) == [(-(2**62), -1)]
    for value in (-(2**63), -5, 0, 2**62):
        for bits in (1, 5, 64):
            prefix = guardian.prefix_of(value, bits)
            ((low, high),) = guardian.signed_ranges([(bits, prefix, prefix)])
            assert low <= value <= high


def test_repair_overtaken_by_a_newer_change_still_ends_in_done(rig: Rig) -> None:
    """The store drops a key that changed while re-read; the change settles it."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="A", price="1.00", version=1))
    drain(rig, sink, 0, 1)
    rows = source_of({"A": "1.00", "B": "2.00"})
    send(rig, checksum(2, buckets_body(rows, 0), v_low=1, fences={"0": 1}))
    (narrow,) = wait_requests(rig, sink, 1)
    assert narrow["narrow"] == [[0, 0]]
    send(
        rig,
        checksum(
            3, keys_body(rows, [[0, 0]], narrow["request"]), v_low=1, fences={"0": 2}
        ),
    )
    repair = wait_requests(rig, sink, 2)[1]
    assert repair["repair"] == [digest.canonical_pk({"ARTNUM": "B"})]

    send(rig, payload(0, 4, key="B", price="2.50", version=9))
    done = wait_requests(rig, sink, 3)[2]
    assert done["done"] is True
    assert done["summary"]["missing"] == 1
    assert done["summary"]["superseded"] == 1


def test_table_made_before_the_guardian_gets_pk_hash_and_its_index(rig: Rig) -> None:
    """An ODH table without pk_hash gets the column (filled) and the index."""
    rig.pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{rig.schema}"')
    rig.pg.execute(
        f'CREATE TABLE "{rig.schema}".prix (store_id text NOT NULL, pk text NOT NULL,'
        " key jsonb NOT NULL, data jsonb, enrichment jsonb, version bigint NOT NULL,"
        " deleted boolean NOT NULL DEFAULT false, source jsonb,"
        " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (store_id, pk))"
    )
    old = digest.canonical_pk({"ARTNUM": "OLD"})
    rig.pg.execute(
        f'INSERT INTO "{rig.schema}".prix (store_id, pk, key, version)'
        " VALUES (%s, %s, '{}', 1)",
        (STORE, old),
    )
    sink = rig.sink()
    send(rig, payload(0, 1, key="NEW"))
    drain(rig, sink, 0, 1)
    got = dict(
        rig.pg.execute(f'SELECT pk, pk_hash FROM "{rig.schema}".prix').fetchall()
    )
    assert got == {
        pk: digest.pk_hash(pk) for pk in (old, digest.canonical_pk({"ARTNUM": "NEW"}))
    }
    index = rig.pg.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'prix'"
        " AND indexdef LIKE '%%pk_hash%%'",
        (rig.schema,),
    ).fetchone()
    assert index is not None and "(store_id, pk_hash)" in index[0]


def test_a_repair_of_a_row_stored_under_an_odd_pk_text_touches_that_row_only(
    rig: Rig,
) -> None:
    """Newcomer run: a copy of key 000014 stored under an escaped pk text was
    'extra'; the store's absent answer tombstoned the genuine row instead."""
    sink = rig.sink()
    send(rig, payload(0, 1, key="000014", price="1.40", version=100))
    drain(rig, sink, 0, 1)
    odd = '{"ARTNUM":"\\u0030\\u0030\\u0030\\u0030\\u0031\\u0034"}'
    rig.pg.execute(
        f'INSERT INTO "{rig.schema}".prix (store_id, pk, key, data, version, deleted)'
        " SELECT store_id, %s, key, data, version, false"
        f' FROM "{rig.schema}".prix WHERE store_id = %s',
        (odd, STORE),
    )
    answer = read_row(2, "000014", None, version=150)
    answer["source"]["guardian"]["pk"] = odd
    send(rig, answer)
    drain(rig, sink, 0, 2)
    live = rig.pg.execute(
        f'SELECT pk, deleted FROM "{rig.schema}".prix ORDER BY pk'
    ).fetchall()
    assert dict(live) == {odd: True, digest.canonical_pk({"ARTNUM": "000014"}): False}
    assert outcomes(rig) == {odd: "deleted"}
