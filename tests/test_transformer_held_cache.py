"""The transformer's per-batch cache of ``held_changes`` (``HeldRows``).

Held rows now live in memory within a batch and reach the table only at its
end. With ``pipeline.batch = 1`` every held row goes through the table
between two entries, as it always did; the journal below is run with that
and with batches that cut UB/UP pairs and SC..CM cycles in every place, and
the database must be the same after the same number of entries: held rows,
changes, counters, dead letters, and the RRN map (whose writes wait in
memory until the batch's end too).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_transformer import (
    JOB1,
    JOB2,
    PRIX,
    DictCatalog,
    Journal,
    drain,
    image,
    leg_for,
    ops,
    row_of,
    settings,
)

from appliance import heldrows, store
from appliance.heldrows import HeldRows
from appliance.rrnmap import RrnMap
from appliance.transformer import TransformerLeg

Snapshot = dict[str, Any]


def bad_price(art: str, cents: int) -> bytes:
    """A PRIX image whose packed PRIX has a digit nibble A (a field error)."""
    body = bytearray(image(art, cents))
    body[6] = 0xAA
    return bytes(body)


def feed(journal: Journal) -> None:
    """Pairs, cycles, rollbacks, a reopened cycle and a data gap, interleaved."""
    add = journal.add
    add("R", "PT", rrn=1, data=image("000001", 100))
    add("R", "UB", rrn=1, data=image("000001", 100))
    add("R", "UP", rrn=1, data=image("000001", 110))
    first = journal.start()
    add("R", "PT", cycle=first, rrn=2, data=image("000002", 200))
    add("R", "UB", cycle=first, rrn=2, data=image("000002", 200))
    add("R", "UP", cycle=first, rrn=2, data=image("000002", 210))
    other = journal.start(job=JOB2)  # a second job's cycle, interleaved
    add("R", "UB", cycle=other, rrn=1, job=JOB2, data=image("000001", 110))
    add("R", "UB", cycle=first, rrn=2, data=image("000002", 210))
    add("R", "UP", cycle=other, rrn=1, job=JOB2, data=image("000001", 120))
    add("R", "UP", cycle=first, rrn=2, data=image("000020", 210))  # key update
    add("R", "DL", cycle=other, rrn=1, job=JOB2, data=image("000001", 120))
    add("C", "CM", cycle=first, table="")
    add("R", "PX", cycle=other, rrn=1, job=JOB2, data=image("000001", 130))
    add("C", "RB", cycle=other, table="", job=JOB2)
    add("R", "UB", rrn=3, data=bad_price("000003", 300))  # before with an error
    add("R", "UB", rrn=3, data=image("000003", 300))  # unpaired: replaces it
    add("R", "UB", rrn=4, data=bad_price("000004", 400))
    add("R", "UP", rrn=3, data=image("000003", 310))
    add("R", "UP", rrn=4, data=image("000004", 410))
    reopened = journal.start()
    add("R", "PT", cycle=reopened, rrn=5, data=image("000005", 500))
    add("C", "SC", cycle=reopened, table="")  # reopened before its end
    add("R", "PT", cycle=reopened, rrn=6, data=image("000006", 600))
    add("C", "CM", cycle=reopened, table="")
    add("R", "PT", cycle=7777, rrn=7, data=image("000007", 700))  # no C SC seen
    add("R", "UB", cycle=7777, rrn=7, data=image("000007", 700))
    add("R", "UP", cycle=7777, rrn=7, data=image("000007", 710))
    add("C", "CM", cycle=7777, table="")
    add("C", "CM", cycle=4242, table="")  # a cycle never opened
    cut = journal.start()
    add("R", "PT", cycle=cut, rrn=8, data=image("000008", 800))
    add("R", "UB", rrn=9, data=image("000009", 900))
    add("R", "UB", cycle=cut, rrn=8, data=image("000008", 800))
    add("*", "DG", table="")
    # Its UB is gone; the UP opens the cycle again (no C SC), the CM ends it.
    add("R", "UP", cycle=cut, rrn=8, data=image("000008", 810))
    add("C", "CM", cycle=cut, table="")
    add("R", "UP", rrn=9, data=image("000009", 910))
    last = journal.start()
    add("R", "UB", cycle=last, rrn=2, data=image("000020", 210))
    add("R", "UP", cycle=last, rrn=2, data=image("000020", 220))
    add("R", "DL", cycle=last, rrn=5, data=image("000005", 500))
    add("C", "CM", cycle=last, table="")
    add("R", "UB", rrn=6, data=image("000006", 600))  # left waiting at the end


def snapshot(conn: sqlite3.Connection) -> Snapshot:
    """What a committed batch leaves that the cache could change (as stored)."""
    return {
        "held": [
            tuple(row)
            for row in conn.execute(
                "SELECT cycle_key, raw_id, change FROM held_changes"
                " ORDER BY cycle_key, raw_id"
            )
        ],
        "changes": [
            tuple(row) for row in conn.execute("SELECT * FROM changes ORDER BY id")
        ],
        "counters": store.counters(conn),
        "parked": [
            tuple(row)
            for row in conn.execute(
                "SELECT stage, table_name, position, field, byte_offset, bytes_hex,"
                " expected, reason, raw_id, payload FROM dead_letters ORDER BY id"
            )
        ],
        "new": [
            r[0] for r in conn.execute("SELECT id FROM raw_entries WHERE state = 0")
        ],
        "rrn_keys": [
            tuple(row)
            for row in conn.execute("SELECT * FROM rrn_keys ORDER BY table_name, rrn")
        ],
    }


def entries_done(conn: sqlite3.Connection) -> int:
    return store.counters(conn).get("transformer.entries", 0)


def run(tmp_path: Path, batch: int) -> dict[int, Snapshot]:
    """The journal through a leg of this batch size: a snapshot after each step."""
    conf = settings(tmp_path / f"batch{batch}", batch=batch)
    conf.pipeline.db_path.parent.mkdir()
    conn = store.connect(conf.pipeline.db_path)
    feed(Journal(conn))
    leg = leg_for(conf, conn)
    after = {0: snapshot(conn)}
    while leg.step():
        after[entries_done(conn)] = snapshot(conn)
    return after


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Snapshot]:
    """One entry per batch: every held row is written and read back by SQL."""
    return run(tmp_path_factory.mktemp("reference"), batch=1)


def test_the_reference_journal_does_what_it_says(
    reference: dict[int, Snapshot],
) -> None:
    final = reference[max(reference)]
    counters = final["counters"]
    assert counters["transformer.unpaired_before"] == 1
    assert counters["transformer.field_errors"] == 2
    assert counters["transformer.cycle_without_start"] == 2  # 7777, after the gap
    assert counters["transformer.cycles_cut_by_gap"] == 1
    assert counters["transformer.commits"] == 5
    assert counters["transformer.rollbacks"] == 1
    assert counters["transformer.ignored"] == 1  # CM 4242
    assert len(final["parked"]) == 2  # abandoned PT 000005, cut PT 000008
    waiting = "PRIX".ljust(10) + "MAG".ljust(10) + "PRIX".ljust(10)
    assert [held[0] for held in final["held"]] == [f"before:{waiting}|6|{JOB1}"]
    assert final["new"] == []
    # Every slot an entry set, except 5 (its DL); 1 is the PX's, rolled back
    # or not (RRNs are physical); 2 holds the key the update moved there.
    slots = {1: 1, 2: 20, 3: 3, 4: 4, 6: 6, 7: 7, 8: 8, 9: 9}  # RRN: article
    assert [(rrn, json.loads(key)) for _, rrn, key in final["rrn_keys"]] == [
        (rrn, {"ARTNUM": f"{art:06d}"}) for rrn, art in slots.items()
    ]


@pytest.mark.parametrize("batch", [2, 3, 4, 5, 7, 500])
def test_any_batch_size_leaves_what_one_entry_per_batch_leaves(
    tmp_path: Path, reference: dict[int, Snapshot], batch: int
) -> None:
    """Same held rows, changes, counters, dead letters after the same entries."""
    steps = run(tmp_path, batch)
    assert max(steps) == max(reference)
    for done, found in steps.items():
        assert found == reference[done], f"after {done} entries"


@pytest.mark.parametrize("batch", [2, 3])
def test_too_many_held_keys_to_list_are_read_one_by_one_the_same(
    tmp_path: Path,
    reference: dict[int, Snapshot],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """Past KEYS_READ_MAX the per-key SELECTs come back; the result is the same."""
    monkeypatch.setattr(heldrows, "KEYS_READ_MAX", 1)
    statements: list[str] = []
    original = store.connect

    def traced(path: Path) -> sqlite3.Connection:
        conn = original(path)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(store, "connect", traced)
    steps = run(tmp_path, batch)
    for done, found in steps.items():
        assert found == reference[done], f"after {done} entries"
    by_key = [s for s in statements if "FROM held_changes WHERE cycle_key = " in s]
    assert len(by_key) > 10


def test_batches_do_cut_pairs_and_cycles(reference: dict[int, Snapshot]) -> None:
    """The comparison above covers held rows carried from one batch to the next."""
    for batch in (2, 3, 5, 7):
        carried = {
            key.split(":")[0]
            for done, found in reference.items()
            if done % batch == 0
            for key, _, _ in found["held"]
        }
        assert carried == {"before", "open", "cycle"}, batch


def test_a_pair_and_a_cycle_across_batches_are_held_in_the_table(
    tmp_path: Path,
) -> None:
    """What waits at a batch end is in held_changes, spelled as before."""
    conf = settings(tmp_path, batch=2)
    conn = store.connect(conf.pipeline.db_path)
    journal = Journal(conn)
    ub = journal.add("R", "UB", rrn=5, data=bad_price("000005", 500))
    cycle = journal.sequence  # a C SC's cycle is its own sequence
    cycle_id = journal.add("C", "SC", cycle=cycle, table="")
    pt = journal.add("R", "PT", cycle=cycle, rrn=6, data=image("000006", 600))
    journal.add("R", "UP", rrn=5, data=image("000005", 550))
    journal.add("C", "CM", cycle=cycle, table="")
    leg = leg_for(conf, conn)

    assert leg.step() is True  # UB | SC
    held = snapshot(conn)["held"]
    assert [(key.split(":")[0], raw_id) for key, raw_id, _ in held] == [
        ("before", ub),
        ("open", cycle_id),
    ]
    before_image, before_errors = json.loads(held[0][2])
    assert before_image == {**row_of("000005", 0), "PRIX": None}
    assert [(e["field"], e["image"]) for e in before_errors] == [("PRIX", "before")]
    assert held[1][2] == "{}"

    assert leg.step() is True  # PT in the cycle, UP of the pair
    held = snapshot(conn)["held"]
    assert [(key, raw_id) for key, raw_id, _ in held] == [
        (f"cycle:{cycle_id}", pt),
        (f"open:MAG/QSQJRN:{cycle}", cycle_id),
    ]
    assert [event["kind"] for event in json.loads(held[0][2])] == ["insert"]
    assert ops(conn) == [("u", "000005", before_image, row_of("000005", 550))]

    assert leg.step() is True  # CM
    assert snapshot(conn)["held"] == []
    assert ops(conn)[1] == ("c", "000006", None, row_of("000006", 600))


def test_work_inside_one_batch_never_touches_the_table(box_conn: Any) -> None:
    """A pair and a cycle within one batch: lookups only, no INSERT or DELETE."""
    conf, conn = box_conn
    journal = Journal(conn)
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("R", "UB", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("R", "UP", cycle=cycle, rrn=1, data=image("000001", 150))
    journal.add("C", "CM", cycle=cycle, table="")
    journal.add("R", "UB", rrn=2, data=image("000002", 200))
    journal.add("R", "UP", rrn=2, data=image("000002", 250))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert drain(leg_for(conf, conn)) == 1
    conn.set_trace_callback(None)

    writes = [
        s
        for s in statements
        if "held_changes" in s
        and s.lstrip().startswith(("INSERT", "DELETE", "UPDATE", "REPLACE"))
    ]
    # The reads: the list of keys the table holds, once; no key read on its own.
    reads = [s for s in statements if "FROM held_changes WHERE cycle_key = " in s]
    assert reads == []
    # executemany of nothing: the statement is never run.
    assert writes == []
    assert len(ops(conn)) == 2


@pytest.fixture
def box_conn(tmp_path: Path) -> tuple[Any, sqlite3.Connection]:
    conf = settings(tmp_path)
    return conf, store.connect(conf.pipeline.db_path)


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["commit", "write_back", "rrn_flush"])
def test_a_failed_batch_leaves_the_table_and_is_redone_the_same(
    tmp_path: Path,
    reference: dict[int, Snapshot],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """An exception inside a batch: nothing of it stays, the retry does it all."""
    conf = settings(tmp_path, batch=9)
    conn = store.connect(conf.pipeline.db_path)
    feed(Journal(conn))
    leg = leg_for(conf, conn)
    assert leg.step() is True  # 9 entries: cycles open, held rows in the table
    before = snapshot(conn)
    assert before == reference[9]
    assert before["held"] != []

    if where == "commit":  # in the middle of the batch, after the cycle is taken
        original = leg._commit_control

        def failing(row: sqlite3.Row, kind: str) -> None:
            original(row, kind)
            if kind == "CM":
                raise Boom

        monkeypatch.setattr(leg, "_commit_control", failing)
    elif where == "write_back":  # after the held rows were written, before COMMIT
        write_back = HeldRows.write_back

        def failing_write(self: HeldRows) -> None:
            write_back(self)
            raise Boom

        monkeypatch.setattr(HeldRows, "write_back", failing_write)
    else:  # after the RRN map's slots were written, before COMMIT
        flush = RrnMap.flush

        def failing_flush(self: RrnMap) -> None:
            flush(self)
            raise Boom

        monkeypatch.setattr(RrnMap, "flush", failing_flush)

    with pytest.raises(Boom):
        leg.step()
    assert snapshot(conn) == before
    monkeypatch.undo()

    assert leg.step() is True
    assert snapshot(conn) == reference[18]
    drain(leg)
    assert snapshot(conn) == reference[max(reference)]


def test_a_source_failure_keeps_the_held_rows_of_the_entries_done(
    tmp_path: Path,
) -> None:
    """The batch stops at the failing entry; what came before is written back."""
    conf = settings(tmp_path, batch=500)
    conn = store.connect(conf.pipeline.db_path)
    journal = Journal(conn)
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("C", "CM", cycle=cycle, table="")
    catalog = DictCatalog(PRIX)
    catalog.failures = 1
    now = [100.0]
    leg = TransformerLeg(conf, conn, catalog, clock=lambda: now[0])
    assert leg.step() is True  # the C SC only
    assert [row[:2] for row in snapshot(conn)["held"]] == [
        (f"open:MAG/QSQJRN:{cycle}", 1)
    ]
    now[0] += 61
    assert leg.step() is True
    assert ops(conn) == [("c", "000001", None, row_of("000001", 100))]
    assert snapshot(conn)["held"] == []


def test_a_key_put_twice_fails_like_the_tables_primary_key(
    box_conn: Any,
) -> None:
    """An INSERT of an existing (cycle_key, raw_id) failed; so does the cache."""
    _, conn = box_conn
    with store.transaction(conn):
        conn.execute("INSERT INTO held_changes VALUES ('cycle:1', 2, '[]')")
    held = HeldRows(conn)
    held.put("cycle:1", 2, [])
    with pytest.raises(sqlite3.IntegrityError):
        held.take("cycle:1")
    held = HeldRows(conn)
    held.put("cycle:1", 3, [])
    with pytest.raises(sqlite3.IntegrityError):
        held.put("cycle:1", 3, [])
