"""Relative record number -> primary key, per relayed table.

A table journaled with ``IMAGES(*AFTER)`` may write a DL whose image is empty:
the entry names the slot (``COUNT_OR_RRN``) but not the row. The transformer
keeps, for each relayed table, which key sits at which RRN, so such a delete
can still name its row.

Invariants:

- The map lives in the pipeline database (table ``rrn_keys``) and is written
  in the transaction that marks the entry done, so it is exactly as old as the
  last processed entry, across restarts. Within that transaction the slots
  set or freed wait in memory, only the last state of each (table, RRN), and
  :meth:`RrnMap.flush` writes them before the COMMIT (and before any read of
  ``rrn_keys``): the table then holds what one statement per entry would
  have left, for one ``executemany`` per batch.
- It follows the journal in entry order, commit cycles or not: RRNs are
  physical, and a rollback's compensations (PX, UR, DR) move them back.
  PT PX UP UR set ``rrn -> key of the after image``; DL DR with an image
  remove the slot; a DL without an image takes the slot's key.
- RGZPFM (F RG) renumbers every slot: the map is replaced by the table's
  current (RRN, key) pairs read from the source. CLRPFM (F CR) empties it.
- An RRN the map does not know is never guessed: the caller parks the entry.
- The pairs are read when the transformer reaches the F RG, so they already
  show the changes journaled between the F RG and the read. The journal head
  read right after the pairs closes that *window* (``rrn_windows``); a slot
  known only from the read (``rrn_read``, until an entry sets or frees it) is
  uncertain for an image-less DL inside the window: its row may have been
  deleted there and the slot refilled before the read, so the pair names the
  newer row. :meth:`RrnMap.uncertain` says so and the caller parks the DL
  instead of deleting the wrong key. The window closes at the first entry
  seen past it.

Which DL is inside the window, worked through (window head QSQJRN0004:120):

    QSQJRN0004:118 DL rrn 3   same receiver, 118 <= 120       -> inside
    QSQJRN0003:900 DL rrn 3   older receiver: nothing of QSQJRN0004
                              stored between the F RG and it  -> inside
    QSQJRN0005:2   DL rrn 3   QSQJRN0004 entries came before   -> past, closed

The map holds the key only, not the last image: a delete made from it
carries ``before = null`` and the hub keeps the last image it holds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.errors import DecodeError
from appliance.layouts import Layout
from appliance.odbcvalues import json_value

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rrn_keys (
    table_name TEXT NOT NULL,
    rrn INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (table_name, rrn)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rrn_read (
    table_name TEXT NOT NULL,
    rrn INTEGER NOT NULL,
    PRIMARY KEY (table_name, rrn)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rrn_windows (
    table_name TEXT PRIMARY KEY,
    rg_raw_id INTEGER NOT NULL,
    rg_position TEXT NOT NULL,
    receiver_library TEXT NOT NULL,
    receiver_name TEXT NOT NULL,
    sequence INTEGER NOT NULL
)
"""

Key = dict[str, Any]
Dialect = Literal["ibmi", "emulator"]


@dataclass(frozen=True)
class Head:
    """A journal position: the head read right after the RRN pairs."""

    receiver_library: str
    receiver_name: str
    sequence: int


@dataclass(frozen=True)
class Window:
    """From an F RG (raw id, position) to the head read after its pairs."""

    rg_raw_id: int
    rg_position: str
    head: Head


# The stored spelling of a key (json.dumps with these options), built once.
_KEY_ENCODER = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":")
)


def _text(key: Key) -> str:
    return _KEY_ENCODER.encode(key)


