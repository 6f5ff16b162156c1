"""The miner against the emulated IBM i, through real ODBC (psqlODBC).

Each test gets its own PostgreSQL database holding a fresh emulator, so the
journal is not shared with other tests; the oracle is the emulator's own
journal table, read as superuser.
"""

from __future__ import annotations

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

from appliance import miner, source, store
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
        """(receiver, sequence, code, type, data) of every entry, chain order."""
        where = ""
        if tables is not None:
            names = ", ".join(f"'{t}'" for t in tables)
            where = (
                " WHERE e.journal_code NOT IN ('R', 'D', 'F')"
                f" OR rtrim(substr(e.object, 1, 10)) IN ({names})"
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


def test_throughput_with_windows_of_1000(site: Site, capsys: Any) -> None:
    """Measure entries/s mined through ODBC (reported, with a low floor)."""
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
    started = time.monotonic()
    while leg.step():  # one window per step until the head
        pass
    elapsed = time.monotonic() - started
    got = mined(site.db_path)
    assert len(got) == len(site.journal())
    rate = len(got) / elapsed
    with capsys.disabled():
        print(
            f"\nminer throughput: {len(got)} entries in {elapsed:.2f}s = {rate:.0f}/s"
        )
    assert rate > 1000
    leg.close()
