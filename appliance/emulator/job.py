"""A job of the store application: row changes under commitment control.

Journal entries a job writes (domain brief §2.4, IMAGES(*BOTH)):

    insert  -> R PT (after image)         update -> R UB (before), R UP (after)
    delete  -> R DL (deleted row image)

Under commitment control the first change of a cycle is preceded by C SC,
whose sequence number is the cycle id stamped on every entry of the cycle.
``commit()`` writes C CM; ``rollback()`` undoes the cycle's changes in
reverse order, journaling each undo, then writes C RB:

    undo of insert -> R DR      undo of update -> R BR (current), R UR (restored)
    undo of delete -> R PX (row put back at its RRN)

``rollback_to(savepoint)`` writes the same compensations for the changes
after the savepoint, without any C entry; the cycle stays open. An
autocommit job (``autocommit=True``) writes its R entries with cycle 0.

Invariants: each change (data row + its entries) is one PostgreSQL
transaction, so a failed change leaves neither; a rolled-back change leaves
``mag.<table>`` as before; a row changed by an open cycle is locked against
other jobs (CPF5027) until that cycle ends. Leaving the ``with`` block with
a cycle open commits it, or rolls it back if an exception is propagating
(indicator flag '2', implicit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from psycopg import Cursor

from appliance.emulator.layout import check_name
from appliance.emulator.table import Row, TableDef
from appliance.errors import SourceError

if TYPE_CHECKING:
    from appliance.emulator.journal import Emulator

logger = logging.getLogger(__name__)

EXPLICIT = "0"
IMPLICIT = "2"


@dataclass(frozen=True)
class Entry:
    """One journal entry to append (the writer's view)."""

    code: str
    type: str
    object: str = ""
    rrn: int = 0
    flag: str = "0"
    null_map: str = ""
    data: bytes = b""


@dataclass(frozen=True)
class Undo:
    """What a compensation needs: the change kind, table, RRN, old row."""

    kind: str
    table: TableDef
    rrn: int
    before: Row | None


class Job:
    """One job (``number/user/name``) writing to the emulated library."""

    def __init__(
        self, emu: Emulator, name: str, *, autocommit: bool, program: str
    ) -> None:
        split_job(name)
        self.emu = emu
        self.name = name.upper()
        self.autocommit = autocommit
        self.program = program.upper()[:10]
        self.cycle: int | None = None
        self._opened = 0
        self._undo: list[Undo] = []
        self._locks: set[tuple[str, int]] = set()

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.cycle is None:
            return
        if kind is None:
            self._end("CM", IMPLICIT)
        else:
            self._end("RB", IMPLICIT)

    # ---------------------------------------------------------- changes --

    def insert(
        self, table: str, row: Mapping[str, Any], *, rrn: int | None = None
    ) -> int:
        """Insert ``row``; its RRN.

        ``rrn`` puts the row into that free slot (a deleted row's, REUSEDLT),
        journaled as PX, the entry of a row added directly by RRN.
        """
        tdef = self.emu.table(table)
        values = tdef.values(row)
        kind = "PT" if rrn is None else "PX"
        with self.emu.transaction() as cur:
            after, slot = tdef.insert(cur, values, rrn)
            self._journal(cur, [self._image(kind, tdef, slot, after)])
        self._remember(Undo("PT", tdef, slot, None))
        return slot

    def update(
        self, table: str, key: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> None:
        """Change the columns ``changes`` of the row with primary key ``key``."""
        tdef = self.emu.table(table)
        keys, values = tdef.key_values(key), tdef.values(changes)
        with self.emu.transaction() as cur:
            found = tdef.update(cur, keys, values)
            if found is None:
                raise _missing(tdef, keys)
            before, after, rrn = found
            self._check_lock(tdef, rrn)
            entries = [self._image("UP", tdef, rrn, after)]
            if tdef.images == "*BOTH" or not self.autocommit:
                entries.insert(0, self._image("UB", tdef, rrn, before))
            if self.emu.minimized:
                entries = [_minimized(tdef, e, set(values)) for e in entries]
            self._journal(cur, entries)
        self._remember(Undo("UP", tdef, rrn, before))

    def delete(self, table: str, key: Mapping[str, Any]) -> None:
        """Delete the row with primary key ``key``."""
        tdef = self.emu.table(table)
        keys = tdef.key_values(key)
        with self.emu.transaction() as cur:
            found = tdef.delete(cur, keys)
            if found is None:
                raise _missing(tdef, keys)
            before, rrn = found
            self._check_lock(tdef, rrn)
            entry = self._image("DL", tdef, rrn, before)
            if tdef.images == "*AFTER" and self.autocommit:
                # IMAGES(*AFTER) outside commitment control: no usable image.
                entry = replace(entry, data=b"", null_map="")
            self._journal(cur, [entry])
        self._remember(Undo("DL", tdef, rrn, before))

    # ------------------------------------------------------ transactions --

    def commit(self) -> None:
        """COMMIT: C CM (explicit). Nothing is written when no cycle is open."""
        if self.cycle is not None:
            self._end("CM", EXPLICIT)

    def rollback(self) -> None:
        """ROLLBACK: compensations in reverse order, then C RB (explicit)."""
        if self.cycle is not None:
            self._end("RB", EXPLICIT)

    def savepoint(self) -> int:
        """A savepoint: the number of changes made so far in the cycle."""
        return len(self._undo)

    def end_by_system(self) -> None:
        """The system ends the open cycle with a rollback (IPL, job end)."""
        if self.cycle is not None:
            self._end("RB", IMPLICIT)

    def rollback_to(self, savepoint: int) -> None:
        """ROLLBACK TO SAVEPOINT: compensations only, the cycle stays open."""
        if not 0 <= savepoint <= len(self._undo):
            raise SourceError(f"savepoint {savepoint} unknown in job {self.name}")
        undo = self._undo[savepoint:]
        if not undo:
            return
        with self.emu.transaction() as cur:
            self._journal(cur, self._compensate(cur, undo))
        del self._undo[savepoint:]

    def _end(self, kind: str, flag: str) -> None:
        with self.emu.transaction() as cur:
            entries = self._compensate(cur, self._undo) if kind == "RB" else []
            entries.append(Entry("C", kind, flag=flag))
            self._journal(cur, entries)
        for lock in self._locks:
            self.emu.locks.pop(lock, None)
        self._locks.clear()
        self._undo.clear()
        self.cycle = None

    def _compensate(self, cur: Cursor[Any], undo: list[Undo]) -> list[Entry]:
        """Undo ``undo`` newest first, in the data table and as entries."""
        entries: list[Entry] = []
        for item in reversed(undo):
            table, rrn = item.table, item.rrn
            if item.kind == "PT":
                gone = table.remove(cur, rrn)
                entries.append(self._image("DR", table, rrn, gone))
            elif item.kind == "UP":
                assert item.before is not None
                current = table.at_rrn(cur, rrn)
                entries.append(self._image("BR", table, rrn, current))
                restored = table.restore(cur, rrn, item.before)
                entries.append(self._image("UR", table, rrn, restored))
            else:
                assert item.before is not None
                back, _ = table.insert(cur, item.before, rrn=rrn)
                entries.append(self._image("PX", table, rrn, back))
        return entries

    # ---------------------------------------------------------- helpers --

    def _image(self, kind: str, table: TableDef, rrn: int, row: Row) -> Entry:
        data, null_map = table.image(row)
        return Entry("R", kind, table.object, rrn, "0", null_map, data)

    def _journal(self, cur: Cursor[Any], entries: list[Entry]) -> None:
        """Write ``entries``, opening the cycle (C SC) at its first change."""
        if self.autocommit:
            self.emu.emit(cur, self.name, 0, entries, program=self.program)
            return
        if self.cycle is None:
            entries = [Entry("C", "SC"), *entries]
        written = self.emu.emit(
            cur, self.name, self.cycle, entries, program=self.program
        )
        if self.cycle is None:
            self._opened = written[0]

    def _remember(self, undo: Undo) -> None:
        if self.autocommit:
            return
        if self.cycle is None:
            self.cycle = self._opened
        self._undo.append(undo)
        lock = (undo.table.name, undo.rrn)
        self.emu.locks[lock] = self
        self._locks.add(lock)

    def _check_lock(self, table: TableDef, rrn: int) -> None:
        holder = self.emu.locks.get((table.name, rrn))
        if holder is not None and holder is not self:
            raise SourceError(
                f"CPF5027 record rrn={rrn} of table={table.name} in use by job "
                f"{holder.name}",
                cpf="CPF5027",
            )


def _minimized(table: TableDef, entry: Entry, changed: set[str]) -> Entry:
    """MINENTDTA(*FLDBDY): fields neither changed nor key are '9' (not recorded)."""
    full = entry.null_map or "0" * len(table.columns)
    marks = [
        mark if column.name in changed or column.name in table.key else "9"
        for column, mark in zip(table.columns, full, strict=True)
    ]
    return replace(entry, null_map="".join(marks))


def split_job(job: str) -> tuple[str, str, str]:
    """``number/user/name`` as its three parts, checked."""
    parts = job.upper().split("/")
    if len(parts) != 3 or not (parts[0].isdigit() and len(parts[0]) == 6):
        raise SourceError(f"job {job[:30]!r} invalid, expected 123456/USER/NAME")
    return parts[0], check_name(parts[1], "job user"), check_name(parts[2], "job")


def _missing(table: TableDef, key: Row) -> SourceError:
    shown = ", ".join(f"{k}={str(v)[:20]}" for k, v in key.items())
    return SourceError(f"row not found table={table.name} key {shown} (SQL0100)")
