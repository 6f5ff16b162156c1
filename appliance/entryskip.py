"""An operator's skip of one unusable journal row (command ``skip_entry``).

The miner stores no entry of a window that holds a row it cannot use
(:func:`appliance.journalrows.check_rows`): it raises the alarm
``miner.alarm.bad_entry`` and reads the window again until it goes through.
Only an operator passes over such a row. This module decides the skip; the
miner does its I/O (reading the window again, the one transaction):

- :func:`check`: the request names the entry the alarm names, and the
  bookmark is where the alarm left it; anything else is refused with nothing
  changed.
- :func:`plan`: from the window as the source gives it NOW, what is stored
  and where the bookmark goes. The row must come back exactly once and still
  be unusable, every other row must be usable; a row without a sequence is
  dropped only where the other rows leave it one place (:func:`null_row_end`).
- :func:`write`, inside the miner's transaction that stores the other
  entries and moves the bookmark: the row parked whole (every column, as
  text or hex) as a dead letter of stage miner naming who asked, counter
  ``miner.skipped_entries``, the guardian check(s) of the table(s) the row
  may have changed (:func:`skipped_tables`), and the alarm cleared.

Worked example: the alarm names ``MAG/QSQJRN0002:4711`` (its ENTRY_TYPE is
NULL), the bookmark is at 4700. The window is read again cut at 4711
(4701..4711): entries 4701..4710 are stored, row 4711 goes to dead letters,
the bookmark takes 4711 and a check of its table is queued; the next step
reads on from 4712.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance import checks, journal, journalrows, store
from appliance.commands import CommandError
from appliance.config import IbmiSection
from appliance.journal import SKIP_MARK, SKIP_ROW_MARK, Bookmark, Read
from appliance.journalrows import EntryError

STAGE = "miner"
BAD_ENTRY_KEY = "miner.alarm.bad_entry"
SKIPPED = "miner.skipped_entries"


# The entry types that end a commit cycle (C CM, C RB).
ENDS = frozenset({"CM", "RB"})


class SkipRefused(ValueError):
    """The named row cannot be passed over without risking another entry."""


def name(receiver: str, sequence: int | None, after: int | None) -> str:
    """An entry as the alarm names it (and a ``skip_entry`` command)."""
    if sequence is not None:
        return f"{receiver}:{sequence}"
    return f"{receiver}: the row without a sequence after {after}"


def check(
    bad: EntryError | None,
    alarm_before_restart: bool,
    bookmark: Bookmark | None,
    args: dict[str, Any],
) -> tuple[str, Bookmark, EntryError]:
    """(the alarm's name for the entry, the bookmark, the alarm), when
    ``args`` may skip it now.

    ``args`` are checked ``skip_entry`` arguments; ``bad`` the miner's
    current alarm (None when none is up in this run of the leg, with
    ``alarm_before_restart`` when one is still shown from the last run).
    """
    asked = name(args["receiver"], args.get("sequence"), args.get("null_after"))
    if bad is None:
        earlier = (
            " (the alarm shown is from before the miner's restart: it reads"
            " that window again within seconds, then ask again)"
            if alarm_before_restart
            else ""
        )
        raise CommandError(
            f"no unusable-entry alarm is up{earlier}: {asked} not skipped"
        )
    named = name(bad.receiver, bad.sequence, bad.after)
    if asked != named:
        raise CommandError(f"the alarm names {named}, not {asked}: nothing skipped")
    if (
        bookmark is None
        or f"{bookmark.receiver_library}/{bookmark.receiver_name}" != bad.receiver
        or bookmark.next_sequence != bad.after + 1
    ):
        where = bookmark.position() if bookmark else "none"
        raise CommandError(
            f"the bookmark ({where}) moved since the alarm: nothing skipped"
        )
    return named, bookmark, bad


def cut(bad: EntryError, read: Read) -> Read:
    """The window to read again: ``read`` (starting at the bookmark), cut at
    the entry when it has a sequence, so the entries after it are left to
    the next step."""
    if bad.sequence is None:
        return read
    end = read.end if bad.end is None else bad.end
    if not read.start <= bad.sequence <= end:
        raise SkipRefused(f"its sequence is outside the window {read.start}..{end}")
    return Read(read.receiver, read.start, bad.sequence, at_head=False)


@dataclass
class Skip:
    """What one skip stores, parks and asks for."""

    entries: list[tuple[Any, ...]]
    hidden: int
    after: Bookmark
    position: str
    field: str
    tables: list[str]
    letter: dict[str, Any]
    # The mark stored after the entries: SKIP_MARK (a commit boundary
    # skipped) or SKIP_ROW_MARK (a row change of a cycle skipped).
    mark: tuple[Any, ...] | None = None


def plan(
    bookmark: Bookmark,
    bad: EntryError,
    read: Read,
    rows: Sequence[Sequence[Any]],
    *,
    journal_id: str,
    ibmi: IbmiSection,
    user: str,
    command_id: int,
    now: float,
    internal: set[int] | None = None,
) -> Skip:
    """The skip of ``bad``'s row from ``rows``, the window ``read`` as the
    source gave it again; :class:`SkipRefused` when it cannot be done safely.
    ``internal``: sequences of the window's hidden internal entries
    (:func:`hidden_sequences`), which are no holes a row could sit in."""
    mine = [r for r in rows if journalrows.row_sequence(r) == bad.sequence]
    rest = [r for r in rows if journalrows.row_sequence(r) != bad.sequence]
    start = read.start
    if not mine:
        raise SkipRefused(
            f"the source returned no such row in {start}..{read.end} now"
            " (the next read stores the window if it reads whole)"
        )
    if len(mine) > 1:
        raise SkipRefused(
            f"the source returned {len(mine)} such rows in"
            f" {start}..{read.end}, expected one"
        )
    try:
        journalrows.entries_from_rows(mine, journal_id, now, read)
    except EntryError as exc:
        fault = exc
    else:
        raise SkipRefused("it reads whole now; the next read stores it with its window")
    try:
        entries = journalrows.entries_from_rows(rest, journal_id, now, read)
    except EntryError as exc:
        raise SkipRefused(
            f"another row the window would store is unusable too ({exc})"
        ) from exc
    journalrows.check_window(entries, read)
    if bad.sequence is None:
        known = [e[journalrows.SEQUENCE_AT] for e in entries] + sorted(internal or ())
        read = Read(read.receiver, start, null_row_end(known, read), at_head=False)
    row = mine[0]
    row_ts = journal.timestamp(row[0]) if row[0] is not None else None
    last_ts = entries[-1][journalrows.TS_AT] if entries else ""
    entry_ts = row_ts if bad.sequence is not None and row_ts else last_ts
    after = journal.after_window(bookmark, read, read.end, entry_ts)
    keep, hidden = journalrows.select(entries, ibmi.table_library, ibmi.tables)
    cycle, mark = boundary_cycle(row), None
    job = journalrows.row_job(row)
    if cycle is not None:
        # With its job: for a cycle that does not read, the transformer
        # tells the job's own open cycle (the one it ended) from the others.
        mark = journalrows.mark(
            journal_id, after, SKIP_MARK, commit_cycle=cycle, job=job
        )
    elif (own := row_cycle(row)) is not None:
        # Its object, RRN and job: the transformer frees a before image held
        # for it (the UB of a skipped UP), which no UP would ever take.
        obj = journal.text(row[6]) if row[6] is not None else ""
        mark = journalrows.mark(
            journal_id,
            after,
            SKIP_ROW_MARK,
            commit_cycle=own,
            obj=obj.ljust(30) if obj else "",
            rrn=journalrows.whole(row[4]) or 0,
            job=job,
        )
    table, tables = skipped_tables(row, ibmi)
    if bad.sequence is None:
        position = f"{bad.receiver}:? after {bad.after}"
    else:
        position = f"{bad.receiver}:{bad.sequence}"
    reason = (
        f"skipped by operator {user} (command {command_id}):"
        f" {fault.field}={fault.value} expected {fault.expected}"
    )
    payload = {
        "row": journalrows.row_text(row),
        "skipped_by": user,
        "command": command_id,
        "window": f"{start}..{read.end}",
        "bookmark_before": bookmark.position(),
        "bookmark_after": after.position(),
        "checks": tables,
    }
    data = row[17]
    letter = {
        "stage": STAGE,
        "reason": reason[:1000],
        "table": table,
        "position": position,
        "field": fault.field,
        "data": bytes(data) if isinstance(data, bytes | bytearray) else b"",
        "expected": fault.expected,
        "payload": payload,
    }
    return Skip(keep, hidden, after, position, fault.field, tables, letter, mark)


def hidden_sequences(
    shown: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]
) -> set[int]:
    """Sequences of the window's hidden internal entries.

    ``shown`` is the window read with ``INCLUDE_INTERNAL`` first, ``rows``
    the plain read after it. A sequence in ``shown`` and not in ``rows`` is
    an internal entry's, when it is below the plain read's last: an entry
    journaled between the two reads has a higher sequence than any of
    ``shown``, so it can only be in ``rows``; sequences past the plain
    read's last are left out, so nothing at the head is taken for hidden.
    """
    plain = {n for n in map(journalrows.row_sequence, rows) if n is not None}
    if not plain:
        return set()
    last = max(plain)
    found = {n for n in map(journalrows.row_sequence, shown) if n is not None}
    return {n for n in found - plain if n < last}


def null_row_end(known: Sequence[int], read: Read) -> int:
    """Where the bookmark goes once a row without a sequence is dropped.

    ``known`` are the sequences of the window's other rows (``read`` is the
    window). Those rows are kept only when they run on from the bookmark
    with at most one sequence missing: that one is the dropped row's place,
    or with none missing its place is after the last. More than one missing
    means the dropped row could sit in any of them, so another entry lost at
    the source could hide behind it: refused. Behind the head the window's
    end is settled (:func:`appliance.journal.after_window`); at the head the
    bookmark takes the last sequence that came back, or the window's end
    when the dropped row can only be that one; with more than one place
    after the last sequence at the head, refused (later entries settle it).
    """
    before = read.start - 1
    last = max(known, default=before)
    missing = sorted(set(range(before + 1, last + 1)).difference(known))
    if len(missing) > 1:
        shown = ", ".join(map(str, missing[:10]))
        more = "" if len(missing) <= 10 else f" (+{len(missing) - 10} more)"
        raise SkipRefused(
            f"sequences {shown}{more} are missing between {before + 1} and {last}:"
            " the row without a sequence could be any of them, so an entry lost"
            " at the source could hide behind it"
        )
    if not read.at_head:
        return read.end
    if missing or read.end == last + 1:
        return last if missing else read.end
    raise SkipRefused(
        f"at the journal head the row without a sequence follows {last} but"
        f" could be any of {last + 1}..{read.end}; ask again once later entries"
        " are journaled"
    )


def boundary_cycle(row: Sequence[Any]) -> int | None:
    """The commit cycle a skipped row may have ended, or None.

    A commit boundary (code C), or a row whose code is unknown and that has
    neither an object nor a row change's type, may have been the end of a
    cycle: the transformer would hold that cycle's changes for
    ever, and the guardian, taking held keys as in flight, would never
    repair them. The skip stores a ``SKIP_MARK`` there with the row's cycle
    (0 when it does not read: every open cycle is cut, as after a data
    gap); the transformer parks what the cycle held, and the checks the skip
    queued (every relayed table) set those rows from the source.
    """
    code = journal.text(row[2]) if row[2] is not None else ""
    if code not in ("C", ""):
        return None
    kind = journal.text(row[3]) if row[3] is not None else ""
    obj = journal.text(row[6]) if row[6] is not None else ""
    if not code and (obj or (kind and kind not in ENDS)):
        return None  # a row change or another entry whose code reads NULL
    cycle = journalrows.whole(row[5])
    if cycle is None:
        return 0  # the cycle does not read: unknown
    if cycle > 0:
        return cycle
    # Cycle 0 is "none": an entry outside commitment control, no boundary;
    # on a C entry (which always has one) it says nothing: unknown.
    return 0 if code == "C" else None


def row_cycle(row: Sequence[Any]) -> int | None:
    """The commit cycle of a skipped row change, or None (none, or unknown).

    Its cycle may still be open at the source when the skip's checks read
    the table: the skip stores a ``SKIP_ROW_MARK`` with the cycle, and the
    transformer queues the checks again when the cycle ends (CM or RB).
    """
    cycle = journalrows.whole(row[5])
    return cycle if cycle is not None and cycle > 0 else None


def skipped_tables(row: Sequence[Any], ibmi: IbmiSection) -> tuple[str, list[str]]:
    """(the row's table or '', tables to check) of a skipped journal row.

    A row change of a known relayed table: that table. A row without its
    object or code, or a commit boundary (the cycle's changes it would
    release are unknown here): every relayed table, as after a data gap.
    A journal-level entry or another table's: none.
    """
    relayed = sorted({t.strip().upper() for t in ibmi.tables})
    code = journal.text(row[2]) if row[2] is not None else ""
    obj = journal.text(row[6]) if row[6] is not None else ""
    table, library = obj[0:10].strip(), obj[10:20].strip()
    if code == "C" or (not obj and code in ("", *journal.OBJECT_CODES)):
        return table, relayed
    if code in journal.OBJECT_CODES or not code:
        ours = library == ibmi.table_library.strip().upper()
        return table, [table] if ours and table in relayed else []
    return table, []


def write(conn: sqlite3.Connection, skip: Skip) -> int:
    """Inside the transaction that stores ``skip.entries``, after them: the
    mark of a skipped commit boundary, the row parked, counted, the checks
    queued, the alarm cleared. The dead letter's id."""
    if skip.mark is not None:
        conn.execute(journalrows.INSERT_ENTRY, skip.mark)
    letter = store.park(conn, **skip.letter)
    store.bump(conn, SKIPPED)
    for table in skip.tables:
        origin = f"miner skipped_entry {skip.position} {table}"
        checks.queue(conn, table, "skipped_entry", origin)
    conn.execute("DELETE FROM meta WHERE key = ?", (BAD_ENTRY_KEY,))
    return letter


def answer(named: str, skip: Skip, letter: int) -> str:
    """The command's answer to the operator."""
    return (
        f"skipped {named}: dead letter {letter}, {len(skip.entries)} other entries"
        f" stored, bookmark {skip.after.position()}, guardian checks"
        f" {', '.join(skip.tables) or 'none'}"
    )
