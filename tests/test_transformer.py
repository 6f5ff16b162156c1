"""Transformer leg: pairing, commit cycles, net effect, dead letters, restarts."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance import checks, payloads, rrnmap, store, transformer
from appliance.config import BoxSettings, IbmiSection, PipelineSection, StoreSection
from appliance.errors import SourceError
from appliance.layouts import Column, Layout, make_layout
from appliance.transformer import TransformerLeg, build, net_effect

JOB1 = "123456/POS/CAISSE01"
JOB2 = "123457/POS/CAISSE02"
PRIX = make_layout(
    "MAG",
    "PRIX",
    [
        Column("ARTNUM", "CHAR", 6, ccsid=1147),
        Column("PRIX", "DECIMAL", 7, 2),
        Column("LIBELLE", "VARCHAR", 10, ccsid=1147),
    ],
    ["ARTNUM"],
)
PRIX_V2 = make_layout(
    "MAG",
    "PRIX",
    [*PRIX.columns, Column("PROMO", "SMALLINT")],
    ["ARTNUM"],
)


def image(art: str, cents: int, label: str = "", promo: int | None = None) -> bytes:
    """A PRIX record image, encoded the way DB2 for i writes it."""
    packed = bytes.fromhex(f"{abs(cents):07d}" + ("D" if cents < 0 else "F"))
    text = label.encode("cp1147")
    body = art.ljust(6).encode("cp1147") + packed
    body += len(text).to_bytes(2, "big") + text.ljust(10, b"\x40")
    if promo is not None:
        body += promo.to_bytes(2, "big", signed=True)
    return body


def row_of(art: str, cents: int, label: str = "") -> dict[str, Any]:
    return {"ARTNUM": art, "PRIX": f"{cents / 100:.2f}", "LIBELLE": label}


class DictCatalog:
    """A catalog fed from layouts in memory; can fail like an unreachable source."""

    def __init__(self, *layouts: Layout) -> None:
        self.layouts = {(lay.library, lay.table): lay for lay in layouts}
        self.loads = 0
        self.failures = 0

    def load_layout(self, library: str, table: str) -> Layout:
        if self.failures:
            self.failures -= 1
            raise SourceError("source failed while reading layout: connection lost")
        self.loads += 1
        return self.layouts[(library, table)]


class Journal:
    """Writes raw_entries rows as the miner would, sequence by sequence."""

    def __init__(self, conn: sqlite3.Connection, sequence: int = 1000) -> None:
        self.conn = conn
        self.sequence = sequence
        self.receiver = "QSQJRN0001"

    def add(
        self,
        code: str,
        kind: str,
        *,
        cycle: int = 0,
        rrn: int = 0,
        job: str = JOB1,
        data: bytes | None = None,
        table: str = "PRIX",
        null_map: bytes | None = None,
        ts: str = "2026-12-04T14:00:00.000000",
    ) -> int:
        obj = (table.ljust(10) + "MAG".ljust(10) + table.ljust(10)) if table else ""
        with store.transaction(self.conn):
            cur = self.conn.execute(
                "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
                " sequence, code, entry_type, entry_ts, commit_cycle, object,"
                " object_type, rrn, job, null_map, data, mined_at)"
                " VALUES ('MAG/QSQJRN', 'MAG', ?, ?, ?, ?, ?, ?, ?, '*QDDS', ?, ?, ?,"
                " ?, 1796407200.5)",
                (
                    self.receiver,
                    self.sequence,
                    code,
                    kind,
                    ts,
                    cycle,
                    obj,
                    rrn,
                    job,
                    null_map,
                    data,
                ),
            )
        self.sequence += 1
        return int(cur.lastrowid or 0)

    def start(self, job: str = JOB1) -> int:
        """C SC: the cycle id is the SC's own sequence number."""
        cycle = self.sequence
        self.add("C", "SC", cycle=cycle, table="", job=job)
        return cycle


def settings(tmp_path: Path, batch: int = 500) -> BoxSettings:
    return BoxSettings(
        store=StoreSection(id="MQ01", timezone="America/Martinique"),
        ibmi=IbmiSection(table_library="MAG", tables=["PRIX"]),
        pipeline=PipelineSection(db_path=tmp_path / "pipeline.db", batch=batch),
    )


@pytest.fixture
def box(tmp_path: Path) -> tuple[BoxSettings, sqlite3.Connection, Journal]:
    conf = settings(tmp_path)
    conn = store.connect(conf.pipeline.db_path)
    return conf, conn, Journal(conn)


def leg_for(
    conf: BoxSettings, conn: sqlite3.Connection, catalog: DictCatalog | None = None
) -> TransformerLeg:
    return TransformerLeg(conf, conn, catalog or DictCatalog(PRIX))


def drain(leg: TransformerLeg) -> int:
    steps = 0
    while leg.step():
        steps += 1
    return steps


def changes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM changes ORDER BY id").fetchall()
    out = []
    for row in rows:
        item = dict(row)
        for name in ("key", "before", "after", "source"):
            item[name] = None if item[name] is None else json.loads(item[name])
        out.append(item)
    return out


def ops(conn: sqlite3.Connection) -> list[tuple[str, str, Any, Any]]:
    return [
        (c["op"], c["key"]["ARTNUM"], c["before"], c["after"]) for c in changes(conn)
    ]