class RrnMap:
    """The ``rrn_keys`` table; every write joins the caller's transaction.

    :meth:`put` and :meth:`drop` are kept in memory until :meth:`flush`,
    which the caller runs before its COMMIT; after a rollback it calls
    :meth:`forget` instead. The other methods flush first, so what they read
    is what the statements would have left.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        for statement in SCHEMA.split(";"):
            conn.execute(statement)
        # (table, rrn) -> key, or None for a freed slot: the last write (its
        # text is made at the flush, once per slot).
        self._pending: dict[tuple[str, int], Key | None] = {}
        # Tables with rows in rrn_read (None: not read in this transaction).
        # Nearly always empty, so a settled slot costs no statement.
        self._read_tables: set[str] | None = None

    def put(self, table: str, rrn: int, key: Key) -> None:
        self._pending[(table, rrn)] = key
        self._settled(table, rrn)

    def drop(self, table: str, rrn: int) -> None:
        self._pending[(table, rrn)] = None
        self._settled(table, rrn)

    def flush(self) -> None:
        """Write the slots set or freed since the last flush (same transaction)."""
        if not self._pending:
            return
        pending = self._pending.items()
        self.conn.executemany(
            "INSERT OR REPLACE INTO rrn_keys (table_name, rrn, key) VALUES (?, ?, ?)",
            [
                (table, rrn, _text(key))
                for (table, rrn), key in pending
                if key is not None
            ],
        )
        self.conn.executemany(
            "DELETE FROM rrn_keys WHERE table_name = ? AND rrn = ?",
            [slot for slot, key in pending if key is None],
        )
        self._pending.clear()

    def forget(self) -> None:
        """At a new transaction, or after a rollback: drop what is unwritten."""
        self._pending.clear()
        self._read_tables = None

    def knows(self, table: str, rrn: int) -> bool:
        """Whether a key is mapped at ``rrn`` (reading only)."""
        if (table, rrn) in self._pending:
            return self._pending[(table, rrn)] is not None
        found = self.conn.execute(
            "SELECT 1 FROM rrn_keys WHERE table_name = ? AND rrn = ?", (table, rrn)
        ).fetchone()
        return found is not None

    def take(self, table: str, rrn: int) -> Key | None:
        """The key at ``rrn``, removed from the map; None when unknown."""
        self.flush()
        found = self.conn.execute(
            "DELETE FROM rrn_keys WHERE table_name = ? AND rrn = ? RETURNING key",
            (table, rrn),
        ).fetchone()
        self._settled(table, rrn)
        if found is None:
            return None
        key: Key = json.loads(found[0])
        return key

    def clear(self, table: str) -> int:
        self.flush()
        self._close(table)
        return self.conn.execute(
            "DELETE FROM rrn_keys WHERE table_name = ?", (table,)
        ).rowcount

    def replace(
        self,
        table: str,
        pairs: Iterable[tuple[int, Key]],
        *,
        position: str = "",
        window: Window | None = None,
    ) -> int:
        """Forget the table's slots and store ``pairs``; how many were stored.

        ``window``: the F RG and the head read right after the pairs; until
        the transformer is past it, the slots read are uncertain for an
        image-less DL (see the module docstring).
        """
        self.clear(table)
        rows = [(table, rrn, _text(key)) for rrn, key in pairs]
        self.conn.executemany(
            "INSERT OR REPLACE INTO rrn_keys (table_name, rrn, key) VALUES (?, ?, ?)",
            rows,
        )
        if window is not None:
            self._open(table, window, [row[1] for row in rows])
        logger.info(
            "rrn map re-read stage=transformer table=%s position=%s count=%d",
            table,
            position,
            len(rows),
        )
        return len(rows)

    def window(self, table: str) -> Window | None:
        """The open read window of ``table``, if any."""
        found = self.conn.execute(
            "SELECT rg_raw_id, rg_position, receiver_library, receiver_name,"
            " sequence FROM rrn_windows WHERE table_name = ?",
            (table,),
        ).fetchone()
        if found is None:
            return None
        head = Head(str(found[2]), str(found[3]), int(found[4]))
        return Window(int(found[0]), str(found[1]), head)

    def uncertain(self, table: str, rrn: int, entry: Mapping[str, Any]) -> bool:
        """True when an image-less DL ``entry`` at ``rrn`` cannot trust the map.

        That is: the DL is inside the table's open window and its slot is
        known only from the read, or not known at all (its row may have gone
        before the read). A DL past the window closes it.
        """
        window = self.window(table)
        if window is None:
            return False
        if not self._inside(window, entry):
            self._close(table)
            return False
        self.flush()
        read = self.conn.execute(
            "SELECT 1 FROM rrn_read WHERE table_name = ? AND rrn = ?", (table, rrn)
        ).fetchone()
        known = self.conn.execute(
            "SELECT 1 FROM rrn_keys WHERE table_name = ? AND rrn = ?", (table, rrn)
        ).fetchone()
        return read is not None or known is None

    def _inside(self, window: Window, entry: Mapping[str, Any]) -> bool:
        head = window.head
        if (entry["receiver_library"], entry["receiver_name"]) == (
            head.receiver_library,
            head.receiver_name,
        ):
            return int(entry["sequence"]) <= head.sequence
        # Another receiver: past the window only if the head's receiver was
        # mined before this entry (entries are stored in chain order).
        later = self.conn.execute(
            "SELECT 1 FROM raw_entries WHERE id > ? AND id < ?"
            " AND receiver_library = ? AND receiver_name = ? LIMIT 1",
            (window.rg_raw_id, entry["id"], head.receiver_library, head.receiver_name),
        ).fetchone()
        return later is None

    def _open(self, table: str, window: Window, rrns: Sequence[int]) -> None:
        head = window.head
        self.conn.execute(
            "INSERT OR REPLACE INTO rrn_windows (table_name, rg_raw_id, rg_position,"
            " receiver_library, receiver_name, sequence) VALUES (?, ?, ?, ?, ?, ?)",
            (
                table,
                window.rg_raw_id,
                window.rg_position,
                head.receiver_library,
                head.receiver_name,
                head.sequence,
            ),
        )
        self.conn.executemany(
            "INSERT OR IGNORE INTO rrn_read (table_name, rrn) VALUES (?, ?)",
            [(table, rrn) for rrn in rrns],
        )
        if rrns:
            self._reading().add(table)

    def _settled(self, table: str, rrn: int) -> None:
        """An entry set or freed the slot: the journal knows it now."""
        if table in self._reading():
            self.conn.execute(
                "DELETE FROM rrn_read WHERE table_name = ? AND rrn = ?", (table, rrn)
            )

    def _reading(self) -> set[str]:
        """The tables with slots known only from a read (``rrn_read``)."""
        if self._read_tables is None:
            self._read_tables = {
                str(found[0])
                for found in self.conn.execute(
                    "SELECT DISTINCT table_name FROM rrn_read"
                )
            }
        return self._read_tables

    def _close(self, table: str) -> None:
        self.conn.execute("DELETE FROM rrn_read WHERE table_name = ?", (table,))
        self.conn.execute("DELETE FROM rrn_windows WHERE table_name = ?", (table,))
        self._reading().discard(table)


def unknown_rrn(library: str, table: str, rrn: int) -> DecodeError:
    """Why an image-less DL of an RRN the map does not know is parked."""
    return DecodeError(
        f"delete of RRN {rrn} in {table} without image and no known key",
        table=f"{library}/{table}",
        expected="an image of the row at that RRN since the last RGZPFM or CLRPFM",
    )


def uncertain_rrn(library: str, table: str, rrn: int, window: Window) -> DecodeError:
    """Why an image-less DL between an F RG and the map's read is parked."""
    head = window.head
    return DecodeError(
        f"delete of RRN {rrn} in {table} without image between RGZPFM and the"
        " read of the renumbered slots: the slot may hold a newer row",
        table=f"{library}/{table}",
        expected=(
            "a guardian check of the table (requested); the map is certain after"
            f" {head.receiver_library}/{head.receiver_name}:{head.sequence}"
        ),
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def snapshot_sql(
    dialect: Dialect, library: str, table: str, keys: Sequence[str]
) -> str:
    """``SELECT RRN(T), <keys> FROM <library>.<table> AS T`` for ``dialect``.

    The one place the dialects differ: PostgreSQL has no RRN(); the emulator
    keeps the slot in the data table's ``_rrn`` column, and folds names to
    lower case.
    """

    def fold(name: str) -> str:
        return _quoted(name if dialect == "ibmi" else name.lower())

    rrn = "RRN(T)" if dialect == "ibmi" else "T._rrn"
    names = ", ".join([rrn, *(fold(key) for key in keys)])
    return f"SELECT {names} FROM {fold(library)}.{fold(table)} AS T"


def read_pairs(
    cursor: Any, dialect: Dialect, library: str, layout: Layout
) -> list[tuple[int, Key]]:
    """The table's current (RRN, key) pairs, read with ``cursor``."""
    columns = [layout.column(name) for name in layout.keys]
    cursor.execute(snapshot_sql(dialect, library, layout.table, layout.keys))
    pairs: list[tuple[int, Key]] = []
    for found in cursor.fetchall():
        rrn = int(found[0])
        if not columns:
            pairs.append((rrn, {"RRN": rrn}))
            continue
        values = [json_value(c, v) for c, v in zip(columns, found[1:], strict=True)]
        if any(v is None for v in values):
            # A key column is never NULL on the source: a value the decoder
            # refuses (U+0000 in text). The key is unknown, so its slot stays
            # empty and an image-less delete there is parked.
            continue
        pairs.append((rrn, dict(zip(layout.keys, values, strict=True))))
    return pairs
