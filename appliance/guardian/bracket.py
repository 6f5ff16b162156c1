"""What "the same logical point" means for a read (docs/guardian.md §1).

A read of the source is bracketed in the pipeline database:

1. :func:`low_marks`: ``r_low = max(raw_entries.id)`` and ``c_low =
   max(changes.id)`` in ONE read transaction, then the journal head
   (``head_before``) through ODBC.
2. The rows are read with committed-read isolation.
3. ``head_after`` through ODBC; :func:`caught_up` is true once the miner's
   bookmark is past it and the transformer has turned every raw entry mined
   so far into changes (or held them in an open cycle).
4. :func:`changed_keys`, in the transaction that hands the result to the
   enricher: the table's keys in ``changes`` with ``id > c_low`` and in
   ``held_changes`` (open cycles), plus (:func:`rolled_back_keys`) those of
   cycles rolled back after ``r_low`` and (:func:`netted_keys`) those of
   cycles of two images or more committed after it. They are never sent as ``r`` rows.

Every ``r`` row of the read carries ``v_low = version_of(epoch, r_low)``.
Worked example: ``r_low = 41``, ``c_low = 30``; ARTNUM 7 is updated during
the read (raw 44, change 33). The read may have seen either image, so key 7
is dropped (change 33 > 30) and the update, version ...44, reaches the hub on
its own. ARTNUM 8 was updated at raw 40 (change 29): the read saw that image,
the ``r`` row goes with version ...41 >= ...40, and the hub applies it (a tie
or newer), so no row moves backwards.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance import store
from appliance.guardian.digest import canonical_pk
from appliance.guardian.reader import Head
from appliance.miner import load_bookmark


@dataclass(frozen=True)
class Marks:
    """The pipeline positions taken before a read."""

    r_low: int
    c_low: int
    v_low: int


def low_marks(conn: sqlite3.Connection) -> Marks:
    """``r_low``, ``c_low`` and ``v_low`` from one read transaction."""
    conn.execute("BEGIN")
    try:
        r_low = conn.execute("SELECT coalesce(max(id), 0) FROM raw_entries").fetchone()
        c_low = conn.execute("SELECT coalesce(max(id), 0) FROM changes").fetchone()
        epoch = store.epoch(conn)
    finally:
        conn.execute("COMMIT")
    return Marks(int(r_low[0]), int(c_low[0]), store.version_of(epoch, int(r_low[0])))


def caught_up(conn: sqlite3.Connection, journal_id: str, head: Head) -> bool:
    """True when the miner is past ``head`` and the transformer has no backlog.

    Same receiver: the bookmark's next sequence is past the head's. Another
    receiver: it must be a later one (attached after the head's receiver).
    """
    conn.execute("BEGIN")
    try:
        bookmark = load_bookmark(conn, journal_id)
        backlog = conn.execute(
            "SELECT count(*) FROM raw_entries WHERE state = 0"
        ).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    if bookmark is None:
        return head.sequence == 0 and backlog == 0
    if bookmark.receiver_name == head.name and (
        bookmark.receiver_library == head.library
    ):
        passed = bookmark.next_sequence > head.sequence
    else:
        passed = bool(bookmark.attach_ts) and bookmark.attach_ts > head.attach_ts
    return passed and int(backlog) == 0


def changed_keys(conn: sqlite3.Connection, table: str, c_low: int) -> set[str]:
    """Keys (canonical pk) of ``table`` changed after ``c_low`` or held open.

    Call inside the transaction that hands the read's result over.
    """
    keys = {
        str(row[0])
        for row in conn.execute(
            "SELECT key FROM changes WHERE id > ? AND table_name = ? AND op != 'r'",
            (c_low, table),
        )
    }
    for (text,) in conn.execute(
        "SELECT change FROM held_changes WHERE cycle_key LIKE 'cycle:%'"
    ):
        events = json.loads(text)
        if not isinstance(events, list):
            continue
        for event in events:
            if isinstance(event, dict) and event.get("table") == table:
                keys.add(canonical_pk(event["key"]))
    return keys


def cleared_since(conn: sqlite3.Connection, table: str, c_low: int) -> bool:
    """True when ``table`` was cleared (CLRPFM, op ``t``) after ``c_low``.

    Every key changed then: the read is worth nothing and is done again.
    """
    found = conn.execute(
        "SELECT 1 FROM changes WHERE id > ? AND table_name = ? AND op = 't' LIMIT 1",
        (c_low, table),
    ).fetchone()
    return found is not None


def rolled_back_keys(
    conn: sqlite3.Connection,
    r_low: int,
    obj: str,
    key_of: Callable[[bytes, bytes | None], dict[str, Any]],
) -> set[str]:
    """Keys that a commit cycle rolled back after ``r_low`` had touched.

    A cycle open during the read and rolled back before the hand-off leaves
    no change and no held row, yet a reader that does not wait on record
    locks (the emulator's tables are written outside the cycle) may have
    seen its uncommitted images. Its RB entry is after ``r_low``; its record
    entries (any id, from its C SC on) name the keys through their images.
    ``obj`` is the 20-character file and library of the table's OBJECT;
    ``key_of`` decodes an image into the key (DecodeError when it cannot).
    """
    return _cycle_keys(conn, r_low, obj, key_of, end="RB", images=1)


def netted_keys(
    conn: sqlite3.Connection,
    r_low: int,
    obj: str,
    key_of: Callable[[bytes, bytes | None], dict[str, Any]],
) -> set[str]:
    """Keys of cycles committed after ``r_low`` with two images or more.

    Such a cycle may undo what it did to a key (insert then delete, a
    savepoint rollback's compensations, an update and its reverse): netting
    leaves no change for that key, yet a reader that does not wait on record
    locks may have seen a passing image. A cycle of one image of the table
    cannot undo anything; its change is in ``changes`` and costs nothing here.
    """
    return _cycle_keys(conn, r_low, obj, key_of, end="CM", images=2)


def _cycle_keys(
    conn: sqlite3.Connection,
    r_low: int,
    obj: str,
    key_of: Callable[[bytes, bytes | None], dict[str, Any]],
    *,
    end: str,
    images: int,
) -> set[str]:
    keys: set[str] = set()
    ends = conn.execute(
        "SELECT id, journal, commit_cycle FROM raw_entries"
        " WHERE id > ? AND code = 'C' AND entry_type = ?",
        (r_low, end),
    ).fetchall()
    for end_id, journal, cycle in ends:
        # Walked back from the end: the cost is the cycle's span, not the table's.
        opened = conn.execute(
            "SELECT id FROM raw_entries WHERE id < ? AND journal = ?"
            " AND code = 'C' AND entry_type = 'SC'"
            " AND (commit_cycle = ? OR sequence = ?) ORDER BY id DESC LIMIT 1",
            (end_id, journal, cycle, cycle),
        ).fetchone()
        start = 0 if opened is None else int(opened[0])
        found = conn.execute(
            "SELECT data, null_map FROM raw_entries WHERE journal = ?"
            " AND commit_cycle = ? AND code = 'R' AND id > ? AND id < ?"
            " AND substr(object, 1, 20) = ? AND data IS NOT NULL",
            (journal, cycle, start, end_id, obj),
        ).fetchall()
        if len(found) < images:
            continue
        for data, null_map in found:
            keys.add(canonical_pk(key_of(bytes(data), null_map)))
    return keys
