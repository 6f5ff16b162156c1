"""A DL whose record image is damaged is bad input, and is named.

An ``IMAGES(*AFTER)`` DL comes without an image and is a delete of the key
the RRN map holds. A DL that comes WITH an image the decoder refuses (3
bytes short here) was once taken the same way with nothing said: the
damaged bytes were reported nowhere. The delete by RRN still goes (the map
knows the key), and the refused bytes travel in the change's ``errors``; a
slot the map does not know parks the entry with those bytes.
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

from appliance import store


def test_a_short_delete_image_deletes_by_rrn_and_names_the_bytes(box: Any) -> None:  # noqa: F811
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    short = image("000001", 100)[:-3]
    journal.add("R", "DL", rrn=1, data=short)
    drain(leg_for(conf, conn))

    [delete] = [c for c in changes(conn) if c["op"] == "d"]
    assert delete["key"] == {"ARTNUM": "000001"}
    [error] = delete["source"]["errors"]
    assert error["image"] == "before"
    assert error["field"] == "LIBELLE"  # the field the image ends inside
    assert error["reason"] == (
        "delete image refused, row deleted by its RRN:"
        " image length does not match its layout version"
    )
    assert error["expected"].startswith(f"{len(short) + 3} bytes, got {len(short)} ")
    assert error["bytes_hex"] == short[error["offset"] :].hex().upper()
    counters = store.counters(conn)
    assert counters["transformer.damaged_delete_images"] == 1
    assert counters["transformer.deletes_by_rrn"] == 1
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def test_an_empty_delete_image_is_the_plain_after_images_delete(box: Any) -> None:  # noqa: F811
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("R", "DL", rrn=1, data=b"")
    drain(leg_for(conf, conn))

    [delete] = [c for c in changes(conn) if c["op"] == "d"]
    assert delete["key"] == {"ARTNUM": "000001"}
    assert "errors" not in delete["source"]
    assert "transformer.damaged_delete_images" not in store.counters(conn)


def test_a_damaged_delete_of_an_unknown_slot_is_parked_with_its_bytes(
    box: Any,  # noqa: F811
) -> None:
    conf, conn, journal = box
    damaged = b"\x00" * 5
    journal.add("R", "DL", rrn=7, data=damaged)
    drain(leg_for(conf, conn))

    assert [c for c in changes(conn) if c["op"] == "d"] == []
    [letter] = conn.execute(
        "SELECT reason, bytes_hex, expected, position FROM dead_letters"
    ).fetchall()
    assert letter[0].startswith(
        "delete of RRN 7 in PRIX without image and no known key; its image was"
        " refused too: image length does not match its layout version"
    )
    assert letter[1] == "0000000000"
    assert letter[3] == f"QSQJRN0001:{journal.sequence - 1}"
