"""A delete whose key field is in error still deletes by its RRN, and a
change parked for its key asks for a repair check.

A DL whose image decodes but flags its key column null (a damaged entry,
docs/fidelity-decoding.md) was parked and the row stayed in the ODH, though
the RRN map knows the key, while a DL whose image the decoder refuses was
deleted by its RRN; and a change parked for its key asked for no check, so
the row stayed wrong until the scheduled one (found by a tester).
"""

from __future__ import annotations

from typing import Any

from test_transformer import (
    box,  # noqa: F401 (the fixture)
    changes,
    drain,
    image,
    leg_for,
)

from appliance import checks

WHOLE = b"\xf0\xf0\xf0"
KEY_FLAGGED = b"\xf1\xf0\xf0"


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
