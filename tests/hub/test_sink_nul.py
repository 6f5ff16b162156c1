"""U+0000 (NUL) in a message, on real Kafka and PostgreSQL.

PostgreSQL stores the character neither in text nor in jsonb. A message
holding one is parked with table, key, field, bytes and expectation, its
bytes kept, and its lane moves on; a store id holding one is parked without
touching any lane, instead of rolling the batch back at every retry.
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

pytestmark = pytest.mark.integration

EXPECTED = "expected=text without U+0000 (PostgreSQL refuses it in text and jsonb)"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def encoded(*messages: dict[str, Any]) -> list[bytes]:
    return [json.dumps(m).encode() for m in messages]


def drain(rig: Rig, sink: SinkLeg, lane: int, upto: int) -> None:
    pump(
        [sink],
        lambda: (
            odh.fetch_watermarks(rig.pg, schema=rig.schema).get((STORE, 7, lane))
            == upto
        ),
        timeout_s=30,
    )


def test_nul_anywhere_in_a_message_is_parked_naming_where(rig: Rig) -> None:
    """after, key, a field name, the source block: each parked once, lane goes on."""
    in_after = payload(0, 1, key="A")
    in_after["after"]["PRIX"] = "1\u00002"
    in_key = payload(0, 2, key="B\u0000")
    in_name = payload(0, 3, key="C")
    in_name["enrichment"]["tag\u0000"] = "x"
    in_source = payload(0, 4, key="D")
    in_source["source"]["job"] = ["QPADEV0001", "\u0000\u0000"]
    # An escaped backslash before "u0000" is text, not a NUL: applied.
    not_nul = payload(0, 5, key="E", price="\\u0000")
    raws = encoded(in_after, in_key, in_name, in_source, not_nul)
    rig.produce_raw(raws)
    sink = rig.sink()
    drain(rig, sink, 0, 5)

    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert [d["lane_seq"] for d in parked] == [1, 2, 3, 4]
    assert [d["reason"] for d in parked] == [
        'NUL character (U+0000) table=PRIX key={"ARTNUM": "A"} field=after.PRIX'
        f" bytes=31 00 32 {EXPECTED}",
        'NUL character (U+0000) table=PRIX key={"ARTNUM": "B\\u0000"}'
        f" field=key.ARTNUM bytes=42 00 {EXPECTED}",
        'NUL character (U+0000) table=PRIX key={"ARTNUM": "C"}'
        f" field=enrichment.tag\\u0000 bytes=74 61 67 00 {EXPECTED}",
        'NUL character (U+0000) table=PRIX key={"ARTNUM": "D"}'
        f" field=source.job[1] bytes=00 00 {EXPECTED}",
    ]
    # The dead letter keeps the message as received, byte for byte.
    assert [bytes(d["raw"]) for d in parked] == raws[:4]
    assert {d["store_id"] for d in parked} == {STORE}
    rows = odh.fetch_rows(rig.pg, "PRIX", STORE, schema=rig.schema)
    assert rows == {
        odh.canonical_pk({"ARTNUM": "E"}): {"ARTNUM": "E", "PRIX": "\\u0000"}
    }
    assert sink.counts["dead_letters"] == 4
    assert sink.counts["applied"] == 1
    assert sink.counts["pg_errors"] == 0
    confirms = [c["upto"] for _p, c in rig.confirmations() if c["lane"] == 0]
    assert confirms[-1] == 5


def test_nul_in_the_store_id_is_parked_and_the_batch_commits(rig: Rig) -> None:
    """Before: the watermark insert failed, the batch rolled back at every retry.

    Now the message is parked without a lane (its store id cannot be stored)
    and the good message of the same batch is applied.
    """
    bad = payload(0, 1, store_id="MQ\u000001", key="A")
    good = payload(0, 1, key="B")
    raws = encoded(bad, good)
    rig.produce_raw(raws)
    sink = rig.sink()
    drain(rig, sink, 0, 1)

    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert [(d["store_id"], d["lane"], d["lane_seq"]) for d in parked] == [
        (None, None, None)
    ]
    assert parked[0]["reason"] == (
        "store: expected text without U+0000 (NUL) (got 'MQ\\x0001',"
        " bytes 4D 51 00 30 31)"
    )
    assert bytes(parked[0]["raw"]) == raws[0]
    assert list(odh.fetch_watermarks(rig.pg, schema=rig.schema)) == [(STORE, 7, 0)]
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 1
    assert sink.counts["pg_errors"] == 0


def test_value_refused_by_postgresql_names_table_and_key(rig: Rig) -> None:
    """A version past bigint is refused by PostgreSQL itself: parked, named."""
    too_big = payload(0, 1, key="A", version=2**63)
    rig.produce_raw(encoded(too_big, payload(0, 2, key="B")))
    sink = rig.sink()
    drain(rig, sink, 0, 2)

    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert [d["lane_seq"] for d in parked] == [1]
    assert parked[0]["reason"].startswith(
        'rejected by postgresql table=PRIX key={"ARTNUM": "A"}: 22003 '
    )
    assert sink.counts["pg_errors"] == 0
    assert sink.counts["applied"] == 1
