"""DISPLAY_JOURNAL through pyodbc + psqlODBC, as the miner calls it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyodbc
import pytest
from emulator_support import decode_image

from appliance.emulator import Column, Emulator
from appliance.errors import SourceError

pytestmark = pytest.mark.integration

WINDOW = """
SELECT j.sequence_number, j.journal_code, j.journal_entry_type, j.commit_cycle,
       j.count_or_rrn, j.object, j.receiver_name, j.null_value_indicators,
       j.entry_data, j.job_number, j.job_user, j.job_name, j.entry_timestamp
  FROM qsys2.display_journal(
         journal_library => ?, journal_name => ?,
         starting_receiver_library => ?, starting_receiver_name => ?,
         ending_receiver_library => ?, ending_receiver_name => ?,
         starting_sequence => CAST(? AS DECIMAL(21,0)),
         ending_sequence => CAST(? AS DECIMAL(21,0)),
         journal_codes => ?) AS j
 ORDER BY j.sequence_number
"""
PRIX = [
    Column("ARTNUM", "CHAR", 6),
    Column("LIBELLE", "VARCHAR", 30, ccsid=297),
    Column("PRIX", "DECIMAL", 9, 2),
    Column("PROMO", "DECIMAL", 9, 2, nullable=True),
    Column("QTE", "NUMERIC", 7, 3),
    Column("MAJ", "TIMESTAMP"),
]


def window(
    odbc: Any, receiver: str, start: int, end: int, codes: str = "C,D,F,J,R"
) -> list[Any]:
    cur = odbc.cursor()
    cur.execute(
        WINDOW, "MAG", "QSQJRN", "MAG", receiver, "MAG", receiver, start, end, codes
    )
    return cur.fetchall()


def chain(odbc: Any, start: int, name: str = "*CURCHAIN") -> list[Any]:
    cur = odbc.cursor()
    cur.execute(
        "SELECT j.sequence_number, j.receiver_name, j.journal_entry_type "
        "FROM qsys2.display_journal(journal_library => ?, journal_name => ?, "
        "starting_receiver_name => ?, starting_sequence => CAST(? AS DECIMAL(21,0)), "
        "journal_codes => 'R') AS j",
        "MAG",
        "QSQJRN",
        name,
        start,
    )
    return cur.fetchall()


def fill(emu: Emulator, first: int, count: int) -> None:
    with emu.job("123456/POS/CAISSE01", autocommit=True) as job:
        for n in range(first, first + count):
            job.insert(
                "PRIX",
                {
                    "ARTNUM": f"{n:06d}",
                    "LIBELLE": "Pâté",
                    "PRIX": "1.00",
                    "QTE": "1",
                    "MAJ": dt.datetime(2024, 1, 1),
                },
            )


def test_named_parameters_return_what_was_written(emu: Emulator, odbc: Any) -> None:
    """A bounded window in one receiver gives the entries and decodable images."""
    table = emu.create_table("PRIX", PRIX, ["ARTNUM"])
    with emu.job("123456/POS/CAISSE01") as job:
        job.insert(
            "PRIX",
            {
                "ARTNUM": "000123",
                "LIBELLE": "Crème fraîche épaisse 30%",
                "PRIX": "12.50",
                "QTE": "-4.250",
                "MAJ": dt.datetime(2024, 3, 15, 13, 45, 30, 123456),
            },
        )
        job.update("PRIX", {"ARTNUM": "000123"}, {"PROMO": "9.99"})
        job.commit()
    head = emu.head()
    rows = window(odbc, head.receiver_name, 1, head.sequence or 0)

    types = [(r.journal_code, r.journal_entry_type) for r in rows]
    assert types == [
        ("D", "CT"),
        ("C", "SC"),
        ("R", "PT"),
        ("R", "UB"),
        ("R", "UP"),
        ("C", "CM"),
    ]
    assert isinstance(rows[0].sequence_number, Decimal)
    cycle = rows[1].sequence_number
    assert all(r.commit_cycle == cycle for r in rows[1:])
    after = rows[4]
    assert after.object == "PRIX      MAG       PRIX      "
    assert (after.job_number, after.job_user, after.job_name) == (
        "123456",
        "POS",
        "CAISSE01",
    )
    assert after.null_value_indicators == "000000"
    assert rows[3].null_value_indicators == "000100"
    assert decode_image(
        table, bytes(after.entry_data), after.null_value_indicators
    ) == {
        "ARTNUM": "000123",
        "LIBELLE": "Crème fraîche épaisse 30%",
        "PRIX": "12.50",
        "PROMO": "9.99",
        "QTE": "-4.250",
        "MAJ": "2024-03-15T13:45:30.123456",
    }
    assert emu.rows("PRIX")[0]["PROMO"] == "9.99"


def test_first_occurrence_rule_after_a_reset(emu: Emulator, odbc: Any) -> None:
    """*CURCHAIN + sequence picks the OLD receiver's number (jhc #38 repro)."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    fill(emu, 1, 30)
    old = emu.head()
    new = emu.ipl()
    fill(emu, 100, 10)
    assert emu.head().receiver_name == new
    assert (emu.head().sequence or 0) < (old.sequence or 0)

    found = chain(odbc, 5)
    assert found[0].receiver_name == old.receiver_name
    assert found[0].sequence_number == 5
    # Pinned to the new receiver, the same number means the new entries.
    pinned = window(odbc, new, 5, 8, "R")
    assert {r.receiver_name for r in pinned} == {new}
    assert [int(r.sequence_number) for r in pinned] == [5, 6, 7, 8]
    # *CURSEQCHN stops at the reset: only the new receiver.
    assert {r.receiver_name for r in chain(odbc, 5, "*CURSEQCHN")} == {new}


