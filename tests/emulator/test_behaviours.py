"""Brief §9 behaviours of the emulator, seen through ODBC as the miner sees them."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.emulator import Column, Emulator
from appliance.errors import SourceError

pytestmark = pytest.mark.integration

ITEM = [
    Column("K", "CHAR", 4),
    Column("V", "INTEGER"),
    Column("N", "VARCHAR", 10, nullable=True),
]


def entries(odbc: Any, receiver: str = "*CURCHAIN") -> list[tuple[Any, ...]]:
    cur = odbc.cursor()
    cur.execute(
        "SELECT j.sequence_number, j.journal_code, j.journal_entry_type,"
        " j.count_or_rrn, j.null_value_indicators, j.entry_data, j.receiver_name"
        " FROM qsys2.display_journal(journal_library => 'MAG',"
        " journal_name => 'QSQJRN', starting_receiver_name => ?) AS j"
        " ORDER BY j.receiver_name, j.sequence_number",
        receiver,
    )
    return [tuple(r) for r in cur.fetchall()]


def kinds(rows: list[tuple[Any, ...]]) -> list[str]:
    return [f"{r[1]} {r[2]}" for r in rows]


def receivers(odbc: Any) -> list[tuple[Any, ...]]:
    cur = odbc.cursor()
    cur.execute(
        "SELECT journal_receiver_name, status, attach_timestamp,"
        " last_sequence_number FROM qsys2.journal_receiver_info"
        " ORDER BY journal_receiver_name"
    )
    return [tuple(r) for r in cur.fetchall()]


def filled(emu: Emulator, count: int = 4) -> None:
    emu.create_table("ITEM", ITEM, key=["K"])
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        for n in range(count):
            job.insert("ITEM", {"K": f"K{n}", "V": n, "N": None})


def test_clrpfm_writes_f_cr_and_no_delete_entries(emu: Emulator, odbc: Any) -> None:
    """CLRPFM empties the table with one F CR and not a single R DL."""
    filled(emu)
    assert emu.clear_member("ITEM") == 4
    found = kinds(entries(odbc))
    assert found[-1] == "F CR"
    assert "R DL" not in found
    assert emu.rows("ITEM") == []


def test_rgzpfm_renumbers_rrns_and_writes_f_rg(emu: Emulator, odbc: Any) -> None:
    """RGZPFM squeezes deleted slots: later changes carry the new RRNs."""
    filled(emu)
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.delete("ITEM", {"K": "K0"})
        emu.reorganize("ITEM")
        job.update("ITEM", {"K": "K3"}, {"V": 33})
    rows = entries(odbc)
    assert kinds(rows)[-3:] == ["F RG", "R UB", "R UP"]
    assert rows[-1][3] == 3  # K3 was RRN 4 before the reorganisation


def test_ended_journaling_hides_later_changes(emu: Emulator, odbc: Any) -> None:
    """After F EJ the table changes with no R entry; F JM brings them back."""
    filled(emu, 1)
    emu.end_journaling("ITEM")
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.update("ITEM", {"K": "K0"}, {"V": 7})
        emu.start_journaling("ITEM")
        job.update("ITEM", {"K": "K0"}, {"V": 8})
    assert kinds(entries(odbc))[-4:] == ["F EJ", "F JM", "R UB", "R UP"]
    assert emu.rows("ITEM")[0]["V"] == 8


def test_restore_replaces_rows_with_f_mr_only(emu: Emulator, odbc: Any) -> None:
    """RSTOBJ puts back a saved copy: one F MR, no record entries."""
    filled(emu, 2)
    saved = emu.rows("ITEM")
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.update("ITEM", {"K": "K0"}, {"V": 50})
    before = len(entries(odbc))
    emu.restore_member("ITEM", saved)
    rows = entries(odbc)
    assert kinds(rows[before:]) == ["F MR"]
    assert emu.rows("ITEM") == saved


def test_alter_writes_d_cg_and_longer_images(emu: Emulator, odbc: Any) -> None:
    """ALTER ADD COLUMN: D CG, then images of the new record length."""
    filled(emu, 1)
    old = entries(odbc)[-1][5]
    emu.add_column("ITEM", Column("EXTRA", "SMALLINT", nullable=True))
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.insert("ITEM", {"K": "K9", "V": 9, "EXTRA": 5})
    rows = entries(odbc)
    assert kinds(rows)[-2:] == ["D CG", "R PT"]
    assert len(rows[-1][5]) == len(old) + 2
    cur = odbc.cursor()
    cur.execute("SELECT count(*) FROM qsys2.syscolumns2 WHERE table_name = 'ITEM'")
    assert cur.fetchone()[0] == 4


def test_after_images_update_without_ub_and_delete_without_image(
    emu: Emulator, odbc: Any
) -> None:
    """IMAGES(*AFTER) outside commitment control: UP alone, DL with no image."""
    emu.create_table("ITEM", ITEM, key=["K"], images="*AFTER")
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.insert("ITEM", {"K": "A", "V": 1})
        job.update("ITEM", {"K": "A"}, {"V": 2})
        job.delete("ITEM", {"K": "A"})
    rows = entries(odbc)
    assert kinds(rows)[-3:] == ["R PT", "R UP", "R DL"]
    assert bytes(rows[-1][5]) == b""


def test_minimized_updates_mark_unrecorded_fields_9(emu: Emulator, odbc: Any) -> None:
    """MINENTDTA(*FLDBDY): the null map says '9' for fields not recorded."""
    filled(emu, 1)
    emu.set_journal(minimize_entry_data="*FLDBDY")
    with emu.job("000100/TEST/LOADER", autocommit=True) as job:
        job.update("ITEM", {"K": "K0"}, {"V": 5})
    assert entries(odbc)[-1][4] == "009"
    cur = odbc.cursor()
    cur.execute("SELECT minimize_entry_specific_data FROM qsys2.journal_info")
    assert cur.fetchone()[0] == "*FLDBDY"


def test_ipl_rolls_back_open_cycles_then_resets(emu: Emulator, odbc: Any) -> None:
    """An IPL ends an open cycle with DR + C RB (flag 2), then numbers restart."""
    filled(emu, 1)
    job = emu.job("000200/POS/CAISSE01")
    job.insert("ITEM", {"K": "OPEN", "V": 1})
    emu.ipl()
    old = [r for r in entries(odbc, "QSQJRN0001") if r[6] == "QSQJRN0001"]
    assert kinds(old)[-3:] == ["R DR", "C RB", "J NR"]
    assert entries(odbc, "*CURRENT")[0][0] == 1
    assert [r["K"] for r in emu.rows("ITEM")] == ["K0"]


def test_saved_and_freed_receiver_shows_freed_and_cannot_be_read(
    emu: Emulator, odbc: Any
) -> None:
    """SAVJRNRCV STG(*FREE): status FREED in the view, reading it fails."""
    filled(emu, 1)
    emu.change_receiver()
    emu.save_and_free("QSQJRN0001")
    assert receivers(odbc)[0][1] == "FREED"
    with pytest.raises(Exception, match="CPF7053"):
        entries(odbc, "QSQJRN0001")


def test_glitches_last_for_the_armed_reads_only(emu: Emulator, odbc: Any) -> None:
    """NULL attach time and stale LAST_SEQUENCE show once, then the truth."""
    filled(emu, 3)
    emu.change_receiver()
    truth = receivers(odbc)
    emu.arm_glitches(null_attach=1, stale_last=1, stale_by=2)
    glitched = receivers(odbc)
    assert glitched[1][2] is None and truth[1][2] is not None
    assert glitched[0][3] == truth[0][3] - 2
    assert receivers(odbc) == truth


def test_alter_is_refused_while_a_cycle_holds_a_row(emu: Emulator) -> None:
    """CPF3202: the file is in use by a job with an open commit cycle."""
    filled(emu, 1)
    with emu.job("000200/POS/CAISSE01") as job:
        job.update("ITEM", {"K": "K0"}, {"V": 3})
        with pytest.raises(SourceError) as info:
            emu.clear_member("ITEM")
        assert info.value.cpf == "CPF3202"
