"""A change whose key has a field error is parked, never relayed with a null key.

A field error nulls the field (its bytes travel in the change's ``errors``).
In a non-key column that is fine; in a key column the change would name no
row at the hub, or merge different rows (two keys x'00'-spoiled differently
are both null), in the hub's upsert and in a commit cycle's netting alike.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from test_transformer import (
    PRIX,
    DictCatalog,
    Journal,
    changes,
    drain,
    image,
    leg_for,
    reasons,
    row_of,
    settings,
)

from appliance import store
from appliance.layouts import make_layout

NUL_KEY = "00\x0001"  # ARTNUM with x'00' at its third character
NUL_KEY_2 = "00\x0002"
NUL_REASON = "NUL character (U+0000) at character 2"
NUL_EXPECTED = "text without x'00' (the ODH cannot store U+0000)"
KEY_REASON = "key field unreadable, change not relayed: " + NUL_REASON


@pytest.fixture
def box(tmp_path: Any) -> tuple[Any, sqlite3.Connection, Journal]:
    conf = settings(tmp_path)
    conn = store.connect(conf.pipeline.db_path)
    return conf, conn, Journal(conn)


def letters(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM dead_letters ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def key_hex(art: str) -> str:
    """ARTNUM's bytes in the image: CHAR(6), blank-padded."""
    return art.ljust(6).encode("cp1147").hex().upper()


def test_nul_in_a_key_field_parks_the_change_with_its_bytes(box: Any) -> None:
    conf, conn, journal = box
    good = journal.add("R", "PT", rrn=1, data=image("000001", 100))
    bad = journal.add("R", "PT", rrn=2, data=image(NUL_KEY, 200, "nul key"))
    drain(leg_for(conf, conn))

    assert [c["raw_id"] for c in changes(conn)] == [good]
    [letter] = letters(conn)
    assert letter["stage"] == "transformer"
    assert letter["table_name"] == "PRIX"
    assert letter["position"] == "QSQJRN0001:1001"
    assert letter["field"] == "ARTNUM"
    assert letter["byte_offset"] == 0
    assert letter["bytes_hex"] == "F0F000F0F140" == key_hex(NUL_KEY)
    assert letter["reason"] == KEY_REASON
    assert letter["expected"] == NUL_EXPECTED
    assert letter["raw_id"] == bad
    assert letter["state"] == "parked"
    # The change as it would have gone, its error included, is kept.
    payload = json.loads(letter["payload"])
    assert (payload["kind"], payload["key"]) == ("insert", {"ARTNUM": None})
    assert payload["after"] == {"ARTNUM": None, "PRIX": "2.00", "LIBELLE": "nul key"}
    assert payload["errors"][0]["field"] == "ARTNUM"
    counters = store.counters(conn)
    assert counters["transformer.dead_letters"] == 1
    assert counters["transformer.key_errors"] == 1
    assert counters["transformer.field_errors"] == 1


def test_nul_in_a_non_key_field_is_relayed_as_a_field_error(box: Any) -> None:
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100, "a\x00b"))
    drain(leg_for(conf, conn))

    assert letters(conn) == []
    [change] = changes(conn)
    assert change["key"] == {"ARTNUM": "000001"}
    assert change["after"] == {"ARTNUM": "000001", "PRIX": "1.00", "LIBELLE": None}
    [error] = change["source"]["errors"]
    assert (error["field"], error["bytes_hex"]) == ("LIBELLE", "0003810082" + "40" * 7)


def test_two_spoiled_keys_in_one_cycle_are_not_merged(box: Any) -> None:
    """Both null keys would net into one change; each is parked on its own."""
    conf, conn, journal = box
    cycle = journal.start()
    first = journal.add("R", "PT", cycle=cycle, rrn=1, data=image(NUL_KEY, 100))
    second = journal.add("R", "PT", cycle=cycle, rrn=2, data=image(NUL_KEY_2, 200))
    journal.add("R", "PT", cycle=cycle, rrn=3, data=image("000003", 300))
    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg_for(conf, conn))

    assert [(c["op"], c["key"]) for c in changes(conn)] == [("c", {"ARTNUM": "000003"})]
    found = letters(conn)
    assert [(x["raw_id"], x["bytes_hex"]) for x in found] == [
        (first, key_hex(NUL_KEY)),
        (second, key_hex(NUL_KEY_2)),
    ]
    assert [json.loads(x["payload"])["after"]["PRIX"] for x in found] == [
        "1.00",
        "2.00",
    ]