def test_autocommit_insert_update_delete_emit_at_once(box: Any) -> None:
    """Cycle 0 entries become c, u, d changes with key, images and source."""
    conf, conn, journal = box
    pt = journal.add("R", "PT", rrn=1, data=image("000123", 1250, "Café"))
    journal.add("R", "UB", rrn=1, data=image("000123", 1250, "Café"))
    up = journal.add("R", "UP", rrn=1, data=image("000123", 1199, "Café"))
    dl = journal.add("R", "DL", rrn=1, data=image("000123", 1199, "Café"))
    assert drain(leg_for(conf, conn)) == 1

    found = changes(conn)
    assert [(c["op"], c["raw_id"]) for c in found] == [("c", pt), ("u", up), ("d", dl)]
    assert found[0]["key"] == {"ARTNUM": "000123"}
    assert found[0]["before"] is None
    assert found[0]["after"] == row_of("000123", 1250, "Café")
    assert found[1]["before"]["PRIX"] == "12.50"
    assert found[1]["after"]["PRIX"] == "11.99"
    assert found[2]["after"] is None
    assert found[2]["before"]["PRIX"] == "11.99"
    assert found[0]["table_name"] == "PRIX"
    # 14:00 in Martinique (UTC-4) is 18:00 UTC = unix 1796407200.
    assert found[0]["entry_ts_ms"] == 1796407200000
    assert found[0]["source"] == {
        "journal": "MAG/QSQJRN",
        "receiver": "QSQJRN0001",
        "receiver_library": "MAG",
        "sequence": 1000,
        "commit_cycle": 0,
        "library": "MAG",
        "table": "PRIX",
        "rrn": 1,
        "entry_ts": "2026-12-04T14:00:00.000000",
        "entry_ts_utc": "2026-12-04T18:00:00.000000Z",
    }
    assert (
        conn.execute("SELECT count(*) FROM raw_entries WHERE state = 0").fetchone()[0]
        == 0
    )
    counters = store.counters(conn)
    assert counters["transformer.entries"] == 4
    assert counters["transformer.changes"] == 3


def test_committed_cycle_emits_net_effect(box: Any) -> None:
    """Changes of a cycle wait for C CM, then one change per key: first vs last."""
    conf, conn, journal = box
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=7, data=image("000007", 100))
    journal.add("R", "UB", cycle=cycle, rrn=7, data=image("000007", 100))
    journal.add("R", "UP", cycle=cycle, rrn=7, data=image("000007", 150))
    journal.add("R", "UB", cycle=cycle, rrn=8, data=image("000008", 200))
    journal.add("R", "UP", cycle=cycle, rrn=8, data=image("000008", 210))
    journal.add("R", "UB", cycle=cycle, rrn=8, data=image("000008", 210))
    last = journal.add("R", "UP", cycle=cycle, rrn=8, data=image("000008", 220))
    leg = leg_for(conf, conn)
    drain(leg)
    assert changes(conn) == []  # nothing before the commit

    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg)
    assert ops(conn) == [
        ("c", "000007", None, row_of("000007", 150)),
        ("u", "000008", row_of("000008", 200), row_of("000008", 220)),
    ]
    assert changes(conn)[1]["raw_id"] == last
    assert conn.execute("SELECT count(*) FROM held_changes").fetchone()[0] == 0


def reference_trace(journal: Journal, end: str) -> None:
    """Domain brief §2.4: cycle 1000 of job 123456/POS/CAISSE01, then ``end``."""
    cycle = journal.start()
    assert cycle == 1000
    row57, row12 = image("000057", 500), image("000012", 1200)
    row12_new, row9 = image("000012", 1300), image("000009", 900)
    journal.add("R", "PT", cycle=cycle, rrn=57, data=row57)
    journal.add("R", "UB", cycle=cycle, rrn=12, data=row12)
    journal.add("R", "UP", cycle=cycle, rrn=12, data=row12_new)
    journal.add("R", "DL", cycle=cycle, rrn=9, data=row9)
    journal.add("R", "PX", cycle=cycle, rrn=9, data=row9)
    journal.add("R", "BR", cycle=cycle, rrn=12, data=row12_new)
    journal.add("R", "UR", cycle=cycle, rrn=12, data=row12)
    journal.add("R", "DR", cycle=cycle, rrn=57, data=row57)
    journal.add("C", end, cycle=cycle, table="")


def test_rolled_back_reference_trace_emits_nothing(box: Any) -> None:
    """Domain brief §2.4 / §7.12 (upstream Debezium loop): a rollback ships nothing."""
    conf, conn, journal = box
    reference_trace(journal, "RB")
    drain(leg_for(conf, conn))
    assert changes(conn) == []
    assert conn.execute("SELECT count(*) FROM held_changes").fetchone()[0] == 0
    assert store.counters(conn)["transformer.rollbacks"] == 1


def test_compensated_trace_ending_in_commit_emits_nothing(box: Any) -> None:
    """Compensations cancel under the net-effect rule even without a C RB."""
    conf, conn, journal = box
    reference_trace(journal, "CM")
    drain(leg_for(conf, conn))
    assert changes(conn) == []


def test_savepoint_rollback_keeps_only_surviving_changes(box: Any) -> None:
    """ROLLBACK TO SAVEPOINT writes compensations, then the cycle commits."""
    conf, conn, journal = box
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("R", "UB", cycle=cycle, rrn=2, data=image("000002", 200))
    journal.add("R", "UP", cycle=cycle, rrn=2, data=image("000002", 250))
    # savepoint S1, then work that is rolled back to S1:
    journal.add("R", "PT", cycle=cycle, rrn=3, data=image("000003", 300))
    journal.add("R", "UB", cycle=cycle, rrn=2, data=image("000002", 250))
    journal.add("R", "UP", cycle=cycle, rrn=2, data=image("000002", 999))
    journal.add("R", "BR", cycle=cycle, rrn=2, data=image("000002", 999))
    journal.add("R", "UR", cycle=cycle, rrn=2, data=image("000002", 250))
    journal.add("R", "DR", cycle=cycle, rrn=3, data=image("000003", 300))
    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg_for(conf, conn))
    assert ops(conn) == [
        ("c", "000001", None, row_of("000001", 100)),
        ("u", "000002", row_of("000002", 200), row_of("000002", 250)),
    ]


def test_interleaved_jobs_pair_before_and_after_per_job(box: Any) -> None:
    """jhc-systems/debezium-connector-ibmi #75: UB1 UB2 UP2 UP1 pair per job+rrn."""
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, job=JOB1, data=image("000005", 500))
    journal.add("R", "UB", rrn=6, job=JOB2, data=image("000006", 600))
    journal.add("R", "UP", rrn=6, job=JOB2, data=image("000006", 650))
    journal.add("R", "UP", rrn=5, job=JOB1, data=image("000005", 550))
    drain(leg_for(conf, conn))
    assert ops(conn) == [
        ("u", "000006", row_of("000006", 600), row_of("000006", 650)),
        ("u", "000005", row_of("000005", 500), row_of("000005", 550)),
    ]


