"""The miner against the emulated IBM i, through real ODBC (psqlODBC).

Each test gets its own PostgreSQL database holding a fresh emulator, so the
journal is not shared with other tests; the oracle is the emulator's own
journal table, read as superuser.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance import checks, commands, journal, miner, source, store
from appliance.config import BoxSettings, IbmiSection
from appliance.emulator import Emulator, Entry, workload
from appliance.errors import DataGapError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

pytestmark = pytest.mark.integration


@dataclass
class Site:
    emu: Emulator
    admin: str  # superuser conninfo of the private database
    ibmi: IbmiSection
    db_path: Path

    def settings(self, **ibmi: Any) -> BoxSettings:
        return BoxSettings(
            store={"id": "MQ01"},
            ibmi=self.ibmi.model_copy(update=ibmi),
            pipeline={"db_path": self.db_path},
        )

    def leg(self, **ibmi: Any) -> miner.MinerLeg:
        s = self.settings(**ibmi)
        leg = miner.MinerLeg(s, store.connect(self.db_path), own_store=True)
        leg.setup()
        return leg

    def journal(self, tables: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
        """(receiver, sequence, code, type, data) of every visible entry, in order."""
        where = " WHERE NOT e.hidden"
        if tables is not None:
            names = ", ".join(f"'{t}'" for t in tables)
            where += (
                " AND (e.journal_code NOT IN ('R', 'D', 'F')"
                f" OR rtrim(substr(e.object, 1, 10)) IN ({names}))"
            )
        with psycopg.connect(self.admin) as conn:
            rows = conn.execute(
                "SELECT r.receiver_name, e.sequence_number::bigint, e.journal_code,"
                " e.journal_entry_type, e.entry_data FROM qsys2.emu_entry e"
                " JOIN qsys2.emu_receiver r USING (receiver_id)" + where + ""
                " ORDER BY r.chain_position, e.sequence_number"
            ).fetchall()
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def mined(db_path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT receiver_name, sequence, code, entry_type, data"
            " FROM raw_entries ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(r[0], r[1], r[2], r[3], bytes(r[4] or b"")) for r in rows]


def drain(leg: miner.MinerLeg, idle_steps: int = 5) -> int:
    """Step until the leg is idle; the number of steps that did work.

    Idle steps pause like the daemon does, long enough to outlast the first
    retry backoff after a source error.
    """
    idle = worked = 0
    for _ in range(100_000):
        if leg.step():
            idle, worked = 0, worked + 1
        else:
            idle += 1
            if idle >= idle_steps:
                return worked
            time.sleep(0.15)
    raise AssertionError("miner never went idle")


@pytest.fixture(scope="module")
def pg() -> dict[str, Any]:
    return dict(services.ensure_up()["postgres"])


@pytest.fixture
def site(pg: dict[str, Any], tmp_path: Path) -> Iterator[Site]:
    password = Path(pg["password_file"]).read_text().strip()
    base = f"host={pg['host']} port={pg['port']} user={pg['user']} password={password}"
    name = f"miner_{uuid.uuid4().hex[:10]}"
    role = f"{name}_reader"
    with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    admin = f"{base} dbname={name}"
    emu = Emulator(admin, gap_rate=0.05, seed=7)
    reader_password = secrets.token_urlsafe(18)
    secret = tmp_path / "ibmi.password"
    secret.write_text(reader_password)
    secret.chmod(0o600)
    try:
        emu.install()
        emu.grant_reader(role, reader_password)
        ibmi = IbmiSection(
            dialect="emulator",
            driver="PostgreSQL Unicode",
            host=pg["host"],
            port=pg["port"],
            database=name,
            user=role,
            password_file=secret,
            window=100,
            poll_interval_s=0.05,
        )
        yield Site(emu, admin, ibmi, tmp_path / "pipeline.db")
    finally:
        emu.close()
        with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_mines_across_cont_reset_and_ipl_with_a_restart_exactly_once(
    site: Site,
) -> None:
    """Every entry once, in chain order, across *CONT, *RESET, IPL and a restart."""
    workload.seed_store(site.emu, 25, seed=1)
    leg = site.leg(window=37)
    drain(leg)
    workload.run(site.emu, 0, changes=60, seed=2)
    site.emu.change_receiver(reset=False)
    workload.run(site.emu, 0, changes=60, seed=3)
    for _ in range(3):
        leg.step()  # stop mid-receiver
    leg.close()
    site.emu.change_receiver(reset=True)
    workload.run(site.emu, 0, changes=60, seed=4)
    site.emu.ipl()
    workload.run(site.emu, 0, changes=40, seed=5)

    again = site.leg(window=37)  # new process: new SQLite connection, same file
    drain(again)
    expected = site.journal()
    got = mined(site.db_path)
    assert got == expected
    assert len(set((r[0], r[1]) for r in got)) == len(got)
    receivers = [r[0] for r in expected if r[1] == 1]
    assert len(receivers) == 3  # 0001 from 1, then *RESET and IPL restart at 1
    head = site.emu.head()
    row = again.conn.execute("SELECT receiver_name, sequence FROM journal_head")
    assert tuple(row.fetchone()) == (head.receiver_name, head.sequence)
    counts = store.counters(again.conn)
    assert counts["miner.entries"] == len(expected)
    assert again.status() == (
        f"receiver={head.receiver_name} seq={head.sequence} head={head.sequence}"
    )
    again.close()


def test_filters_other_tables_but_keeps_commit_entries(site: Site) -> None:
    workload.seed_store(site.emu, 10, seed=1)
    workload.run(site.emu, 0, changes=40, seed=2)
    leg = site.leg(tables=["PRIX", "STOCK"])
    drain(leg)
    expected = site.journal(tables=("PRIX", "STOCK"))
    got = mined(site.db_path)
    assert got == expected
    assert any(r[2] == "C" for r in got)
    assert len(got) < len(site.journal())  # ARTICLE entries were dropped
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None
    assert bookmark.sequence == site.emu.head().sequence
    leg.close()


def test_idle_journal_picks_up_a_single_change(site: Site) -> None:
    """DBZ-8131: nothing to read for a while, then one insert."""
    workload.seed_store(site.emu, 1, seed=1)
    leg = site.leg()
    drain(leg)
    before = len(mined(site.db_path))
    assert leg.step() is False
    with site.emu.job("123456/POS/CAISSE01", autocommit=True) as job:
        job.update("STOCK", {"ARTNUM": "000001", "MAGASIN": "MQ01"}, {"SEUIL": 9})
    drain(leg)
    got = mined(site.db_path)
    assert [r[3] for r in got[before:]] == ["UB", "UP"]
    assert got == site.journal()
    leg.close()


def test_first_occurrence_trap_neither_loops_nor_skips(site: Site) -> None:
    """jhc #38: after a reset, *CURCHAIN + sequence returns the OLD receiver."""
    workload.seed_store(site.emu, 40, seed=1)  # well over 121 entries
    first = site.emu.head().receiver_name
    site.emu.change_receiver(reset=True)
    workload.run(site.emu, 0, changes=80, seed=2)
    second = site.emu.head()
    assert second.sequence is not None and second.sequence > 130

    leg = site.leg(window=40)
    drain(leg)
    assert mined(site.db_path) == site.journal()

    # The trap is real in the emulator: the naive query lands in the old receiver.
    naive = (
        "SELECT J.RECEIVER_NAME, J.SEQUENCE_NUMBER FROM QSYS2.DISPLAY_JOURNAL("
        "JOURNAL_LIBRARY => 'MAG', JOURNAL_NAME => 'QSQJRN',"
        " STARTING_RECEIVER_NAME => '*CURCHAIN',"
        " STARTING_SEQUENCE => CAST(? AS DECIMAL(21,0))) AS J"
    )
    odbc = source.connect(site.ibmi)
    try:
        row = odbc.cursor().execute(naive, 121).fetchone()
    finally:
        odbc.close()
    assert (row[0], int(row[1])) == (first, 121)
    # ...and the miner, restarted with its bookmark in the new receiver, adds nothing.
    again = site.leg(window=40)
    assert drain(again) == 0
    assert mined(site.db_path) == site.journal()
    leg.close()
    again.close()


