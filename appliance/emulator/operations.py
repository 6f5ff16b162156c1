"""Operator and system commands of the emulated IBM i beyond row changes.

Each function plays one behaviour of domain brief §9 exactly as a reader of
the journal sees it; :class:`~appliance.emulator.journal.Emulator` exposes
them as methods:

    CLRPFM     clear_member       rows gone, one F CR, NO R DL entries
    RGZPFM     reorganize         deleted slots squeezed out, RRNs renumbered,
                                  one F RG, no R entries
    ENDJRNPF   end_journaling     one F EJ; later changes are NOT journaled
    STRJRNPF   start_journaling   one F JM; changes journaled again
    RSTOBJ     restore_member     data replaced by a saved copy, one F MR,
                                  no R entries
    ALTER      add_column         catalog and data table get the column, one
                                  D CG; later images have the new length
    SAVJRNRCV  save_and_free      receiver status FREED, its entries gone
    CHGJRN     set_journal        DLTRCV, MNGRCV, MINENTDTA, retention values
    (glitch)   arm_glitches       JOURNAL_RECEIVER_INFO lies for N reads

Invariants: every command that changes data writes its entry in the same
PostgreSQL transaction as the change; a command that needs the file for
itself (CLRPFM, RGZPFM, RSTOBJ, ALTER) is refused with CPF3202 while a
commit cycle holds one of its rows, as on IBM i.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from appliance.emulator import receivers
from appliance.emulator.job import Entry
from appliance.emulator.layout import Column
from appliance.errors import SourceError

if TYPE_CHECKING:
    from appliance.emulator.journal import Emulator

logger = logging.getLogger(__name__)

OPERATOR_JOB = "000001/QSECOFR/QPADEV0001"
JOURNAL_OPTIONS = {
    "delete_receiver_option": ("*NO", "*YES"),
    "manage_receiver_option": ("*SYSTEM", "*USER"),
    "minimize_entry_data": ("*NONE", "*FILE", "*FLDBDY"),
}


def _exclusive(emu: Emulator, table: str) -> None:
    """CPF3202 when an open commit cycle holds a row of ``table``."""
    holders = {job.name for (name, _), job in emu.locks.items() if name == table}
    if holders:
        raise SourceError(
            f"CPF3202 file {table} in use by job {sorted(holders)[0]}",
            cpf="CPF3202",
        )


def clear_member(emu: Emulator, table: str) -> int:
    """CLRPFM: every row removed, one F CR entry; the number of rows removed."""
    tdef = emu.table(table)
    _exclusive(emu, tdef.name)
    with emu.transaction(pipeline=False) as cur:
        cur.execute(sql.SQL("DELETE FROM {}").format(tdef.ident))
        removed = cur.rowcount
        emu.emit(cur, OPERATOR_JOB, None, [Entry("F", "CR", tdef.object, removed)])
    logger.info("member cleared table=%s count=%d", tdef.name, removed)
    return removed


def reorganize(emu: Emulator, table: str) -> int:
    """RGZPFM: rows renumbered 1..n in RRN order, one F RG; rows whose RRN moved."""
    tdef = emu.table(table)
    _exclusive(emu, tdef.name)
    ident = tdef.ident
    with emu.transaction(pipeline=False) as cur:
        cur.execute(sql.SQL("UPDATE {} SET _rrn = -_rrn").format(ident))
        cur.execute(
            sql.SQL(
                "UPDATE {t} AS d SET _rrn = s.rn FROM (SELECT _rrn AS old,"
                " row_number() OVER (ORDER BY _rrn DESC) AS rn FROM {t}) AS s"
                " WHERE d._rrn = s.old"
            ).format(t=ident)
        )
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
        found = cur.fetchone()
        rows = int(found[0]) if found else 0
        cur.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN _rrn RESTART WITH {}").format(
                ident, sql.Literal(rows + 1)
            )
        )
        emu.emit(cur, OPERATOR_JOB, None, [Entry("F", "RG", tdef.object, rows)])
    logger.info("member reorganized table=%s count=%d", tdef.name, rows)
    return rows


def set_journaling(emu: Emulator, table: str, *, on: bool) -> None:
    """STRJRNPF (F JM) or ENDJRNPF (F EJ) for ``table``."""
    tdef = emu.table(table)
    with emu.transaction() as cur:
        if on:
            cur.execute(
                "UPDATE qsys2.emu_table SET journaled = true WHERE "
                "system_table_schema = %s AND system_table_name = %s",
                [tdef.library, tdef.name],
            )
            emu.unjournaled.discard(tdef.object)
        emu.emit(
            cur, OPERATOR_JOB, None, [Entry("F", "JM" if on else "EJ", tdef.object)]
        )
        if not on:
            cur.execute(
                "UPDATE qsys2.emu_table SET journaled = false WHERE "
                "system_table_schema = %s AND system_table_name = %s",
                [tdef.library, tdef.name],
            )
    if not on:
        emu.unjournaled.add(tdef.object)
    logger.warning("journaling %s table=%s", "started" if on else "ended", tdef.name)


def restore_member(
    emu: Emulator, table: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """RSTOBJ of a saved copy: data replaced by ``rows``, one F MR, no R entries."""
    tdef = emu.table(table)
    _exclusive(emu, tdef.name)
    with emu.transaction() as cur:
        cur.execute(sql.SQL("DELETE FROM {}").format(tdef.ident))
        for row in rows:
            tdef.insert(cur, tdef.values(row))
        emu.emit(cur, OPERATOR_JOB, None, [Entry("F", "MR", tdef.object, len(rows))])
    logger.warning("member restored table=%s count=%d", tdef.name, len(rows))


def add_column(emu: Emulator, table: str, column: Column) -> None:
    """ALTER TABLE ADD COLUMN (nullable): catalog, data table, one D CG."""
    if not column.nullable:
        raise SourceError(f"column {column.name}: only nullable columns are added")
    tdef = emu.table(table)
    _exclusive(emu, tdef.name)
    ordinal = len(tdef.columns) + 1
    with emu.transaction() as cur:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                tdef.ident, sql.Identifier(column.pg_name), sql.SQL(column.pg_type())
            )
        )
        cur.execute(
            "INSERT INTO qsys2.emu_column VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)",
            [
                tdef.library,
                tdef.name,
                ordinal,
                column.name,
                column.name,
                column.catalog_type,
                column.catalog_length,
                column.scale if column.type in ("DECIMAL", "NUMERIC") else None,
                column.text_ccsid,
                "Y",
                column.storage,
            ],
        )
        cur.execute(
            "UPDATE qsys2.emu_table SET record_length = record_length + %s "
            "WHERE system_table_schema = %s AND system_table_name = %s",
            [column.storage, tdef.library, tdef.name],
        )
        emu.emit(cur, OPERATOR_JOB, None, [Entry("D", "CG", tdef.object)])
    emu.forget_tables()
    logger.info("table altered table=%s column=%s", tdef.name, column.name)


def save_and_free(emu: Emulator, name: str) -> None:
    """SAVJRNRCV STG(*FREE): status FREED, entries no longer on the system."""
    receivers.drop_entries(emu, name, "FREED", gone=("DELETED", "FREED"))
    logger.info("receiver saved and freed receiver=%s", name.upper())


def set_journal(emu: Emulator, **options: str) -> None:
    """CHGJRN-like options: delete_receiver_option, manage_receiver_option,
    minimize_entry_data, receiver_retention (free text, e.g. '*NOMAX', '2D')."""
    allowed = {**JOURNAL_OPTIONS, "receiver_retention": ()}
    for key, value in options.items():
        if key not in allowed or (allowed[key] and value not in allowed[key]):
            raise SourceError(f"journal option {key}={value[:12]!r} invalid")
    with emu.transaction() as cur:
        for key, value in options.items():
            cur.execute(
                sql.SQL(
                    "UPDATE qsys2.emu_journal SET {} = %s WHERE journal_id = %s"
                ).format(sql.Identifier(key)),
                [value, emu.journal_id],
            )
    if "minimize_entry_data" in options:
        emu.minimized = options["minimize_entry_data"] == "*FLDBDY"


def set_images(emu: Emulator, table: str, images: str) -> None:
    """CHGJRNOBJ ATR(*IMAGES): '*BOTH' or '*AFTER' for later changes."""
    if images not in ("*BOTH", "*AFTER"):
        raise SourceError(f"images {images!r} invalid, expected *BOTH or *AFTER")
    tdef = emu.table(table)
    with emu.transaction() as cur:
        cur.execute(
            "UPDATE qsys2.emu_table SET journal_images = %s WHERE "
            "system_table_schema = %s AND system_table_name = %s",
            [images, tdef.library, tdef.name],
        )
    emu.forget_tables()


def arm_glitches(
    emu: Emulator, *, null_attach: int = 0, stale_last: int = 0, stale_by: int = 3
) -> None:
    """JOURNAL_RECEIVER_INFO shows the glitches for that many reads each."""
    with emu.transaction() as cur:
        cur.execute(
            "UPDATE qsys2.emu_journal SET glitch_null_attach_reads = %s, "
            "glitch_stale_last_reads = %s, glitch_stale_by = %s "
            "WHERE journal_id = %s",
            [null_attach, stale_last, stale_by, emu.journal_id],
        )