def test_update_without_before_image_has_null_before(box: Any) -> None:
    """jhc #75: IMAGES(*AFTER) gives an UP alone; the update is kept, before null."""
    conf, conn, journal = box
    journal.add("R", "UP", rrn=5, data=image("000005", 550))
    drain(leg_for(conf, conn))
    assert ops(conn) == [("u", "000005", None, row_of("000005", 550))]


def test_before_and_after_in_different_steps_still_pair(tmp_path: Path) -> None:
    """A UB at the end of one batch waits in held_changes for the next batch."""
    conf = settings(tmp_path, batch=1)
    conn = store.connect(conf.pipeline.db_path)
    journal = Journal(conn)
    journal.add("R", "UB", rrn=5, data=image("000005", 500))
    journal.add("R", "UP", rrn=5, data=image("000005", 550))
    assert drain(leg_for(conf, conn)) == 2
    assert ops(conn) == [("u", "000005", row_of("000005", 500), row_of("000005", 550))]


def test_key_update_is_delete_then_insert(box: Any) -> None:
    """An UPDATE of the primary key removes the old key and creates the new one."""
    conf, conn, journal = box
    journal.add("R", "UB", rrn=5, data=image("000005", 500))
    journal.add("R", "UP", rrn=5, data=image("000050", 500))
    drain(leg_for(conf, conn))
    assert ops(conn) == [
        ("d", "000005", row_of("000005", 500), None),
        ("c", "000050", None, row_of("000050", 500)),
    ]


def test_mis_sized_image_is_parked_and_the_relay_goes_on(box: Any) -> None:
    """Domain brief §4.8 rule 1: a short image goes to dead letters, in full detail."""
    conf, conn, journal = box
    bad = journal.add("R", "PT", rrn=1, data=image("000001", 100)[:8])
    good = journal.add("R", "PT", rrn=2, data=image("000002", 200))
    drain(leg_for(conf, conn))

    letters = conn.execute("SELECT * FROM dead_letters").fetchall()
    assert len(letters) == 1
    letter = letters[0]
    assert letter["stage"] == "transformer"
    assert letter["table_name"] == "PRIX"
    assert letter["position"] == "QSQJRN0001:1000"
    assert letter["field"] == "PRIX"  # the first field the short image cuts
    assert letter["byte_offset"] == 6
    assert letter["bytes_hex"] == "0000"
    assert letter["reason"] == "image length does not match its layout version"
    assert letter["expected"] == (
        f"{PRIX.record_length} bytes, got 8 (layout in force since the first"
        " layout read)"
    )
    assert letter["raw_id"] == bad
    assert [c["raw_id"] for c in changes(conn)] == [good]
    assert store.counters(conn)["transformer.dead_letters"] == 1


def test_invalid_packed_field_is_a_field_error_carried_in_the_change(
    box: Any,
) -> None:
    """Popsink #31: a bad sign nibble nulls PRIX, the row ships with its error."""
    conf, conn, journal = box
    data = bytearray(image("000001", 100, "ok"))
    data[9] = 0x07  # last byte of PRIX: digit 0, sign nibble 7
    raw = journal.add("R", "PT", rrn=1, data=bytes(data))
    drain(leg_for(conf, conn))

    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    [change] = changes(conn)
    assert change["raw_id"] == raw
    assert change["after"] == {"ARTNUM": "000001", "PRIX": None, "LIBELLE": "ok"}
    assert change["source"]["errors"] == [
        {
            "field": "PRIX",
            "offset": 6,
            "bytes_hex": "00001007",
            "reason": "invalid packed sign nibble 7",
            "expected": "sign A-F",
            "image": "after",
        }
    ]
    assert store.counters(conn)["transformer.field_errors"] == 1


def test_crash_between_steps_repeats_nothing_and_loses_nothing(tmp_path: Path) -> None:
    """Closing the database between steps, then resuming, gives the same changes."""

    def write(journal: Journal) -> None:
        cycle = journal.start()
        journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
        journal.add("R", "UB", rrn=9, data=image("000009", 900))
        journal.add("R", "UB", cycle=cycle, rrn=2, data=image("000002", 200))
        journal.add("R", "UP", rrn=9, data=image("000009", 950))
        journal.add("R", "UP", cycle=cycle, rrn=2, data=image("000002", 260))
        journal.add("C", "CM", cycle=cycle, table="")
        journal.add("R", "DL", rrn=9, data=image("000009", 950))

    reference_dir = tmp_path / "reference"
    conf = settings(reference_dir)
    ref_conn = store.connect(conf.pipeline.db_path)
    write(Journal(ref_conn))
    drain(leg_for(conf, ref_conn))
    expected = ops(ref_conn)
    assert len(expected) == 4

    conf = settings(tmp_path, batch=2)
    conn = store.connect(conf.pipeline.db_path)
    write(Journal(conn))
    for _ in range(3):  # stop mid-stream, inside the open cycle
        leg = leg_for(conf, conn)
        leg.step()
        leg.close()
        conn = store.connect(conf.pipeline.db_path)
    drain(leg_for(conf, conn))
    assert ops(conn) == expected
    assert [c["raw_id"] for c in changes(conn)] == [
        c["raw_id"] for c in changes(ref_conn)
    ]


