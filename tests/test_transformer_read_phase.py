"""The transformer computes a batch outside the write lock, and does it again
under the lock when a write is wanted midway or its entries changed."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from test_transformer import (
    PRIX,
    DictCatalog,
    Journal,
    SlotCatalog,
    changes,
    drain,
    image,
    leg_for,
    settings,
)

from appliance import store


@pytest.fixture
def rig(tmp_path: Any) -> tuple[Any, sqlite3.Connection, Journal]:
    conf = settings(tmp_path)
    conn = store.connect(conf.pipeline.db_path)
    return conf, conn, Journal(conn)


def lock_is_free(path: Any) -> bool:
    """Another leg could write right now."""
    other = sqlite3.connect(path)
    other.isolation_level = None
    other.execute("PRAGMA busy_timeout = 0")
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return False
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    return True


def test_a_batch_is_computed_while_other_legs_may_write(rig: Any) -> None:
    conf, conn, journal = rig
    catalog = DictCatalog(PRIX)
    leg = leg_for(conf, conn, catalog)
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    drain(leg)  # first sight of PRIX: a catalog read, done under the lock
    assert (catalog.loads, leg._tally["under_lock"]) == (1, 1)

    seen: list[bool] = []
    handle = leg._handle

    def watched(row: Any) -> None:
        seen.append(lock_is_free(conf.pipeline.db_path))
        handle(row)

    leg._handle = watched  # type: ignore[method-assign]
    for n in (2, 3, 4):
        journal.add("R", "PT", rrn=n, data=image(f"00000{n}", n * 100))
    drain(leg)
    assert seen == [True, True, True]
    assert leg._tally["under_lock"] == 1  # no batch done again
    assert [c["key"] for c in changes(conn)] == [
        {"ARTNUM": f"00000{n}"} for n in (1, 2, 3, 4)
    ]


def test_an_entry_put_back_meanwhile_has_the_batch_done_under_the_lock(
    rig: Any,
) -> None:
    """An operator's retry puts a parked entry inside the batch's range back to
    new while the batch computes: the write sees it and the batch is redone."""
    conf, conn, journal = rig
    leg = leg_for(conf, conn)
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    drain(leg)
    first = journal.add("R", "PT", rrn=2, data=image("000002", 200))
    parked = journal.add("R", "PT", rrn=3, data=image("000003", 300))
    journal.add("R", "PT", rrn=4, data=image("000004", 400))
    conn.execute("UPDATE raw_entries SET state = 2 WHERE id = ?", (parked,))
    handle = leg._handle
    retries: list[int] = []

    def retried_meanwhile(row: Any) -> None:
        if row["id"] == first and not retries:  # the read phase's pass
            retries.append(parked)
            other = sqlite3.connect(conf.pipeline.db_path)
            with other:
                other.execute(
                    "UPDATE raw_entries SET state = 0 WHERE id = ?", (parked,)
                )
            other.close()
        handle(row)

    leg._handle = retried_meanwhile  # type: ignore[method-assign]
    drain(leg)
    assert leg._tally["under_lock"] == 2
    keys = [c["key"]["ARTNUM"] for c in changes(conn)]
    assert keys == ["000001", "000002", "000003", "000004"]  # each once
    states = conn.execute("SELECT DISTINCT state FROM raw_entries").fetchall()
    assert [s[0] for s in states] == [1]


class CountingSlots(SlotCatalog):
    """Counts the reads of the table's RRNs on the source."""

    def __init__(self) -> None:
        super().__init__(PRIX)
        self.slot_reads = 0

    def read_rrn_pairs(self, library: str, layout: Any) -> list[tuple[int, Any]]:
        self.slot_reads += 1
        return super().read_rrn_pairs(library, layout)


def test_the_source_is_read_once_for_a_reorganize(rig: Any) -> None:
    """F RG and a first layout read give the read phase up before the source."""
    conf, conn, journal = rig
    catalog = CountingSlots()
    catalog.pairs = [(1, {"ARTNUM": "000005"})]
    leg = leg_for(conf, conn, catalog)
    journal.add("R", "PT", rrn=5, data=image("000005", 500))
    drain(leg)
    journal.add("F", "RG")
    journal.add("R", "DL", rrn=1, data=b"")
    drain(leg)
    assert (catalog.loads, catalog.slot_reads) == (1, 1)
    assert leg._tally["under_lock"] == 2  # the layout's batch, then RG's
    assert [c["op"] for c in changes(conn)] == ["c", "d"]