def test_deleted_receiver_reaches_pyodbc_as_cpf9801(emu: Emulator, odbc: Any) -> None:
    """A pruned receiver: pyodbc.Error, SQLSTATE 42704, message starts CPF9801."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    fill(emu, 1, 3)
    first = emu.head().receiver_name
    emu.change_receiver()
    emu.delete_receiver(first)
    with pytest.raises(pyodbc.Error) as caught:
        window(odbc, first, 1, 10)
    assert caught.value.args[0] == "42704"
    assert "CPF9801" in caught.value.args[1]
    listed = (
        odbc.cursor()
        .execute("SELECT journal_receiver_name FROM qsys2.journal_receiver_info")
        .fetchall()
    )
    assert [r[0] for r in listed] == ["QSQJRN0002"]


def test_inverted_range_is_cpf7054(emu: Emulator, odbc: Any) -> None:
    """end < start in one receiver is rejected with CPF7054 (Popsink #79)."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    fill(emu, 1, 5)
    with pytest.raises(pyodbc.Error, match="CPF7054"):
        window(odbc, "QSQJRN0001", 5, 3)
    assert window(odbc, "QSQJRN0001", 500, 600) == []  # beyond the head: empty


def test_receiver_chain_links_and_cont_numbering(emu: Emulator, odbc: Any) -> None:
    """CHGJRN *CONT: NR ends the old receiver, PR starts the new one, +1."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    fill(emu, 1, 2)
    emu.change_receiver()
    info = (
        odbc.cursor()
        .execute(
            "SELECT journal_receiver_name, status, first_sequence_number, "
            "last_sequence_number, next_journal_receiver, previous_journal_receiver "
            "FROM qsys2.journal_receiver_info ORDER BY attach_timestamp, "
            "journal_receiver_name"
        )
        .fetchall()
    )
    old, new = info
    assert (old.status, new.status) == ("ONLINE", "ATTACHED")
    assert old.next_journal_receiver == "QSQJRN0002"
    assert new.previous_journal_receiver == "QSQJRN0001"
    assert new.first_sequence_number == old.last_sequence_number + 1
    codes = window(odbc, "QSQJRN0002", 1, 99, "J")
    assert [(r.journal_entry_type) for r in codes] == ["PR"]


def test_reset_is_refused_while_a_cycle_is_open(emu: Emulator) -> None:
    """CHGJRN SEQOPT(*RESET) with an open commit cycle: CPF7018."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    with emu.job("123456/POS/CAISSE01") as job:
        job.insert(
            "PRIX",
            {"ARTNUM": "1", "LIBELLE": "x", "PRIX": 1, "QTE": 1, "MAJ": "2024-01-01"},
        )
        with pytest.raises(SourceError) as caught:
            emu.change_receiver(reset=True)
        assert caught.value.cpf == "CPF7018"
        emu.change_receiver()  # *CONT is allowed: the cycle straddles receivers
        job.commit()
    assert emu.ipl() == "QSQJRN0003"


def test_reader_role_cannot_touch_private_tables(emu: Emulator, odbc: Any) -> None:
    """The miner's role reads the journal but not the emulator's own tables."""
    emu.create_table("PRIX", PRIX, ["ARTNUM"])
    with pytest.raises(pyodbc.Error, match="permission denied"):
        odbc.cursor().execute("SELECT * FROM qsys2.emu_entry").fetchall()
    with pytest.raises(pyodbc.Error, match="permission denied"):
        odbc.cursor().execute("SELECT * FROM mag.prix").fetchall()
    columns = (
        odbc.cursor()
        .execute(
            "SELECT column_name, data_type, length, numeric_scale, ccsid, storage "
            "FROM qsys2.syscolumns2 WHERE system_table_schema = 'MAG' "
            "AND system_table_name = 'PRIX' ORDER BY ordinal_position"
        )
        .fetchall()
    )
    assert [tuple(c) for c in columns][2] == ("PRIX", "DECIMAL", 9, 2, None, 5)
    assert [tuple(c) for c in columns][5] == ("MAJ", "TIMESTMP", 26, None, 1147, 26)