def test_failure_inside_a_step_leaves_the_batch_untouched(box: Any) -> None:
    """An unexpected error rolls the whole step back: entries stay new."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))

    class Broken(DictCatalog):
        def load_layout(self, library: str, table: str) -> Layout:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        leg_for(conf, conn, Broken()).step()
    assert (
        conn.execute("SELECT count(*) FROM raw_entries WHERE state = 0").fetchone()[0]
        == 1
    )
    assert changes(conn) == []
    drain(leg_for(conf, conn))
    assert len(changes(conn)) == 1


def test_source_failure_backs_off_then_resumes(box: Any) -> None:
    """A lost catalog connection keeps the entry new and retries after a pause."""
    conf, conn, journal = box
    journal.add("J", "PR", table="")
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    catalog = DictCatalog(PRIX)
    catalog.failures = 1
    now = [100.0]
    leg = TransformerLeg(conf, conn, catalog, clock=lambda: now[0])
    assert leg.step() is True  # the J entry before the failure is done
    assert (
        conn.execute("SELECT count(*) FROM raw_entries WHERE state = 0").fetchone()[0]
        == 1
    )
    assert leg.step() is False  # still backing off
    now[0] += 61
    assert leg.step() is True
    assert len(changes(conn)) == 1
    assert "source_failures" not in leg.status()


def test_cycle_number_reused_after_reset_is_a_new_cycle(box: Any) -> None:
    """Domain brief §2.2: after a sequence reset, cycle 1000 names another cycle."""
    conf, conn, journal = box
    first = journal.start()
    journal.add("R", "PT", cycle=first, rrn=1, data=image("000001", 100))
    journal.add("C", "CM", cycle=first, table="")
    journal.receiver, journal.sequence = "QSQJRN0002", 1000  # CHGJRN SEQOPT(*RESET)
    second = journal.start()
    assert second == first
    journal.add("R", "PT", cycle=second, rrn=2, data=image("000002", 200))
    journal.add("C", "RB", cycle=second, table="")
    drain(leg_for(conf, conn))
    assert ops(conn) == [("c", "000001", None, row_of("000001", 100))]


def test_clear_member_emits_a_truncate(box: Any) -> None:
    """F CR (CLRPFM) removes every row without DL entries: op 't'."""
    conf, conn, journal = box
    raw = journal.add("F", "CR")
    drain(leg_for(conf, conn))
    found = changes(conn)
    assert [(c["op"], c["key"], c["raw_id"]) for c in found] == [("t", {}, raw)]


def test_layout_change_reloads_for_later_entries_only(box: Any) -> None:
    """D CG: entries before it decode with the old layout, after it with the new."""
    conf, conn, journal = box
    catalog = DictCatalog(PRIX)
    leg = leg_for(conf, conn, catalog)
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    drain(leg)
    catalog.layouts[("MAG", "PRIX")] = PRIX_V2  # ALTER TABLE ADD PROMO
    journal.add("R", "PT", rrn=2, data=image("000002", 200))
    journal.add("D", "CG")
    journal.add("R", "PT", rrn=3, data=image("000003", 300, promo=5))
    drain(leg)
    after = [c["after"] for c in changes(conn)]
    assert [a.get("PROMO") for a in after] == [None, None, 5]
    assert "PROMO" not in after[1]
    assert catalog.loads == 2
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def test_null_map_from_the_journal_is_honoured(box: Any) -> None:
    """Popsink #9: a field flagged null in NULL_VALUE_INDICATORS is null."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100, "x"), null_map=b"001")
    drain(leg_for(conf, conn))
    assert changes(conn)[0]["after"]["LIBELLE"] is None


def test_other_codes_and_tables_are_counted_as_ignored(box: Any) -> None:
    """J entries, F OP/CL and other tables produce nothing but a counter."""
    conf, conn, journal = box
    journal.add("J", "PR", table="")
    journal.add("F", "OP")
    journal.add("R", "PT", rrn=1, table="VENTES", data=b"\x00")
    drain(leg_for(conf, conn))
    assert changes(conn) == []
    assert store.counters(conn)["transformer.ignored"] == 3


def test_net_effect_insert_then_delete_is_nothing() -> None:
    """The net-effect rule: a row created and removed in one cycle never existed."""
    base = {"table": "PRIX", "key": {"ARTNUM": "1"}}
    events = [
        {**base, "kind": "insert", "before": None, "after": {"A": 1}, "raw_id": 1},
        {**base, "kind": "delete", "before": {"A": 1}, "after": None, "raw_id": 2},
    ]
    assert net_effect(events) == []


def test_build_wires_the_pipeline_database(tmp_path: Path) -> None:
    """build() opens the pipeline database; the catalog connects only when needed."""
    leg = build(settings(tmp_path))
    try:
        assert leg.name == "transformer"
        assert leg.step() is False
        assert leg.status() == "this run: entries=0 changes=0 parked=0"
    finally:
        leg.close()


def test_before_image_errors_survive_the_commit_cycle(box: Any) -> None:
    """A bad field in a UB held until CM is reported on the update's before."""
    conf, conn, journal = box
    bad_before = bytearray(image("000001", 100))
    bad_before[9] = 0x3A  # digit 3, sign A: fine; then break a digit nibble
    bad_before[7] = 0xAB
    cycle = journal.start()
    journal.add("R", "UB", cycle=cycle, rrn=1, data=bytes(bad_before))
    journal.add("R", "UP", cycle=cycle, rrn=1, data=image("000001", 250))
    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg_for(conf, conn))

    [change] = changes(conn)
    assert change["op"] == "u"
    assert change["before"]["PRIX"] is None
    assert change["after"] == row_of("000001", 250)
    errors = change["source"]["errors"]
    assert [(e["field"], e["image"], e["reason"]) for e in errors] == [
        ("PRIX", "before", "invalid packed digit nibble")
    ]


