"""Commitment control: rollbacks, savepoints and autocommit in the journal."""

from __future__ import annotations

import psycopg
import pytest

from appliance.emulator import Column, Emulator
from appliance.errors import SourceError

pytestmark = pytest.mark.integration

VENTES = [
    Column("ID", "INTEGER"),
    Column("ARTICLE", "CHAR", 6),
    Column("MONTANT", "DECIMAL", 9, 2),
]


def entries(emu: Emulator, first: int) -> list[tuple[str, str, int, int]]:
    """(code, type, cycle, rrn) of every entry from sequence ``first``."""
    with psycopg.connect(emu.conninfo) as conn:
        rows = conn.execute(
            "SELECT journal_code, journal_entry_type, commit_cycle, count_or_rrn, "
            "sequence_number FROM qsys2.display_journal('MAG', 'QSQJRN', "
            "starting_sequence => %s)",
            [first],
        ).fetchall()
    return [(c, t, int(cy), int(rrn)) for c, t, cy, rrn, _ in rows]


def seeded(emu: Emulator) -> int:
    """VENTES with rows 1..3 committed; returns the next sequence."""
    emu.create_table("VENTES", VENTES, ["ID"])
    with emu.job("123456/POS/CAISSE01") as job:
        for n in (1, 2, 3):
            job.insert("VENTES", {"ID": n, "ARTICLE": "000001", "MONTANT": "10.00"})
        job.commit()
    return (emu.head().sequence or 0) + 1


def test_rollback_writes_compensations_in_reverse_order(emu: Emulator) -> None:
    """The reference trace of brief §2.4: SC PT UB UP DL | PX BR UR DR RB."""
    start = seeded(emu)
    before = emu.rows("VENTES")
    with emu.job("123456/POS/CAISSE01") as job:
        rrn = job.insert("VENTES", {"ID": 57, "ARTICLE": "000057", "MONTANT": "1"})
        job.update("VENTES", {"ID": 2}, {"MONTANT": "99.99"})
        job.delete("VENTES", {"ID": 1})
        job.rollback()
    trace = entries(emu, start)
    assert [(c, t) for c, t, _, _ in trace] == [
        ("C", "SC"),
        ("R", "PT"),
        ("R", "UB"),
        ("R", "UP"),
        ("R", "DL"),
        ("R", "PX"),
        ("R", "BR"),
        ("R", "UR"),
        ("R", "DR"),
        ("C", "RB"),
    ]
    cycle = trace[0][2]
    assert cycle == start  # the cycle id is the SC entry's own sequence
    assert {c for _, _, c, _ in trace} == {cycle}
    assert [r for _, _, _, r in trace[1:-1]] == [rrn, 2, 2, 1, 1, 2, 2, rrn]
    assert emu.rows("VENTES") == before


def test_savepoint_rollback_has_no_rb_and_the_cycle_commits(emu: Emulator) -> None:
    """ROLLBACK TO SAVEPOINT: compensations only, then the cycle ends with CM."""
    start = seeded(emu)
    with emu.job("123456/POS/CAISSE01") as job:
        job.update("VENTES", {"ID": 1}, {"MONTANT": "11.00"})
        point = job.savepoint()
        job.update("VENTES", {"ID": 2}, {"MONTANT": "22.00"})
        job.insert("VENTES", {"ID": 4, "ARTICLE": "000004", "MONTANT": "4"})
        job.rollback_to(point)
        job.commit()
    types = [t for _, t, _, _ in entries(emu, start)]
    assert types == ["SC", "UB", "UP", "UB", "UP", "PT", "DR", "BR", "UR", "CM"]
    assert [r["MONTANT"] for r in emu.rows("VENTES")] == ["11.00", "10.00", "10.00"]


def test_autocommit_changes_carry_cycle_zero(emu: Emulator) -> None:
    """Outside commitment control: no C entries, COMMIT_CYCLE 0."""
    start = seeded(emu)
    with emu.job("234567/GESTION/PRIXMAJ", autocommit=True) as job:
        job.update("VENTES", {"ID": 3}, {"MONTANT": "0.50"})
        job.delete("VENTES", {"ID": 3})
    assert entries(emu, start) == [
        ("R", "UB", 0, 3),
        ("R", "UP", 0, 3),
        ("R", "DL", 0, 3),
    ]


def test_exception_in_job_rolls_back_implicitly(emu: Emulator) -> None:
    """Leaving the job on an error rolls the open cycle back (flag '2')."""
    start = seeded(emu)
    before = emu.rows("VENTES")
    with pytest.raises(RuntimeError), emu.job("123456/POS/CAISSE01") as job:
        job.update("VENTES", {"ID": 1}, {"MONTANT": "5.00"})
        raise RuntimeError("till crashed")
    with psycopg.connect(emu.conninfo) as conn:
        flag = conn.execute(
            "SELECT indicator_flag FROM qsys2.display_journal('MAG', 'QSQJRN', "
            "starting_sequence => %s, journal_entry_types => 'RB')",
            [start],
        ).fetchone()
    assert flag == ("2",)
    assert emu.rows("VENTES") == before


def test_row_in_an_open_cycle_is_locked_for_other_jobs(emu: Emulator) -> None:
    """Another job touching a row changed by an open cycle gets CPF5027."""
    seeded(emu)
    first = emu.job("123456/POS/CAISSE01")
    first.update("VENTES", {"ID": 1}, {"MONTANT": "1.00"})
    with emu.job("123457/POS/CAISSE02", autocommit=True) as other:
        with pytest.raises(SourceError) as caught:
            other.update("VENTES", {"ID": 1}, {"MONTANT": "2.00"})
        assert caught.value.cpf == "CPF5027"
        other.update("VENTES", {"ID": 2}, {"MONTANT": "2.00"})
    first.commit()
    assert [r["MONTANT"] for r in emu.rows("VENTES")] == ["1.00", "2.00", "10.00"]


def test_failed_change_leaves_neither_row_nor_entry(emu: Emulator) -> None:
    """A duplicate key is refused and journals nothing."""
    seeded(emu)
    head = emu.head()
    with (
        emu.job("123456/POS/CAISSE01") as job,
        pytest.raises(SourceError, match="23505"),
    ):
        job.insert("VENTES", {"ID": 1, "ARTICLE": "x", "MONTANT": "1"})
    assert emu.head() == head
    assert len(emu.rows("VENTES")) == 3
