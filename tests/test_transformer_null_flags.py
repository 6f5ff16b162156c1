"""A null indicator on a column that cannot be null is bad input.

DB2 for i never flags a NOT NULL column (nor a primary-key column) null in
an entry's NULL_VALUE_INDICATORS; a flag there is a damaged entry. The
decoder once took any such flag at its word: the field was null with no
error, no counter, no dead letter, and on a key column the change went to
the hub as ``{"ARTNUM": null}``, two of them merged into one ODH row (found
on an emulator stack, PRIX RRN 20 and 21). Now the field is a field error
naming the indicator; a key field in error parks the change.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from test_transformer import (
    PRIX,
    box,  # noqa: F401 (the fixture)
    changes,
    drain,
    image,
    leg_for,
)

from appliance import checks, store
from appliance.decoder import compile_layout
from appliance.layouts import Column, make_layout

# PRIX of tests/test_transformer.py: ARTNUM CHAR(6), PRIX DECIMAL(7,2),
# LIBELLE VARCHAR(10); none of them null-capable, ARTNUM the key.
WHOLE = b"\xf0\xf0\xf0"
KEY_FLAGGED = b"\xf1\xf0\xf0"
PRICE_FLAGGED = b"\xf0\xf1\xf0"


def letters(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM dead_letters ORDER BY id")]


def test_key_flagged_null_is_parked_not_relayed_as_a_null_key(box: Any) -> None:  # noqa: F811
    """The UP's key is unknown: as for any unreadable key after an update
    (tests/test_transformer_key_errors.py), the old key's delete goes and the
    new row is parked with the flag named, never sent as ``{"ARTNUM": null}``."""
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, data=image("000005", 500), null_map=WHOLE)
    bad = journal.add("R", "UP", rrn=5, data=image("000005", 550), null_map=KEY_FLAGGED)
    drain(leg_for(conf, conn))

    assert [(c["op"], c["key"]) for c in changes(conn)] == [("d", {"ARTNUM": "000005"})]
    [letter] = letters(conn)
    assert letter["stage"] == "transformer"
    assert letter["table_name"] == "PRIX"
    assert letter["position"] == f"QSQJRN0001:{journal.sequence - 1}"
    assert letter["field"] == "ARTNUM"
    assert letter["raw_id"] == bad
    assert (
        "null indicator x'F1' on a column that is not null-capable" in letter["reason"]
    )
    assert letter["expected"] == "indicator 0: the column is NOT NULL"
    assert letter["bytes_hex"] == "F0F0F0F0F0F5"


def test_two_key_flagged_inserts_are_not_merged_into_one_null_row(box: Any) -> None:  # noqa: F811
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100), null_map=KEY_FLAGGED)
    journal.add("R", "PT", rrn=2, data=image("000002", 200), null_map=KEY_FLAGGED)
    drain(leg_for(conf, conn))

    assert [c["key"] for c in changes(conn)] == []
    assert [x["field"] for x in letters(conn)] == ["ARTNUM", "ARTNUM"]


def test_not_null_price_flagged_null_is_named_not_silently_null(box: Any) -> None:  # noqa: F811
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100), null_map=PRICE_FLAGGED)
    drain(leg_for(conf, conn))

    [change] = changes(conn)
    assert change["after"]["PRIX"] is None
    [error] = change["source"]["errors"]
    assert error["field"] == "PRIX"
    assert error["reason"] == (
        "null indicator x'F1' on a column that is not null-capable (a damaged entry)"
    )
    assert error["image"] == "after"
    assert letters(conn) == []
    counters = store.counters(conn)
    assert counters["transformer.field_errors"] == 1


def test_a_flag_on_a_null_capable_column_is_a_plain_null() -> None:
    """The usual case stays as it was: no error, the field null."""
    nullable = make_layout(
        "MAG",
        "PRIX",
        [
            Column(
                c.name,
                c.data_type,
                c.length,
                c.scale,
                c.ccsid,
                nullable=c.name == "PRIX",
            )
            for c in PRIX.columns
        ],
        ["ARTNUM"],
    )
    decoded = compile_layout(nullable).decode_record(
        image("000001", 100), PRICE_FLAGGED
    )
    assert decoded.values["PRIX"] is None
    assert decoded.errors == []


# A delete whose key field is in error still deletes by its RRN (the map
# knows the key), and a change parked for its key asks for a repair check.
def test_a_delete_whose_key_is_flagged_null_still_deletes_by_its_rrn(
    box: Any,  # noqa: F811
) -> None:
    conf, conn, journal = box
    journal.add("R", "PT", rrn=5, data=image("000005", 500), null_map=WHOLE)
    journal.add("R", "DL", rrn=5, data=image("000005", 500), null_map=KEY_FLAGGED)
    drain(leg_for(conf, conn))
    got = changes(conn)
    ops = [(c["op"], c["key"]) for c in got]
    assert ops == [("c", {"ARTNUM": "000005"}), ("d", {"ARTNUM": "000005"})]
    [error] = got[1]["source"]["errors"]
    assert error["field"] == "ARTNUM"
    assert error["reason"].startswith(
        "delete image refused, row deleted by its RRN: key field unreadable:"
        " null indicator x'F1'"
    )
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def test_a_parked_key_error_asks_for_a_check_of_its_table(box: Any) -> None:  # noqa: F811
    """No change of that key reaches the hub: only a guardian check can set
    the row right, but none is queued (the scheduled one comes in 6 h)."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=5, data=image("000005", 500), null_map=KEY_FLAGGED)
    drain(leg_for(conf, conn))
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
    assert checks.asked(conn) == [("PRIX", "key_error")]