def test_blank_numerics_are_null_counted_and_warned_once_per_table(
    box: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Popsink #52: 0x40-filled PRIX is null, counted per field, one WARNING."""
    conf, conn, journal = box
    for rrn in (1, 2, 3):
        data = bytearray(image(f"00000{rrn}", 100))
        data[6:10] = b"\x40" * 4
        journal.add("R", "PT", rrn=rrn, data=bytes(data))
    with caplog.at_level("WARNING", logger="appliance.transformer"):
        drain(leg_for(conf, conn))

    assert [c["after"]["PRIX"] for c in changes(conn)] == [None, None, None]
    assert all("errors" not in c["source"] for c in changes(conn))
    assert store.counters(conn)["transformer.blank_numerics"] == 3
    warnings = [r for r in caplog.records if "blank numeric" in r.getMessage()]
    assert len(warnings) == 1
    assert "table=PRIX" in warnings[0].getMessage()


def test_entries_before_an_alter_keep_their_layout_across_a_restart(
    tmp_path: Path,
) -> None:
    """§4.5: old-layout entries queued before D CG decode after a restart too."""
    conf = settings(tmp_path, batch=1)
    conn = store.connect(conf.pipeline.db_path)
    journal = Journal(conn)
    catalog = DictCatalog(PRIX)
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    TransformerLeg(conf, conn, catalog).step()  # layout v1 read and kept

    # The relay falls behind: the ALTER happens, the catalog moves on.
    journal.add("R", "PT", rrn=2, data=image("000002", 200))
    journal.add("D", "CG")
    journal.add("R", "PT", rrn=3, data=image("000003", 300, promo=7))
    catalog.layouts[("MAG", "PRIX")] = PRIX_V2
    restarted = TransformerLeg(conf, store.connect(conf.pipeline.db_path), catalog)
    drain(restarted)

    after = [c["after"] for c in changes(conn)]
    assert after[1] == row_of("000002", 200)
    assert after[2] == {**row_of("000003", 300), "PROMO": 7}
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert catalog.loads == 2


def test_first_read_behind_an_alter_parks_older_images_with_a_clear_reason(
    box: Any,
) -> None:
    """§4.5: only the newer layout is known: older images are parked, never shifted."""
    conf, conn, journal = box
    old = journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("D", "CG")
    journal.add("R", "PT", rrn=2, data=image("000002", 200, promo=1))
    drain(leg_for(conf, conn, DictCatalog(PRIX_V2)))

    letter = conn.execute("SELECT * FROM dead_letters").fetchone()
    assert letter["raw_id"] == old
    assert letter["reason"] == (
        "image older than every known layout version of the table"
    )
    assert letter["expected"] == (
        f"{PRIX_V2.record_length} bytes, got {PRIX.record_length}"
        " (layout in force since QSQJRN0001:1001)"
    )
    assert [c["after"].get("PROMO") for c in changes(conn)] == [1]


def test_hidden_columns_are_decoded_and_named_in_source(box: Any) -> None:
    """§4.1: a hidden column is in the image and the change says it is hidden."""
    conf, conn, journal = box
    hidden = make_layout(
        "MAG",
        "PRIX",
        [*PRIX.columns, Column("ROWCHG", "SMALLINT", hidden=True)],
        ["ARTNUM"],
    )
    journal.add("R", "PT", rrn=1, data=image("000001", 100, promo=3))
    drain(leg_for(conf, conn, DictCatalog(hidden)))
    [change] = changes(conn)
    assert change["after"]["ROWCHG"] == 3
    assert change["source"]["hidden_columns"] == ["ROWCHG"]


def test_field_errors_reach_the_message_through_the_enricher(box: Any) -> None:
    """Contracts §2/§3: source.errors of a change becomes the message's errors."""
    from appliance.enricher import EnricherLeg

    conf, conn, journal = box
    data = bytearray(image("000001", 100))
    data[9] = 0x07
    journal.add("R", "PT", rrn=1, data=bytes(data))
    drain(leg_for(conf, conn))
    enricher = EnricherLeg(conf, conn)
    enricher.setup()
    while enricher.step():
        pass

    stored = conn.execute("SELECT payload, dict_id FROM outbox").fetchone()
    payload = json.loads(payloads.read_text(conn, stored[0], stored[1]))
    assert payload["after"]["PRIX"] is None
    assert "errors" not in payload["source"]
    assert [(e["field"], e["bytes_hex"]) for e in payload["errors"]] == [
        ("PRIX", "00001007")
    ]


def test_ccsid_overrides_from_settings_decode_mis_tagged_and_65535_columns(
    tmp_path: Path,
) -> None:
    """jhc #40 (PR #46), node-jt400 #4: TABLE.* and TABLE.COLUMN overrides apply."""
    tagged = make_layout(
        "MAG",
        "PRIX",
        [
            Column("ARTNUM", "CHAR", 6, ccsid=65535),
            Column("PRIX", "DECIMAL", 7, 2),
            Column("LIBELLE", "VARCHAR", 10, ccsid=37),
        ],
        ["ARTNUM"],
    )
    plain_conf = settings(tmp_path)
    ibmi = plain_conf.ibmi.model_copy(
        update={"ccsid_overrides": {"PRIX.*": 1147, "PRIX.LIBELLE": 297}}
    )
    conf = plain_conf.model_copy(update={"ibmi": ibmi})
    conn = store.connect(conf.pipeline.db_path)
    Journal(conn).add("R", "PT", rrn=1, data=image("00000A", 100, "Café"))
    drain(TransformerLeg(conf, conn, DictCatalog(tagged)))
    assert changes(conn)[0]["after"] == row_of("00000A", 100, "Café")

    plain = store.connect(tmp_path / "plain.db")
    Journal(plain).add("R", "PT", rrn=1, data=image("00000A", 100, "Café"))
    drain(TransformerLeg(plain_conf, plain, DictCatalog(tagged)))
    after = changes(plain)[0]["after"]
    assert after["ARTNUM"] == "F0F0F0F0F0C1"  # 65535 without override: hex
    assert after["LIBELLE"] == "Caf{"  # 1147 bytes read as the 37 tag says


def test_minimized_entry_is_parked_with_its_reason(box: Any) -> None:
    """§1.4/§4.6: null indicator '9' (MINENTDTA) parks the entry, never decodes it."""
    conf, conn, journal = box
    raw = journal.add("R", "UP", rrn=1, data=image("000001", 100), null_map=b"090")
    drain(leg_for(conf, conn))
    letter = conn.execute("SELECT * FROM dead_letters").fetchone()
    assert letter["raw_id"] == raw
    assert letter["reason"] == "field not recorded (minimized entry, null indicator 9)"
    assert letter["field"] == "PRIX"
    assert changes(conn) == []


class SlotCatalog(DictCatalog):
    """A catalog that also answers the (RRN, key) read made after RGZPFM."""

    def __init__(self, *layouts: Layout) -> None:
        super().__init__(*layouts)
        self.pairs: list[tuple[int, dict[str, Any]]] = []
        self.slot_failures = 0

    def read_rrn_pairs(
        self, library: str, layout: Layout
    ) -> list[tuple[int, dict[str, Any]]]:
        if self.slot_failures:
            self.slot_failures -= 1
            raise SourceError("source failed while reading rrns: connection lost")
        return list(self.pairs)


def reasons(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT reason FROM dead_letters ORDER BY id")]


def test_imageless_delete_removes_the_key_last_seen_at_its_rrn(box: Any) -> None:
    """IMAGES(*AFTER): an image-less DL deletes the mapped key, across restarts."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("R", "PT", rrn=2, data=image("000002", 200))
    journal.add("R", "UP", rrn=2, data=image("000022", 250))  # key moved at RRN 2
    drain(leg_for(conf, conn))
    dl = journal.add("R", "DL", rrn=2, data=b"")
    drain(leg_for(conf, conn))  # a new leg: the map came from the database

    last = changes(conn)[-1]
    assert (last["op"], last["key"], last["raw_id"]) == ("d", {"ARTNUM": "000022"}, dl)
    assert last["before"] is None and last["after"] is None
    assert last["source"]["rrn"] == 2
    assert reasons(conn) == []
    assert store.counters(conn)["transformer.deletes_by_rrn"] == 1


def test_imageless_delete_of_an_unknown_rrn_is_parked_never_guessed(box: Any) -> None:
    """No image and no key known for the RRN: a dead letter, no change."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("R", "DL", rrn=1, data=image("000001", 100))  # frees RRN 1
    journal.add("R", "DL", rrn=1, data=b"")
    journal.add("R", "DL", rrn=7, data=b"")
    drain(leg_for(conf, conn))

    assert [c["op"] for c in changes(conn)] == ["c", "d"]
    assert reasons(conn) == [
        "delete of RRN 1 in PRIX without image and no known key",
        "delete of RRN 7 in PRIX without image and no known key",
    ]


def test_imageless_delete_in_a_cycle_follows_rollbacks(box: Any) -> None:
    """The map follows RRNs in entry order: a rolled-back insert frees its slot."""
    conf, conn, journal = box
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=3, data=image("000003", 300))
    journal.add("R", "DR", cycle=cycle, rrn=3, data=image("000003", 300))
    journal.add("C", "RB", cycle=cycle, table="")
    journal.add("R", "PT", rrn=4, data=image("000004", 400))
    cycle = journal.start()
    journal.add("R", "DL", cycle=cycle, rrn=4, data=b"")
    journal.add("R", "DL", cycle=cycle, rrn=3, data=b"")
    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg_for(conf, conn))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [
        ("c", "000004"),
        ("d", "000004"),
    ]
    assert reasons(conn) == ["delete of RRN 3 in PRIX without image and no known key"]


