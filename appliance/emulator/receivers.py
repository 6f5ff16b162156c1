"""Journal receiver operations of the emulator: CHGJRN, IPL, DLTJRNRCV.

CHGJRN JRNRCV(*GEN) writes J NR (naming the next receiver) as the last entry
of the old receiver, detaches it (status ONLINE), attaches a receiver whose
numeric suffix is one higher (QSQJRN0001 -> QSQJRN0002, wrapping at 9999,
skipping live names) and writes J PR (naming the previous one) as its first
entry. SEQOPT(*RESET) restarts numbering at 1 and is refused (CPF7018)
while any commit cycle of the journal is open. All of it is one PostgreSQL
transaction, so a reader sees either the old chain or the new one.

DLTJRNRCV removes the entries and marks the receiver DELETED: it disappears
from QSYS2.JOURNAL_RECEIVER_INFO, and DISPLAY_JOURNAL over a range that
includes it fails with CPF9801 (the relay's data-gap case).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

from appliance.emulator.job import Entry
from appliance.errors import SourceError

if TYPE_CHECKING:
    from appliance.emulator.journal import Emulator

logger = logging.getLogger(__name__)


def change_receiver(emu: Emulator, *, reset: bool, job: str) -> str:
    """CHGJRN JRNRCV(*GEN) SEQOPT(*CONT|*RESET); the new receiver's name."""
    with emu.transaction() as cur:
        cur.execute(
            "SELECT j.attached_receiver_id, r.receiver_name, r.chain_position, "
            "r.chain_number, j.receiver_prefix FROM qsys2.emu_journal j JOIN "
            "qsys2.emu_receiver r ON r.receiver_id = j.attached_receiver_id "
            "WHERE j.journal_id = %s FOR UPDATE OF j",
            [emu.journal_id],
        )
        found = cur.fetchone()
        assert found is not None
        old_id, old_name, position, chain, prefix = found
        if reset:
            _refuse_open_cycles(emu, cur)
        new_name = _next_name(emu, cur, prefix, old_name)
        emu.emit(cur, job, None, [Entry("J", "NR", data=_names(new_name, emu))])
        _attach(emu, cur, (old_id, old_name, position, chain), new_name, reset=reset)
        emu.emit(cur, job, None, [Entry("J", "PR", data=_names(old_name, emu))])
    logger.info("receiver changed receiver=%s reset=%s", new_name, reset)
    return new_name


def delete_receiver(emu: Emulator, name: str) -> None:
    """DLTJRNRCV: entries gone, receiver DELETED; CPF7021 if attached."""
    drop_entries(emu, name, "DELETED", gone=("DELETED",))
    logger.info("receiver deleted receiver=%s", name.upper())


def drop_entries(
    emu: Emulator, name: str, status: str, *, gone: tuple[str, ...]
) -> None:
    """Remove a receiver's entries and give it ``status`` (DELETED, FREED).

    CPF9801 when no receiver of that name is in a status outside ``gone``;
    CPF7021 when it is the attached one (its entries are still being written).
    """
    with emu.transaction() as cur:
        cur.execute(
            "SELECT r.receiver_id, r.receiver_id = j.attached_receiver_id "
            "FROM qsys2.emu_receiver r JOIN qsys2.emu_journal j USING (journal_id) "
            "WHERE r.journal_id = %s AND r.receiver_name = %s "
            "AND NOT (r.status = ANY(%s)) FOR UPDATE OF r",
            [emu.journal_id, name.upper(), list(gone)],
        )
        found = cur.fetchone()
        if found is None:
            raise SourceError(f"CPF9801 receiver {name[:10]} not found", cpf="CPF9801")
        if found[1]:
            raise SourceError(
                f"CPF7021 receiver {name[:10]} is attached", cpf="CPF7021"
            )
        cur.execute("DELETE FROM qsys2.emu_entry WHERE receiver_id = %s", [found[0]])
        cur.execute(
            "UPDATE qsys2.emu_receiver SET status = %s WHERE receiver_id = %s",
            [status, found[0]],
        )


def _refuse_open_cycles(emu: Emulator, cur: psycopg.Cursor[Any]) -> None:
    cur.execute(
        "SELECT count(*), min(job) FROM qsys2.emu_open_cycle WHERE journal_id = %s",
        [emu.journal_id],
    )
    found = cur.fetchone()
    assert found is not None
    if found[0]:
        raise SourceError(
            f"CPF7018 sequence number not reset: {found[0]} commit cycle(s) "
            f"open, first job={found[1]}",
            cpf="CPF7018",
        )


def _next_name(emu: Emulator, cur: psycopg.Cursor[Any], prefix: str, old: str) -> str:
    digits = 10 - len(prefix)
    number = int(old[len(prefix) :] or 0)
    for step in range(1, 10**digits):
        candidate = number + step
        if candidate >= 10**digits:
            candidate = candidate % 10**digits + 1
        name = f"{prefix}{candidate:0{digits}d}"
        cur.execute(
            "SELECT 1 FROM qsys2.emu_receiver WHERE receiver_library = %s "
            "AND receiver_name = %s AND status <> 'DELETED'",
            [emu.library, name],
        )
        if cur.fetchone() is None:
            return name
    raise SourceError("no free receiver name left (CPF7010)", cpf="CPF7010")


def _attach(
    emu: Emulator,
    cur: psycopg.Cursor[Any],
    old: tuple[int, str, int, int],
    new_name: str,
    *,
    reset: bool,
) -> None:
    """Detach ``old`` (id, name, chain position, chain), attach ``new_name``."""
    old_id, old_name, position, chain = old
    now = emu.now()
    cur.execute(
        "UPDATE qsys2.emu_receiver SET status = 'ONLINE', detach_timestamp = %s, "
        "next_receiver_library = %s, next_receiver_name = %s "
        "WHERE receiver_id = %s",
        [now, emu.library, new_name, old_id],
    )
    cur.execute(
        "INSERT INTO qsys2.emu_receiver (journal_id, receiver_library, "
        "receiver_name, chain_position, chain_number, status, attach_timestamp, "
        "sequence_reset, previous_receiver_library, previous_receiver_name) "
        "VALUES (%s, %s, %s, %s, %s, 'ATTACHED', %s, %s, %s, %s) "
        "RETURNING receiver_id",
        [
            emu.journal_id,
            emu.library,
            new_name,
            position + 1,
            chain,
            now,
            reset,
            emu.library,
            old_name,
        ],
    )
    new_id = cur.fetchone()
    assert new_id is not None
    cur.execute(
        "UPDATE qsys2.emu_journal SET attached_receiver_id = %s, next_sequence = "
        "CASE WHEN %s THEN 1 ELSE next_sequence END WHERE journal_id = %s",
        [new_id[0], reset, emu.journal_id],
    )


def _names(name: str, emu: Emulator) -> bytes:
    """J PR / NR entry data: receiver name and library, EBCDIC (CCSID 37)."""
    return f"{name:<10}{emu.library:<10}".encode("cp037")