def test_deleted_unread_receiver_is_a_data_gap_and_nothing_is_skipped(
    site: Site,
) -> None:
    workload.seed_store(site.emu, 20, seed=1)
    leg = site.leg(window=25)
    leg.step()
    leg.step()
    r1 = site.emu.head().receiver_name
    r2 = site.emu.change_receiver()
    workload.run(site.emu, 0, changes=20, seed=2)
    site.emu.change_receiver()
    workload.run(site.emu, 0, changes=20, seed=3)
    site.emu.delete_receiver(r2)

    with pytest.raises(DataGapError) as info:
        drain(leg)
    assert r2 in str(info.value)
    got = mined(site.db_path)
    assert got == [e for e in site.journal() if e[0] == r1]  # all of R1, no R3
    assert store.counters(leg.conn)["miner.data_gaps"] == 1
    state = leg.conn.execute("SELECT state FROM heartbeats WHERE leg = 'miner'")
    assert state.fetchone()[0] == "data_gap"
    # A restart does not paper over it.
    again = site.leg(window=25)
    with pytest.raises(DataGapError):
        drain(again)
    assert mined(site.db_path) == got
    leg.close()
    again.close()


def test_deleted_bookmarked_receiver_is_a_data_gap(site: Site) -> None:
    workload.seed_store(site.emu, 20, seed=1)
    leg = site.leg(window=10)
    leg.step()
    r1 = site.emu.head().receiver_name
    site.emu.change_receiver()
    site.emu.delete_receiver(r1)
    with pytest.raises(DataGapError) as info:
        drain(leg)
    assert info.value.cpf == "CPF9801"
    assert r1 in str(info.value)
    leg.close()