def test_reorganize_replaces_the_map_with_the_source_pairs(box: Any) -> None:
    """F RG renumbers RRNs: the map is what the source says after it."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("R", "PT", rrn=5, data=image("000005", 500))
    journal.add("R", "DL", rrn=1, data=image("000001", 100))
    journal.add("F", "RG")
    journal.add("R", "DL", rrn=1, data=b"")  # 000005 moved to RRN 1
    journal.add("R", "DL", rrn=5, data=b"")  # nothing at RRN 5 any more
    catalog = SlotCatalog(PRIX)
    catalog.pairs = [(1, {"ARTNUM": "000005"})]
    drain(leg_for(conf, conn, catalog))

    assert [(op, art) for op, art, _, _ in ops(conn)][-1] == ("d", "000005")
    assert reasons(conn) == ["delete of RRN 5 in PRIX without image and no known key"]
    assert store.counters(conn)["transformer.reorganized"] == 1


def test_reorganize_read_failure_keeps_the_entry_for_a_retry(box: Any) -> None:
    """A lost connection while re-reading RRNs backs off; nothing is guessed."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("F", "RG")
    journal.add("R", "DL", rrn=1, data=b"")
    catalog = SlotCatalog(PRIX)
    catalog.pairs = [(1, {"ARTNUM": "000001"})]
    catalog.slot_failures = 1
    now = [100.0]
    leg = TransformerLeg(conf, conn, catalog, clock=lambda: now[0])
    assert leg.step() is True
    pending = conn.execute("SELECT count(*) FROM raw_entries WHERE state = 0")
    assert pending.fetchone()[0] == 2
    now[0] += 61
    assert leg.step() is True
    assert [op for op, _, _, _ in ops(conn)] == ["c", "d"]
    assert store.counters(conn)["transformer.reorganized"] == 1


def test_clear_member_voids_the_map(box: Any) -> None:
    """After F CR (CLRPFM) no slot is known: an image-less DL is parked."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("F", "CR")
    journal.add("R", "DL", rrn=1, data=b"")
    drain(leg_for(conf, conn))
    assert [c["op"] for c in changes(conn)] == ["c", "t"]
    assert reasons(conn) == ["delete of RRN 1 in PRIX without image and no known key"]


def test_rrn_query_differs_between_dialects_only_in_rrn_and_case() -> None:
    """RRN(T) on DB2 for i, the emulator's _rrn column in PostgreSQL."""
    assert rrnmap.snapshot_sql("ibmi", "MAG", "PRIX", ["ARTNUM"]) == (
        'SELECT RRN(T), "ARTNUM" FROM "MAG"."PRIX" AS T'
    )
    assert rrnmap.snapshot_sql("emulator", "MAG", "PRIX", ["ARTNUM"]) == (
        'SELECT T._rrn, "artnum" FROM "mag"."prix" AS T'
    )


def test_rrn_pairs_read_through_odbc_are_spelled_like_decoded_keys() -> None:
    """Padded CHAR, Decimal and dates from ODBC match the decoder's JSON values."""
    layout = make_layout(
        "MAG",
        "STOCK",
        [
            Column("ART", "CHAR", 6, ccsid=1147),
            Column("MAG", "DECIMAL", 5, 1),
            Column("JOUR", "DATE"),
            Column("QTE", "INTEGER"),
        ],
        ["ART", "MAG", "JOUR"],
    )

    class Cursor:
        def execute(self, text: str) -> None:
            self.text = text

        def fetchall(self) -> list[tuple[Any, ...]]:
            return [(4, "000123", Decimal("-0.0"), dt.date(2026, 12, 4))]

    cursor = Cursor()
    pairs = rrnmap.read_pairs(cursor, "ibmi", "MAG", layout)
    assert cursor.text.startswith('SELECT RRN(T), "ART", "MAG", "JOUR" FROM')
    assert pairs == [(4, {"ART": "000123", "MAG": "0.0", "JOUR": "2026-12-04"})]


