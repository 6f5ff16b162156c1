"""``held_changes`` as one transformer batch transaction sees it.

Why it exists: a UB and its UP, or a whole C SC .. C CM cycle, usually lie
in one batch, so each held row used to be encoded, inserted, selected,
deleted and decoded again inside the same transaction, for nothing
(docs/profiles.md, "Session 2026-12-05": 164 -> 128 us per change).

Most keys looked up are new (the before slot of each UB, each cycle's open
marker): the keys the table holds are read once per batch, a few index
seeks for the few keys of open cycles and waiting before images, so a new
key costs no SELECT. Past ``KEYS_READ_MAX`` keys that list is not kept and
every key is read on its own, as before.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from appliance.netting import canonical

# Most distinct keys read into the list of the table's keys (one seek each).
KEYS_READ_MAX = 1000
# The table's distinct keys, by skipping along the primary key's index.
_DISTINCT_KEYS = """
WITH RECURSIVE keys (cycle_key) AS (
    SELECT (SELECT min(cycle_key) FROM held_changes)
    UNION ALL
    SELECT (SELECT min(cycle_key) FROM held_changes WHERE cycle_key > keys.cycle_key)
    FROM keys WHERE keys.cycle_key IS NOT NULL
)
SELECT cycle_key FROM keys WHERE cycle_key IS NOT NULL LIMIT ?
"""


class HeldRows:
    """``held_changes`` as one batch transaction sees it, written back at its end.

    A key's rows are read from the table once (at its first lookup), writes
    and deletes stay in memory as the Python values themselves, and
    :meth:`write_back` puts the net difference into the table (``canonical``
    only for what is written) before the transaction commits. The table then
    holds exactly what the row-by-row statements would have left.

    One instance serves one transaction: after a rollback it is dropped (the
    leg makes a new one per step). SQL that reads ``held_changes`` other than
    by key must call :meth:`write_back` first; it also empties the cache.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # cycle_key -> raw_id -> value: the rows the key has now. Complete for
        # the keys in _loaded; otherwise only the rows put since (appends
        # need no read of the table).
        self._rows: dict[str, dict[int, Any]] = {}
        # cycle_key -> raw_id -> value: what the table holds, as far as read.
        # A row unchanged since it was read is the same object in both.
        self._stored: dict[str, dict[int, Any]] = {}
        self._loaded: set[str] = set()
        # The keys the table holds (None: not read yet, or too many to keep).
        self._keys: set[str] | None = None
        self._keys_read = False

    def first_id(self, key: str) -> int | None:
        """The lowest raw id held under ``key`` (an open cycle's marker)."""
        rows = self._load(key)
        return min(rows) if rows else None

    def take(self, key: str) -> list[tuple[int, Any]]:
        """Delete the rows of ``key``; return them (raw id, value) in raw id order."""
        rows = self._load(key)
        self._rows[key] = {}
        return sorted(rows.items(), key=lambda item: item[0])

    def put(self, key: str, raw_id: int, value: Any) -> None:
        """Insert a row; (key, raw id) must be new, as for the table's INSERT."""
        rows = self._rows.setdefault(key, {})
        if raw_id in rows:
            raise sqlite3.IntegrityError(
                "UNIQUE constraint failed: held_changes.cycle_key, held_changes.raw_id"
            )
        rows[raw_id] = value

    def write_back(self) -> None:
        """Write what changed into the table (same transaction); then forget all."""
        gone: list[tuple[str, int]] = []
        new: list[tuple[str, int, str]] = []
        for key, rows in self._rows.items():
            stored = self._stored.get(key, {})
            gone.extend(
                (key, raw_id)
                for raw_id, value in stored.items()
                if rows.get(raw_id, _ABSENT) is not value
            )
            new.extend(
                (key, raw_id, canonical(value))
                for raw_id, value in rows.items()
                if stored.get(raw_id, _ABSENT) is not value
            )
        self._conn.executemany(
            "DELETE FROM held_changes WHERE cycle_key = ? AND raw_id = ?", gone
        )
        self._conn.executemany(
            "INSERT INTO held_changes (cycle_key, raw_id, change) VALUES (?, ?, ?)",
            new,
        )
        self._rows.clear()
        self._stored.clear()
        self._loaded.clear()
        self._keys, self._keys_read = None, False

    def _load(self, key: str) -> dict[int, Any]:
        """All rows of ``key``: the table's (read once) merged with those put."""
        rows = self._rows.setdefault(key, {})
        if key in self._loaded:
            return rows
        stored = self._stored.setdefault(key, {})
        if not self._may_hold(key):
            self._loaded.add(key)
            return rows
        for raw_id, change in self._conn.execute(
            "SELECT raw_id, change FROM held_changes WHERE cycle_key = ?", (key,)
        ):
            if raw_id in rows:  # put before this read: the INSERT would fail
                raise sqlite3.IntegrityError(
                    "UNIQUE constraint failed:"
                    " held_changes.cycle_key, held_changes.raw_id"
                )
            rows[raw_id] = stored[raw_id] = json.loads(change)
        self._loaded.add(key)
        return rows

    def _may_hold(self, key: str) -> bool:
        """False when the table surely holds no row of ``key``."""
        if not self._keys_read:
            self._keys_read = True
            found = self._conn.execute(_DISTINCT_KEYS, (KEYS_READ_MAX + 1,))
            keys = {str(row[0]) for row in found}
            self._keys = keys if len(keys) <= KEYS_READ_MAX else None
        return self._keys is None or key in self._keys


_ABSENT = object()