def test_any_decode_error_in_a_key_parks_too(tmp_path: Any) -> None:
    """A bad packed sign in a key column (not only NUL) leaves the key unknown."""
    keyed = make_layout("MAG", "PRIX", PRIX.columns, ["ARTNUM", "PRIX"])
    conf = settings(tmp_path)
    conn = store.connect(conf.pipeline.db_path)
    journal = Journal(conn)
    data = bytearray(image("000001", 100, "ok"))
    data[9] = 0x07  # last byte of PRIX: digit 0, sign nibble 7
    raw = journal.add("R", "PT", rrn=1, data=bytes(data))
    journal.add("R", "PT", rrn=2, data=image("000002", 200))
    drain(leg_for(conf, conn, DictCatalog(keyed)))

    assert [c["key"] for c in changes(conn)] == [{"ARTNUM": "000002", "PRIX": "2.00"}]
    [letter] = letters(conn)
    assert (letter["raw_id"], letter["field"], letter["byte_offset"]) == (
        raw,
        "PRIX",
        6,
    )
    assert letter["bytes_hex"] == "00001007"
    assert letter["reason"] == (
        "key field unreadable, change not relayed: invalid packed sign nibble 7"
    )
    assert letter["expected"] == "sign A-F"


def test_a_key_updated_to_a_spoiled_one_deletes_the_old_and_parks_the_new(
    box: Any,
) -> None:
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, data=image("000005", 500))
    up = journal.add("R", "UP", rrn=5, data=image(NUL_KEY, 500))
    drain(leg_for(conf, conn))

    assert [(c["op"], c["key"], c["before"]) for c in changes(conn)] == [
        ("d", {"ARTNUM": "000005"}, row_of("000005", 500))
    ]
    [letter] = letters(conn)
    assert (letter["raw_id"], letter["field"]) == (up, "ARTNUM")
    assert json.loads(letter["payload"])["kind"] == "insert"


def test_a_spoiled_key_updated_to_a_clean_one_parks_the_delete(box: Any) -> None:
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, data=image(NUL_KEY, 500))
    up = journal.add("R", "UP", rrn=5, data=image("000050", 500))
    drain(leg_for(conf, conn))

    assert [(c["op"], c["key"]) for c in changes(conn)] == [("c", {"ARTNUM": "000050"})]
    [letter] = letters(conn)
    assert (letter["raw_id"], letter["bytes_hex"]) == (up, key_hex(NUL_KEY))
    payload = json.loads(letter["payload"])
    assert (payload["kind"], payload["key"]) == ("delete", {"ARTNUM": None})
    assert payload["errors"][0]["image"] == "before"


def test_an_update_of_a_spoiled_key_is_parked(box: Any) -> None:
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, data=image(NUL_KEY, 500))
    journal.add("R", "UP", rrn=5, data=image(NUL_KEY, 550))
    journal.add("R", "DL", rrn=5, data=image(NUL_KEY, 550))
    drain(leg_for(conf, conn))

    assert changes(conn) == []
    kinds = [json.loads(x["payload"])["kind"] for x in letters(conn)]
    assert kinds == ["update", "delete"]
    assert reasons(conn) == [KEY_REASON, KEY_REASON]


def test_an_imageless_delete_at_a_spoiled_key_slot_is_parked(box: Any) -> None:
    """The RRN map does not keep a null key: the image-less DL finds none."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=3, data=image("000003", 300))
    journal.add("R", "UP", rrn=3, data=image(NUL_KEY, 300))
    journal.add("R", "DL", rrn=3, data=b"")
    drain(leg_for(conf, conn))

    # IMAGES(*AFTER): the UP has no before image, so its key is its own
    # (spoiled): parked; the slot is freed, not mapped to a null key.
    assert [(c["op"], c["key"]) for c in changes(conn)] == [("c", {"ARTNUM": "000003"})]
    assert reasons(conn) == [
        KEY_REASON,
        "delete of RRN 3 in PRIX without image and no known key",
    ]


def test_a_batch_that_parks_a_key_is_written_under_the_lock(box: Any) -> None:
    """Parking writes: the read phase gives the batch up, it is done again
    under the lock, and what it writes is what a batch under the lock writes."""
    conf, conn, journal = box
    leg = leg_for(conf, conn)
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    drain(leg)  # first sight of PRIX: the catalog read, under the lock
    under = leg._tally["under_lock"]
    journal.add("R", "PT", rrn=2, data=image("000002", 200))
    bad = journal.add("R", "PT", rrn=3, data=image(NUL_KEY, 300))
    journal.add("R", "PT", rrn=4, data=image("000004", 400))
    drain(leg)

    assert leg._tally["under_lock"] == under + 1
    assert [c["key"]["ARTNUM"] for c in changes(conn)] == ["000001", "000002", "000004"]
    assert [(x["raw_id"], x["field"]) for x in letters(conn)] == [(bad, "ARTNUM")]
    assert leg._tally["parked"] == 1
    assert store.counters(conn)["transformer.key_errors"] == 1
    states = conn.execute("SELECT DISTINCT state FROM raw_entries").fetchall()
    assert [tuple(s) for s in states] == [(1,)]