def test_slot_read_leaves_a_key_holding_nul_unknown() -> None:
    """A key the decoder would refuse (U+0000 in text) puts no slot in the map."""
    layout = make_layout(
        "MAG",
        "STOCK",
        [Column("ART", "CHAR", 6, ccsid=1147), Column("QTE", "INTEGER")],
        ["ART"],
    )

    class Cursor:
        def execute(self, text: str) -> None:
            self.text = text

        def fetchall(self) -> list[tuple[Any, ...]]:
            return [(1, "000001"), (2, "00\x0000 "), (3, "000003")]

    pairs = rrnmap.read_pairs(Cursor(), "ibmi", "MAG", layout)
    assert pairs == [(1, {"ART": "000001"}), (3, {"ART": "000003"})]


class WindowCatalog(SlotCatalog):
    """Slots and the journal head read right after them (rrnmap's window)."""

    def __init__(self, *layouts: Layout) -> None:
        super().__init__(*layouts)
        self.head: rrnmap.Head | None = None

    def read_head(self) -> rrnmap.Head | None:
        return self.head


def test_imageless_delete_before_the_slot_read_is_parked_and_asks_a_check(
    box: Any,
) -> None:
    """F RG, DL of RRN 2, PX of a new row at RRN 2, read: the DL is not guessed.

    The read pairs say RRN 2 holds 000009, the row put back after the DL;
    deleting 000009 would be wrong. Past the head read the map is certain.
    """
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("R", "PT", rrn=4, data=image("000004", 400))
    journal.add("F", "RG")  # 000001 -> 1, 000004 -> 2
    journal.add("R", "DL", rrn=2, data=b"")  # deletes 000004
    journal.add("R", "PX", rrn=2, data=image("000009", 900))
    head = journal.sequence - 1
    journal.add("R", "DL", rrn=1, data=b"")  # after the read: certain
    catalog = WindowCatalog(PRIX)
    catalog.pairs = [(1, {"ARTNUM": "000001"}), (2, {"ARTNUM": "000009"})]
    catalog.head = rrnmap.Head("MAG", journal.receiver, head)
    drain(leg_for(conf, conn, catalog))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [
        ("c", "000001"),
        ("c", "000004"),
        ("c", "000009"),
        ("d", "000001"),
    ]
    assert len(reasons(conn)) == 1
    assert reasons(conn)[0].startswith("delete of RRN 2 in PRIX without image")
    assert "between RGZPFM and the read" in reasons(conn)[0]
    assert checks.asked(conn) == [("PRIX", "RG")]
    assert store.counters(conn)["transformer.deletes_uncertain"] == 1
    assert conn.execute("SELECT count(*) FROM rrn_windows").fetchone()[0] == 0


def test_slot_set_by_an_entry_inside_the_window_is_certain(box: Any) -> None:
    """A PT after the F RG sets the slot from the journal: its DL is by key."""
    conf, conn, journal = box
    journal.add("F", "RG")
    journal.add("R", "PT", rrn=3, data=image("000003", 300))
    journal.add("R", "DL", rrn=3, data=b"")
    catalog = WindowCatalog(PRIX)
    catalog.head = rrnmap.Head("MAG", journal.receiver, journal.sequence + 5)
    drain(leg_for(conf, conn, catalog))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [
        ("c", "000003"),
        ("d", "000003"),
    ]
    assert reasons(conn) == []
    assert checks.asked(conn) == []


