"""Brief §9 behaviours played by the emulator through the whole relay.

One relay for the module; every scenario writes its own table (or its own
keys), waits until the relay drained, then asserts what ODH holds. Where the
relay cannot follow the journal alone (ENDJRNPF, a restore, an entry with no
usable image), the test asserts the alarm AND documents what ODH holds.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import psycopg
import pytest
import scenario_support as support

from appliance.devstack import Stack
from appliance.emulator import Column, workload

pytestmark = pytest.mark.integration

ITEM = [
    Column("K", "CHAR", 6),
    Column("V", "INTEGER"),
    Column("N", "VARCHAR", 10, nullable=True),
]
TABLES = ("SC_TRX", "SC_CLR", "SC_RGZ", "SC_AFT", "SC_EJ", "SC_MR", "SC_ALT")
TABLES += ("SC_MIN", "SC_DST", "SC_RGW", "SC_DEN", "SC_AL2")
APP = "000300/TEST/SCENARIO"
DRAIN_S = 120


def _create(relay: Stack) -> None:
    emu = relay.emulator()
    for name in TABLES:
        images = "*AFTER" if name in ("SC_AFT", "SC_RGW") else "*BOTH"
        emu.create_table(name, ITEM, key=["K"], images=images)
    workload.seed_store(emu, articles=60, seed=3)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    found = support.stack(
        tmp_path_factory.mktemp("scenarios"),
        "scenarios",
        tables=TABLES,
        before_start=_create,
    )
    yield found
    found.close()


def put(relay: Stack, table: str, *keys: str, value: int = 1) -> None:
    with relay.emulator().job(APP, autocommit=True) as job:
        for key in keys:
            job.insert(table, {"K": key, "V": value})


def drained(relay: Stack) -> None:
    support.drained(relay, DRAIN_S)


def letters(relay: Stack, table: str) -> list[str]:
    with relay.pipeline() as conn:
        rows = conn.execute(
            "SELECT reason FROM dead_letters WHERE table_name LIKE ?",
            (f"%{table}",),
        ).fetchall()
    return [r[0] for r in rows]


def test_rolled_back_cycle_of_the_reference_trace_ships_nothing(
    relay: Stack,
) -> None:
    """§2.4: PT 57, UB/UP 12, DL 9 then ROLLBACK -> ODH as before the cycle."""
    put(relay, "SC_TRX", "12", "9")
    with relay.emulator().job("123456/POS/CAISSE01") as job:
        job.insert("SC_TRX", {"K": "57", "V": 1})
        job.update("SC_TRX", {"K": "12"}, {"V": 2})
        job.delete("SC_TRX", {"K": "9"})
        job.rollback()
    drained(relay)
    rows = support.odh_rows(relay, "SC_TRX")
    assert "57" not in {data["K"] for data, _ in rows.values()}
    assert support.live(relay, "SC_TRX") == support.source(relay, "SC_TRX")
    assert {r["K"]: r["V"] for r in support.live(relay, "SC_TRX")} == {"12": 1, "9": 1}


def test_savepoint_rollback_ships_only_what_stayed(relay: Stack) -> None:
    """ROLLBACK TO SAVEPOINT then COMMIT: the undone changes never reach ODH."""
    with relay.emulator().job("123456/POS/CAISSE02") as job:
        job.insert("SC_TRX", {"K": "SP1", "V": 1})
        point = job.savepoint()
        job.update("SC_TRX", {"K": "SP1"}, {"V": 5})
        job.insert("SC_TRX", {"K": "SP2", "V": 2})
        job.rollback_to(point)
        job.commit()
    drained(relay)
    values = {r["K"]: r["V"] for r in support.live(relay, "SC_TRX")}
    assert values.get("SP1") == 1 and "SP2" not in values


def test_cycle_spanning_a_receiver_change_is_applied_at_cm(relay: Stack) -> None:
    """Held across CHGJRN while open; applied only when C CM arrives."""
    emu = relay.emulator()
    job = emu.job("123456/POS/CAISSE03")
    job.insert("SC_TRX", {"K": "SPAN", "V": 1})
    new = emu.change_receiver()
    job.update("SC_TRX", {"K": "SPAN"}, {"V": 2})

    def read_past_the_change() -> bool:
        with relay.pipeline() as conn:
            mark = conn.execute("SELECT receiver_name FROM bookmark").fetchone()
        backlog = relay.backlog()
        return bool(mark and mark[0] == new) and backlog["raw_new"] == 0

    support.wait_for(read_past_the_change, DRAIN_S, "miner entering the new receiver")
    assert "SPAN" not in {r["K"] for r in support.live(relay, "SC_TRX")}
    job.commit()
    drained(relay)
    assert {r["K"]: r["V"] for r in support.live(relay, "SC_TRX")}["SPAN"] == 2


def test_ipl_mid_stream_loses_nothing_and_doubles_nothing(relay: Stack) -> None:
    """IPL with a cycle open: rolled back by the system, numbering reset."""
    emu = relay.emulator()
    put(relay, "SC_TRX", "IPL1")
    open_job = emu.job("123456/POS/CAISSE04")
    open_job.insert("SC_TRX", {"K": "IPL2", "V": 1})
    emu.ipl()
    assert emu.head().sequence is not None and emu.head().sequence < 10
    put(relay, "SC_TRX", "IPL3")
    drained(relay)
    keys = {r["K"] for r in support.live(relay, "SC_TRX")}
    assert {"IPL1", "IPL3"} <= keys and "IPL2" not in keys
    assert support.live(relay, "SC_TRX") == support.source(relay, "SC_TRX")
    counts = relay.counts()
    assert counts["hub.applied"] == counts["hub.applied_distinct"]


def test_clrpfm_marks_every_store_row_deleted(relay: Stack) -> None:
    """F CR with no DL entries: ODH rows of the table become tombstones."""
    put(relay, "SC_CLR", "C1", "C2", "C3", "C4", "C5")
    drained(relay)
    assert relay.emulator().clear_member("SC_CLR") == 5
    put(relay, "SC_CLR", "C6")
    drained(relay)
    rows = support.odh_rows(relay, "SC_CLR")
    deleted = sorted(data["K"] for data, gone in rows.values() if gone)
    assert deleted == ["C1", "C2", "C3", "C4", "C5"]
    assert support.live(relay, "SC_CLR") == support.source(relay, "SC_CLR")


def test_rgzpfm_renumbering_keeps_odh_right(relay: Stack) -> None:
    """F RG renumbers RRNs; later updates of moved rows land on the right keys."""
    put(relay, "SC_RGZ", "R1", "R2", "R3", "R4", "R5", "R6")
    emu = relay.emulator()
    with emu.job(APP, autocommit=True) as job:
        for key in ("R1", "R3", "R5"):
            job.delete("SC_RGZ", {"K": key})
        emu.reorganize("SC_RGZ")
        for key in ("R2", "R4", "R6"):
            job.update("SC_RGZ", {"K": key}, {"V": 40})
        job.insert("SC_RGZ", {"K": "R7", "V": 7})
    drained(relay)
    assert support.live(relay, "SC_RGZ") == support.source(relay, "SC_RGZ")
    assert support.counters(relay).get("transformer.reorganized", 0) >= 1


def test_after_images_update_and_delete(relay: Stack) -> None:
    """*AFTER: UP with no UB is right by key; a DL with no image deletes its row.

    The transformer keys an image-less DL through its RRN -> key map, also
    after RGZPFM renumbered the RRNs (the map is read again from the source).
    """
    put(relay, "SC_AFT", "A1", "A2", "A5", "A6", "A7")
    emu = relay.emulator()
    with emu.job(APP, autocommit=True) as job:
        job.update("SC_AFT", {"K": "A1"}, {"V": 9})
        job.delete("SC_AFT", {"K": "A2"})
        job.delete("SC_AFT", {"K": "A5"})
    emu.reorganize("SC_AFT")
    drained(relay)  # the map is read at F RG: before the next change (see docs)
    with emu.job(APP, autocommit=True) as job:
        job.delete("SC_AFT", {"K": "A7"})  # A7 moved from RRN 5 to RRN 3
    with emu.job("123456/POS/CAISSE05") as job:
        job.insert("SC_AFT", {"K": "A3", "V": 3})
        job.delete("SC_AFT", {"K": "A3"})
        job.insert("SC_AFT", {"K": "A4", "V": 4})
        job.commit()
    with emu.job("123456/POS/CAISSE05") as job:
        job.delete("SC_AFT", {"K": "A4"})
        job.commit()
    drained(relay)
    rows = support.odh_rows(relay, "SC_AFT")
    # By key: a delete without image brings no data (null if ODH had none).
    gone = sorted(json.loads(pk)["K"] for pk, (_, deleted) in rows.items() if deleted)
    assert gone == ["A2", "A4", "A5", "A7"]
    live = {r["K"]: r["V"] for r in support.live(relay, "SC_AFT")}
    assert live == {"A1": 9, "A6": 1}
    assert support.live(relay, "SC_AFT") == support.source(relay, "SC_AFT")
    assert letters(relay, "SC_AFT") == []
    assert support.counters(relay).get("transformer.deletes_by_rrn", 0) == 3


def test_end_journaling_raises_an_alarm_and_a_check_at_restart(
    relay: Stack,
) -> None:
    """F EJ: alarm; the repair check is asked once, at the F JM, not before."""
    put(relay, "SC_EJ", "E1", "E3")
    emu = relay.emulator()
    emu.end_journaling("SC_EJ")
    with emu.job(APP, autocommit=True) as job:
        job.update("SC_EJ", {"K": "E1"}, {"V": 2})
        job.insert("SC_EJ", {"K": "E2", "V": 2})
        job.delete("SC_EJ", {"K": "E3"})
    drained(relay)
    assert support.counters(relay)["transformer.alarm.EJ"] == 1
    assert any(r.startswith("F EJ") for r in letters(relay, "SC_EJ"))
    assert ("SC_EJ", "EJ") not in support.checks_asked(relay)
    assert {r["K"]: r["V"] for r in support.live(relay, "SC_EJ")} == {
        "E1": 1,
        "E3": 1,
    }

    emu.start_journaling("SC_EJ")
    put(relay, "SC_EJ", "E4", value=4)
    drained(relay)
    assert [c for c in support.checks_asked(relay) if c[0] == "SC_EJ"] == [
        ("SC_EJ", "EJ")
    ]
    assert {r["K"] for r in support.live(relay, "SC_EJ")} >= {"E4"}
    support.repaired(relay, ["SC_EJ"])
    assert support.live(relay, "SC_EJ") == support.source(relay, "SC_EJ")


def test_restored_member_raises_an_alarm_and_asks_a_check(relay: Stack) -> None:
    """F MR: alarm + one repair check; the guardian brings ODH to the restore."""
    put(relay, "SC_MR", "M1", "M2")
    emu = relay.emulator()
    saved = emu.rows("SC_MR")
    with emu.job(APP, autocommit=True) as job:
        job.update("SC_MR", {"K": "M1"}, {"V": 8})
        job.delete("SC_MR", {"K": "M2"})
    emu.restore_member("SC_MR", saved)
    drained(relay)
    assert support.counters(relay)["transformer.alarm.MR"] == 1
    assert any(r.startswith("F MR") for r in letters(relay, "SC_MR"))
    assert [c for c in support.checks_asked(relay) if c[0] == "SC_MR"] == [
        ("SC_MR", "MR")
    ]
    assert support.source(relay, "SC_MR") == saved
    support.repaired(relay, ["SC_MR"])
    assert support.live(relay, "SC_MR") == saved


def test_imageless_delete_before_the_rgzpfm_read_is_parked_never_misapplied(
    relay: Stack,
) -> None:
    """DL then PX into the same slot between F RG and the read of the slots.

    The read pairs name the newer row W5 at RRN 2; the DL deleted W3. The
    DL is parked with its reason and a repair check asked; W5 is never
    deleted. (Before: the DL deleted W5, and W3 stayed live silently.)
    """
    put(relay, "SC_RGW", "W1", "W2", "W3", "W4")
    with relay.emulator().job(APP, autocommit=True) as job:
        job.delete("SC_RGW", {"K": "W2"})
    drained(relay)
    support.stop_leg(relay, "transformer")
    emu = relay.emulator()
    try:
        emu.reorganize("SC_RGW")  # W1 -> 1, W3 -> 2, W4 -> 3
        with emu.job(APP, autocommit=True) as job:
            job.delete("SC_RGW", {"K": "W3"})  # no image: RRN 2 only
            assert job.insert("SC_RGW", {"K": "W5", "V": 5}, rrn=2) == 2
            job.update("SC_RGW", {"K": "W4"}, {"V": 7})
    finally:
        support.start_leg(relay, "transformer")
    drained(relay)
    assert any("between RGZPFM" in r for r in letters(relay, "SC_RGW"))
    assert [c for c in support.checks_asked(relay) if c[0] == "SC_RGW"] == [
        ("SC_RGW", "RG")
    ]
    with relay.pipeline() as conn:
        wrong = conn.execute(
            "SELECT count(*) FROM changes WHERE table_name = 'SC_RGW'"
            " AND op = 'd' AND key LIKE '%W5%'"
        ).fetchone()[0]
    assert wrong == 0
    live = {r["K"]: r["V"] for r in support.live(relay, "SC_RGW")}
    assert {k: live.get(k) for k in ("W1", "W4", "W5")} == {"W1": 1, "W4": 7, "W5": 5}
    support.repaired(relay, ["SC_RGW"])  # W3's delete came from the guardian
    assert "W3" not in {r["K"] for r in support.live(relay, "SC_RGW")}
    # Past the window the map is certain again: a later DL deletes by RRN.
    with emu.job(APP, autocommit=True) as job:
        job.delete("SC_RGW", {"K": "W5"})
    drained(relay)
    assert "W5" not in {r["K"] for r in support.live(relay, "SC_RGW")}


def test_refused_rrn_read_is_retried_with_a_visible_alarm(relay: Stack) -> None:
    """No right on the slots at F RG: retried, alarm + counter, then it clears."""
    put(relay, "SC_DEN", "P1", "P2", "P3")
    with relay.emulator().job(APP, autocommit=True) as job:
        job.delete("SC_DEN", {"K": "P2"})
    drained(relay)
    role = f"relay_{relay.name}"
    admin = relay.services.conninfo(relay.ibmi_db)
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'REVOKE SELECT ON mag.sc_den FROM "{role}"')
        pg.execute(f'REVOKE SELECT (_rrn, k) ON mag.sc_den FROM "{role}"')
    try:
        relay.emulator().reorganize("SC_DEN")
        put(relay, "SC_DEN", "P4", value=4)

        def alarmed() -> bool:
            legs = {leg["leg"]: leg for leg in support.status(relay)["legs"]}
            return "ALARM" in legs["transformer"]["status"]

        support.wait_for(alarmed, DRAIN_S, "permission alarm in status")
        assert support.counters(relay)["transformer.source_denied"] >= 1
        with relay.pipeline() as conn:
            alarm = conn.execute(
                "SELECT value FROM meta WHERE key = 'transformer.alarm.source_denied'"
            ).fetchone()
        assert alarm is not None and "42501" in alarm[0]
        assert "P4" not in {r["K"] for r in support.live(relay, "SC_DEN")}
    finally:
        with psycopg.connect(admin, autocommit=True) as pg:
            pg.execute(f'GRANT SELECT (_rrn, k) ON mag.sc_den TO "{role}"')
    drained(relay)
    assert support.live(relay, "SC_DEN") == support.source(relay, "SC_DEN")
    # The status reaches the heartbeat within its 2 s period.
    support.wait_for(lambda: not alarmed(), 30, "permission alarm cleared")
    with relay.pipeline() as conn:
        cleared = conn.execute(
            "SELECT 1 FROM meta WHERE key = 'transformer.alarm.source_denied'"
        ).fetchone()
    assert cleared is None
    log = (relay.workdir / "logs" / "transformer.log").read_text()
    assert "source refused the relay's user" in log


def test_alter_mid_stream_decodes_both_layouts(relay: Stack) -> None:
    """D CG between entries: old images with the old layout, new with the new."""
    put(relay, "SC_ALT", "L1")
    drained(relay)
    emu = relay.emulator()
    emu.add_column("SC_ALT", Column("EXTRA", "SMALLINT", nullable=True))
    with emu.job(APP, autocommit=True) as job:
        job.insert("SC_ALT", {"K": "L2", "V": 2, "EXTRA": 7})
        job.update("SC_ALT", {"K": "L1"}, {"EXTRA": 5})
        job.insert("SC_ALT", {"K": "L3", "V": 3})
    drained(relay)
    report = relay.compare(("SC_ALT",))
    assert report["SC_ALT"]["equal"], report
    assert {r["K"]: r.get("EXTRA") for r in support.live(relay, "SC_ALT")} == {
        "L1": 5,
        "L2": 7,
        "L3": None,
    }
    assert not letters(relay, "SC_ALT")


def test_alter_while_the_transformer_is_behind_keeps_each_layout(
    relay: Stack,
) -> None:
    """The catalog is already past the D CG when older images are decoded.

    Layouts are keyed by journal position: L1, written before the ALTER but
    decoded after it, keeps the old layout; L2 and L1's update the new one.
    """
    put(relay, "SC_AL2", "L0")
    drained(relay)  # the old layout is known
    support.stop_leg(relay, "transformer")
    emu = relay.emulator()
    try:
        put(relay, "SC_AL2", "L1", value=1)
        emu.add_column("SC_AL2", Column("EXTRA", "SMALLINT", nullable=True))
        with emu.job(APP, autocommit=True) as job:
            job.insert("SC_AL2", {"K": "L2", "V": 2, "EXTRA": 7})
            job.update("SC_AL2", {"K": "L1"}, {"EXTRA": 5})
    finally:
        support.start_leg(relay, "transformer")
    drained(relay)
    report = relay.compare(("SC_AL2",))
    assert report["SC_AL2"]["equal"], report
    assert {r["K"]: r.get("EXTRA") for r in support.live(relay, "SC_AL2")} == {
        "L0": None,
        "L1": 5,
        "L2": 7,
    }
    assert not letters(relay, "SC_AL2")


def test_minimized_entries_are_parked_never_applied(relay: Stack) -> None:
    """MINENTDTA(*FLDBDY): a '9' in the null map parks the entry with a reason."""
    put(relay, "SC_MIN", "N1")
    emu = relay.emulator()
    emu.set_journal(minimize_entry_data="*FLDBDY")
    try:
        with emu.job(APP, autocommit=True) as job:
            job.update("SC_MIN", {"K": "N1"}, {"V": 2})
    finally:
        emu.set_journal(minimize_entry_data="*NONE")
    drained(relay)
    assert any("minimized" in r for r in letters(relay, "SC_MIN"))
    assert support.live(relay, "SC_MIN")[0]["V"] == 1


def test_clock_going_back_keeps_journal_order(relay: Stack) -> None:
    """DST fall-back: the second change has the earlier time and still wins."""
    emu = relay.emulator()
    first = dt.datetime(2026, 11, 1, 1, 40)
    emu.clock = lambda: first
    try:
        put(relay, "SC_DST", "D1")
        emu.clock = lambda: first - dt.timedelta(minutes=55)
        with emu.job(APP, autocommit=True) as job:
            job.update("SC_DST", {"K": "D1"}, {"V": 2})
    finally:
        emu.clock = None
    drained(relay)
    assert support.live(relay, "SC_DST") == [{"K": "D1", "V": 2, "N": None}]
    with psycopg.connect(relay.services.conninfo(relay.odh_db)) as pg:
        found = pg.execute(
            "SELECT source->>'entry_ts' FROM odh.sc_dst WHERE store_id = %s",
            (relay.store_id,),
        ).fetchone()
    assert found is not None and found[0].startswith("2026-11-01T00:45")


def test_receiver_info_glitches_neither_skip_nor_rewind(relay: Stack) -> None:
    """NULL attach time and stale LAST_SEQUENCE after CHGJRN: nothing lost."""
    emu = relay.emulator()
    workload.run(emu, 0, changes=150, seed=21)
    emu.change_receiver()
    emu.arm_glitches(null_attach=3, stale_last=3, stale_by=4)
    workload.run(emu, 0, changes=150, seed=22)
    emu.change_receiver(reset=True)
    emu.arm_glitches(null_attach=2, stale_last=2, stale_by=2)
    workload.run(emu, 0, changes=150, seed=23)
    drained(relay)
    for table, item in relay.compare().items():
        assert item["equal"], f"{table}: {item}"
    assert "miner.data_gaps" not in support.counters(relay)


def test_transient_odbc_failure_is_retried_not_taken_for_a_gap(
    relay: Stack,
) -> None:
    """The reader is locked out for a moment: backoff, retry, nothing lost."""
    role = f"relay_{relay.name}"
    admin = relay.services.conninfo(relay.ibmi_db)
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'ALTER ROLE "{role}" NOLOGIN')
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
    try:
        workload.run(relay.emulator(), 0, changes=100, seed=31)
        time.sleep(2.0)
    finally:
        with psycopg.connect(admin, autocommit=True) as pg:
            pg.execute(f'ALTER ROLE "{role}" LOGIN')
    drained(relay)
    for table, item in relay.compare().items():
        assert item["equal"], f"{table}: {item}"
    log = (relay.workdir / "logs" / "miner.log").read_text()
    assert "source failed, will retry" in log
    assert "miner.data_gaps" not in support.counters(relay)


def test_head_lag_and_preflight_are_visible_in_status(relay: Stack) -> None:
    """`appliance status`: lag 0 once drained; *AFTER images reported."""
    drained(relay)
    time.sleep(2.5)  # the miner publishes its lag every 2 s
    report = support.status(relay)
    journal = report["journal"]
    assert journal["lag"]["entries"] == 0 and journal["lag"]["seconds"] == 0
    assert journal["lag"]["head"].startswith("MAG/QSQJRN")
    findings = journal["preflight"]["findings"]
    after = [f for f in findings if f["check"] == "MAG/SC_AFT IMAGES"]
    assert after and after[0]["value"] == "*AFTER"
    assert report["counters"]["miner.preflight_warnings"] == len(findings)