def test_data_gap_resend_resumes_past_the_gap_and_asks_checks_once(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_data_gap = resend: R1 whole, R2 lost, R3 whole; one check per table."""
    monkeypatch.setitem(commands.KINDS, "check", ("control",))
    workload.seed_store(site.emu, 20, seed=1)
    leg = site.leg(window=25, on_data_gap="resend")
    leg.step()
    leg.step()
    r1 = site.emu.head().receiver_name
    r2 = site.emu.change_receiver()
    workload.run(site.emu, 0, changes=20, seed=2)
    r3 = site.emu.change_receiver()
    workload.run(site.emu, 0, changes=20, seed=3)
    site.emu.delete_receiver(r2)

    drain(leg)
    got = mined(site.db_path)
    marks = [e for e in got if (e[2], e[3]) == journal.GAP_MARK]
    first_r3 = min(e[1] for e in site.journal() if e[0] == r3)
    assert [(e[0], e[1]) for e in marks] == [(r3, first_r3 - 1)]
    got = [e for e in got if e not in marks]
    assert got == [e for e in site.journal() if e[0] in (r1, r3)]
    assert len(set(got)) == len(got)
    tables = sorted(t.upper() for t in site.ibmi.tables)
    assert checks.asked(leg.conn) == [(t, "data_gap") for t in tables]
    assert store.counters(leg.conn)["miner.data_gaps"] == 1
    gap = json.loads(
        leg.conn.execute(
            "SELECT value FROM meta WHERE key = 'miner.data_gap'"
        ).fetchone()[0]
    )
    assert gap["recovery"] == "resend" and gap["receiver"] == f"MAG/{r2}"
    assert gap["resumed_at"].startswith(f"MAG/{r3}:")
    assert "data gap" in leg.status()

    # Later entries, a restart: the miner goes on; nothing asked twice.
    workload.run(site.emu, 0, changes=10, seed=4)
    leg.close()
    again = site.leg(window=25, on_data_gap="resend")
    drain(again)
    again_got = [e for e in mined(site.db_path) if e[2] != journal.GAP_MARK[0]]
    assert again_got == [e for e in site.journal() if e[0] != r2]
    assert checks.asked(again.conn) == [(t, "data_gap") for t in tables]
    assert store.counters(again.conn)["miner.data_gaps"] == 1
    again.close()


def test_data_gap_checks_wait_queued_until_the_control_leg_accepts_them(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box whose commands refuse 'check' keeps the checks queued, then files them."""
    monkeypatch.delitem(commands.KINDS, "check", raising=False)
    workload.seed_store(site.emu, 10, seed=1)
    leg = site.leg(window=50, on_data_gap="resend")
    leg.step()
    r1 = site.emu.head().receiver_name
    site.emu.change_receiver()
    workload.run(site.emu, 0, changes=10, seed=2)
    site.emu.delete_receiver(r1)
    drain(leg)
    tables = sorted(t.upper() for t in site.ibmi.tables)
    queued = checks.pending(leg.conn)
    assert sorted((t, r) for _, t, r in queued) == [(t, "data_gap") for t in tables]
    assert all(o.startswith(f"miner data_gap MAG/{r1}:") for o, _, _ in queued)
    monkeypatch.setitem(commands.KINDS, "check", ("control",))
    assert checks.Flusher(leg.conn, "miner").flush() == len(tables)
    assert checks.pending(leg.conn) == []
    assert checks.asked(leg.conn) == [(t, "data_gap") for t in tables]
    leg.close()


def test_hidden_entries_are_gaps_never_losses_and_skipped_when_shown(
    site: Site,
) -> None:
    """Hidden numbers are no data gap; shown (INCLUDE_INTERNAL), they are skipped."""
    site.emu.gap_rate = 0.5
    workload.seed_store(site.emu, 20, seed=1)
    site.emu.change_receiver(reset=True)
    workload.run(site.emu, 0, changes=60, seed=2)
    with psycopg.connect(site.admin) as conn:
        found = conn.execute(
            "SELECT count(*) FROM qsys2.emu_entry WHERE hidden"
        ).fetchone()
    hidden = int(found[0]) if found else 0
    assert hidden > 20

    leg = site.leg(window=40)
    leg._sql = journal.window_sql("emulator", include_internal=True)
    drain(leg)
    got = mined(site.db_path)
    assert got == site.journal()  # every visible entry once, no hidden one
    counts = store.counters(leg.conn)
    assert counts["miner.internal_skipped"] == hidden
    assert "miner.data_gaps" not in counts
    mark = miner.load_bookmark(leg.conn, leg.journal)
    assert mark is not None and mark.sequence == site.emu.head().sequence
    leg.close()


def test_thirty_windows_of_1000_are_mined_whole(site: Site) -> None:
    """30,000 entries in windows of 1,000: every one stored, in journal order.

    Speed is the benchmark's business (``appliance bench``, the IBM i row).
    """
    site.emu.create_store_tables()
    obj = f"{'PRIX':<10}{'MAG':<10}{'PRIX':<10}"
    entries = [
        Entry("R", "PT", obj, i + 1, "0", "0000000", bytes(64)) for i in range(1000)
    ]
    total = 30_000
    for _ in range(total // 1000):
        with site.emu.transaction() as cur:
            site.emu.emit(cur, "123456/POS/CAISSE01", 0, entries)
    leg = site.leg(window=1000)
    while leg.step():  # one window per step until the head
        pass
    got = mined(site.db_path)
    assert len(got) == len(site.journal())
    assert [(r[0], r[1]) for r in got] == [(r[0], r[1]) for r in site.journal()]
    leg.close()


def test_receiver_info_glitches_through_odbc_skip_nothing(site: Site) -> None:
    """jhc #55/#83: NULL attach time and a stale LAST_SEQUENCE after CHGJRN.

    Armed for several reads each, at every receiver change; the miner never
    asks for an inverted range, never leaves a receiver before its real end,
    and stores every entry exactly once.
    """
    workload.seed_store(site.emu, 10, seed=1)
    leg = site.leg(window=7)
    for round_ in range(3):
        workload.run(site.emu, 0, changes=30, seed=10 + round_)
        site.emu.change_receiver(reset=round_ == 1)
        site.emu.arm_glitches(null_attach=2, stale_last=2, stale_by=5)
        for _ in range(6):
            leg.step()  # some steps while the view lies
    drain(leg)
    got = mined(site.db_path)
    assert got == site.journal()
    assert "miner.data_gaps" not in store.counters(leg.conn)
    leg.close()


def test_inverted_range_at_the_head_is_retried_never_a_gap(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popsink #79: CPF7054 at the head is a transient failure, not a pruning.

    The source is made to receive one inverted window (a head read one poll
    late); the step fails with CPF7054, backs off, and the next steps read
    everything: no gap, no rewind.
    """
    workload.seed_store(site.emu, 5, seed=1)
    leg = site.leg()
    drain(leg)
    real_plan = journal.plan
    calls = {"n": 0}

    def late_head(*args: Any) -> journal.Action:
        action = real_plan(*args)
        if calls["n"] == 0 and isinstance(action, journal.Read):
            calls["n"] += 1  # only the first read the miner decides on
            return journal.Read(action.receiver, action.end + 3, action.end, True)
        return action

    monkeypatch.setattr(journal, "plan", late_head)
    workload.run(site.emu, 0, changes=10, seed=2)
    for _ in range(40):  # a step may first wait for a fresh receiver list
        if leg.step() is False and leg._attempt:
            break
        time.sleep(0.06)
    assert leg._attempt == 1
    mark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    time.sleep(0.6)  # past the first backoff
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert "miner.data_gaps" not in store.counters(leg.conn)
    after = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert mark is not None and after is not None and after.sequence > mark.sequence
    leg.close()


def test_lost_connection_is_retried_with_backoff(site: Site) -> None:
    """A broken ODBC link: the step fails, the next one after backoff resumes."""
    workload.seed_store(site.emu, 5, seed=1)
    leg = site.leg()
    drain(leg)
    with psycopg.connect(site.admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (site.ibmi.user,),
        )
    workload.run(site.emu, 0, changes=20, seed=3)
    for _ in range(40):  # the first step that queries meets the dead link
        if leg.step() is False and leg._attempt:
            break
        time.sleep(0.06)
    assert leg._attempt == 1 and leg._retry_at > time.monotonic()
    drain(leg)
    assert mined(site.db_path) == site.journal()
    leg.close()


def test_preflight_reports_risky_settings_in_meta(site: Site) -> None:
    """DLTRCV(*YES), MINENTDTA and *AFTER images: WARNINGs and a meta report."""
    workload.seed_store(site.emu, 3, seed=1)
    site.emu.set_journal(
        delete_receiver_option="*YES",
        minimize_entry_data="*FLDBDY",
        receiver_retention="2D",
    )
    site.emu.set_images("PRIX", "*AFTER")
    leg = site.leg()
    drain(leg)
    row = leg.conn.execute("SELECT value FROM meta WHERE key = 'miner.preflight'")
    report = json.loads(row.fetchone()[0])
    checks = {f["check"]: f["value"] for f in report["findings"]}
    assert checks == {
        "DLTRCV": "*YES",
        "MINENTDTA": "*FLDBDY",
        "receiver retention": "2D",
        "MAG/PRIX IMAGES": "*AFTER",
    }
    assert report["ok"] is False
    assert store.counters(leg.conn)["miner.preflight_warnings"] == 4
    leg.close()


def test_lag_in_entries_and_seconds_across_a_reset(site: Site) -> None:
    """Lag = rest of the old receiver + the new one; seconds from entry times."""
    emu = site.emu
    first = dt.datetime(2026, 12, 4, 10, 0, 0)
    emu.clock = lambda: first
    workload.seed_store(emu, 5, seed=1)
    leg = site.leg(window=10**4)
    drain(leg)
    emu.clock = lambda: first + dt.timedelta(seconds=90)
    workload.run(emu, 0, changes=10, seed=2)
    emu.change_receiver(reset=True)
    workload.run(emu, 0, changes=10, seed=3)
    emu.clock = None
    leg._lag_at = float("-inf")
    leg._refresh(leg._ensure_source())
    leg._after_refresh(leg._ensure_source())
    lag = json.loads(
        leg.conn.execute("SELECT value FROM meta WHERE key = 'miner.lag'").fetchone()[0]
    )
    expected = len(site.journal()) - len(mined(site.db_path))
    gaps = 0.05 * expected  # hidden sequence numbers count too (gap_rate 0.05)
    assert expected <= lag["entries"] <= expected + 3 * gaps + 3
    assert lag["seconds"] == 90.0
    assert lag["head"].endswith(f":{emu.head().sequence}")
    leg.close()


def test_last_sequence_stale_for_many_polls_still_skips_nothing(site: Site) -> None:
    """A LAST_SEQUENCE stale for 8 reads passes the two-refresh rule; the probe
    past the reported end finds the tail, stores it, and only then moves on."""
    workload.seed_store(site.emu, 5, seed=1)
    leg = site.leg()
    drain(leg)
    workload.run(site.emu, 0, changes=20, seed=2)
    site.emu.change_receiver()
    site.emu.arm_glitches(stale_last=8, stale_by=6)
    workload.run(site.emu, 0, changes=5, seed=3)
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert store.counters(leg.conn)["miner.tails_found"] == 1
    leg.close()