def test_refused_catalog_read_is_retried_with_an_alarm_that_clears(
    box: Any,
) -> None:
    """A permission error backs off like any failure, plus alarm and counter."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    catalog = DictCatalog(PRIX)
    catalog.failures = 2
    denied = SourceError(
        "source failed while reading layout of MAG/PRIX sqlstate=42501:"
        " permission denied for view syscolumns2"
    )
    original = catalog.load_layout

    def refuse(library: str, table: str) -> Layout:
        if catalog.failures:
            catalog.failures -= 1
            raise denied
        return original(library, table)

    catalog.load_layout = refuse  # type: ignore[method-assign]
    now = [100.0]
    leg = TransformerLeg(conf, conn, catalog, clock=lambda: now[0])
    assert leg.step() is False
    assert leg.status().startswith("ALARM source refused the relay's user")
    alarm = conn.execute(
        "SELECT value FROM meta WHERE key = 'transformer.alarm.source_denied'"
    ).fetchone()
    assert alarm is not None and "42501" in alarm[0]
    now[0] += 61
    assert leg.step() is False
    assert store.counters(conn)["transformer.source_denied"] == 2
    now[0] += 61
    assert leg.step() is True
    assert "ALARM" not in leg.status()
    assert (
        conn.execute(
            "SELECT 1 FROM meta WHERE key = 'transformer.alarm.source_denied'"
        ).fetchone()
        is None
    )
    assert [op for op, _, _, _ in ops(conn)] == ["c"]


def test_passing_source_failure_is_no_permission_alarm() -> None:
    """Only a refusal of the user raises the alarm; a lost link does not."""
    assert transformer.denied(SourceError("x sqlstate=42501: permission denied"))
    assert transformer.denied(SourceError("SQL0551 not authorized", cpf="CPF9802"))
    assert not transformer.denied(SourceError("connection lost sqlstate=08S01"))


def test_journaling_restart_after_ej_asks_one_check_mr_asks_at_once(
    box: Any,
) -> None:
    """F EJ: alarm, check queued only at the F JM; F MR: alarm and check."""
    conf, conn, journal = box
    journal.add("R", "PT", rrn=1, data=image("000001", 100))
    journal.add("F", "EJ")
    drain(leg_for(conf, conn))
    assert checks.asked(conn) == []
    assert store.counters(conn)["transformer.alarm.EJ"] == 1

    journal.add("F", "JM")
    journal.add("F", "JM")  # a second start without an end asks nothing
    journal.add("F", "MR")
    drain(leg_for(conf, conn))
    assert checks.asked(conn) == [("PRIX", "EJ"), ("PRIX", "MR")]
    assert store.counters(conn)["transformer.alarm.MR"] == 1
    assert [r[:4] for r in reasons(conn)] == ["F EJ", "F MR"]


def test_skip_mark_parks_only_the_cycle_whose_boundary_was_skipped(box: Any) -> None:
    """An operator skipped cycle A's C CM: A's changes are parked (the skip's
    checks repair them), B, open beside it, commits as usual."""
    conf, conn, journal = box
    first = journal.start()
    journal.add("R", "PT", cycle=first, rrn=1, data=image("000001", 100))
    other = journal.start(job=JOB2)
    journal.add("R", "PT", cycle=other, rrn=2, job=JOB2, data=image("000002", 200))
    journal.add("*", "SK", cycle=first, table="")  # where the C CM was skipped
    journal.add("R", "PT", cycle=other, rrn=3, job=JOB2, data=image("000003", 300))
    journal.add("C", "CM", cycle=other, table="", job=JOB2)
    drain(leg_for(conf, conn))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [
        ("c", "000002"),
        ("c", "000003"),
    ]
    assert reasons(conn) == [
        f"commit cycle {first} cut: its boundary was skipped by an operator"
    ]
    assert conn.execute("SELECT count(*) FROM held_changes").fetchone()[0] == 0
    assert store.counters(conn)["transformer.cycles_cut_by_skip"] == 1


def test_skip_mark_of_an_unknown_cycle_cuts_every_open_cycle(box: Any) -> None:
    conf, conn, journal = box
    first = journal.start()
    journal.add("R", "PT", cycle=first, rrn=1, data=image("000001", 100))
    other = journal.start(job=JOB2)
    journal.add("R", "PT", cycle=other, rrn=2, job=JOB2, data=image("000002", 200))
    journal.add("*", "SK", cycle=0, table="")  # a mark of JOB1's skipped C CM
    later = journal.start()
    journal.add("R", "PT", cycle=later, rrn=3, data=image("000003", 300))
    journal.add("C", "CM", cycle=later, table="")
    drain(leg_for(conf, conn))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [("c", "000003")]
    cut = (
        "commit cycle cut: an entry of unknown cycle, maybe its end, was skipped"
        " by an operator"
    )
    assert reasons(conn) == [cut, cut]
    assert store.counters(conn)["transformer.cycles_cut_by_skip"] == 2
    # It ended its own job's cycle (JOB1's, first); the other till's ends
    # later at the source: that one is waited for, its table checked then.
    held = conn.execute("SELECT cycle_key FROM held_changes ORDER BY 1").fetchall()
    assert [k for (k,) in held] == [f"check_after:MAG/QSQJRN:{other}"]
    journal.add("C", "RB", cycle=other, table="", job=JOB2)
    drain(leg_for(conf, conn))
    assert queued_checks(conn) == [("PRIX", "skipped_entry")]
    assert store.counters(conn)["transformer.checks_after_cycle"] == 1


def test_skip_mark_of_an_unknown_cycle_and_job_waits_for_every_cycle(
    box: Any,
) -> None:
    conf, conn, journal = box
    first = journal.start()
    journal.add("R", "PT", cycle=first, rrn=1, data=image("000001", 100))
    other = journal.start(job=JOB2)
    journal.add("R", "PT", cycle=other, rrn=2, job=JOB2, data=image("000002", 200))
    journal.add("*", "SK", cycle=0, table="", job="//")  # its job NULL too
    drain(leg_for(conf, conn))

    held = conn.execute("SELECT cycle_key FROM held_changes ORDER BY 1").fetchall()
    assert [k for (k,) in held] == [
        f"check_after:MAG/QSQJRN:{first}",
        f"check_after:MAG/QSQJRN:{other}",
    ]


def queued_checks(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Repair checks asked (filed or queued) for a skipped entry."""
    return [a for a in checks.asked(conn) if a[1] == "skipped_entry"]


def test_skipped_row_of_an_open_cycle_checks_its_table_when_it_ends(
    box: Any,
) -> None:
    """The miner skipped a row change of a cycle still open at the source: the
    cycle's other changes go with its CM as usual, and the table is checked
    again then (the skip's own check may have read it before the end)."""
    conf, conn, journal = box
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("*", "SR", cycle=cycle, table="PRIX")  # the skipped UP's place
    journal.add("R", "PT", cycle=cycle, rrn=2, data=image("000002", 200))
    drain(leg_for(conf, conn))
    assert queued_checks(conn) == []  # the cycle is still open
    journal.add("C", "CM", cycle=cycle, table="")
    drain(leg_for(conf, conn))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [
        ("c", "000001"),
        ("c", "000002"),
    ]
    assert queued_checks(conn) == [("PRIX", "skipped_entry")]
    assert conn.execute("SELECT count(*) FROM held_changes").fetchone()[0] == 0


def test_data_gap_mark_parks_the_cycles_it_cut(box: Any) -> None:
    """The miner's gap mark: held cycles are parked, later cycles go on."""
    conf, conn, journal = box
    cycle = journal.start()
    journal.add("R", "PT", cycle=cycle, rrn=1, data=image("000001", 100))
    journal.add("R", "UB", rrn=2, data=image("000002", 200))
    journal.add("*", "DG", table="")
    journal.add("C", "CM", cycle=cycle, table="")  # its end, after the gap
    later = journal.start()
    journal.add("R", "PT", cycle=later, rrn=3, data=image("000003", 300))
    journal.add("C", "CM", cycle=later, table="")
    drain(leg_for(conf, conn))

    assert [(op, art) for op, art, _, _ in ops(conn)] == [("c", "000003")]
    assert reasons(conn) == ["commit cycle cut by a data gap: its end was lost"]
    assert conn.execute("SELECT count(*) FROM held_changes").fetchone()[0] == 0
    assert store.counters(conn)["transformer.cycles_cut_by_gap"] == 1
