"""Relative record number -> primary key, per relayed table.

A table journaled with ``IMAGES(*AFTER)`` may write a DL whose image is empty:
the entry names the slot (``COUNT_OR_RRN``) but not the row. The transformer
keeps, for each relayed table, which key sits at which RRN, so such a delete
can still name its row.

Invariants:

- The map lives in the pipeline database (table ``rrn_keys``) and is written
  in the transaction that marks the entry done, so it is exactly as old as the
  last processed entry, across restarts.
- It follows the journal in entry order, commit cycles or not: RRNs are
  physical, and a rollback's compensations (PX, UR, DR) move them back.
  PT PX UP UR set ``rrn -> key of the after image``; DL DR with an image
  remove the slot; a DL without an image takes the slot's key.
- RGZPFM (F RG) renumbers every slot: the map is replaced by the table's
  current (RRN, key) pairs read from the source. CLRPFM (F CR) empties it.
- An RRN the map does not know is never guessed: the caller parks the entry.

The map holds the key only, not the last image: a delete made from it
carries ``before = null`` and the hub keeps the last image it holds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal

from appliance.errors import DecodeError
from appliance.layouts import Column, Layout

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rrn_keys (
    table_name TEXT NOT NULL,
    rrn INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (table_name, rrn)
) WITHOUT ROWID
"""

Key = dict[str, Any]
Dialect = Literal["ibmi", "emulator"]


def _text(key: Key) -> str:
    return json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class RrnMap:
    """The ``rrn_keys`` table; every write joins the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(SCHEMA)

    def put(self, table: str, rrn: int, key: Key) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO rrn_keys (table_name, rrn, key) VALUES (?, ?, ?)",
            (table, rrn, _text(key)),
        )

    def drop(self, table: str, rrn: int) -> None:
        self.conn.execute(
            "DELETE FROM rrn_keys WHERE table_name = ? AND rrn = ?", (table, rrn)
        )

    def take(self, table: str, rrn: int) -> Key | None:
        """The key at ``rrn``, removed from the map; None when unknown."""
        found = self.conn.execute(
            "DELETE FROM rrn_keys WHERE table_name = ? AND rrn = ? RETURNING key",
            (table, rrn),
        ).fetchone()
        if found is None:
            return None
        key: Key = json.loads(found[0])
        return key

    def clear(self, table: str) -> int:
        return self.conn.execute(
            "DELETE FROM rrn_keys WHERE table_name = ?", (table,)
        ).rowcount

    def replace(
        self, table: str, pairs: Iterable[tuple[int, Key]], *, position: str = ""
    ) -> int:
        """Forget the table's slots and store ``pairs``; how many were stored."""
        self.clear(table)
        rows = [(table, rrn, _text(key)) for rrn, key in pairs]
        self.conn.executemany(
            "INSERT OR REPLACE INTO rrn_keys (table_name, rrn, key) VALUES (?, ?, ?)",
            rows,
        )
        logger.info(
            "rrn map re-read stage=transformer table=%s position=%s count=%d",
            table,
            position,
            len(rows),
        )
        return len(rows)


def unknown_rrn(library: str, table: str, rrn: int) -> DecodeError:
    """Why an image-less DL of an RRN the map does not know is parked."""
    return DecodeError(
        f"delete of RRN {rrn} in {table} without image and no known key",
        table=f"{library}/{table}",
        expected="an image of the row at that RRN since the last RGZPFM or CLRPFM",
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


def key_value(column: Column, value: Any) -> Any:
    """An ODBC value of a key column spelled as contracts §2 spells it."""
    if value is None:
        return None
    kind = column.data_type
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex().upper()
    if kind in ("CHAR", "GRAPHIC"):
        return str(value).rstrip(" ")
    if kind in ("DECIMAL", "NUMERIC") or (
        kind in ("SMALLINT", "INTEGER", "BIGINT") and column.scale
    ):
        exact = Decimal(value).quantize(Decimal(1).scaleb(-(column.scale or 0)))
        return f"{abs(exact) if exact == 0 else exact:f}"
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return int(value)
    if kind == "DATE" and isinstance(value, dt.date):
        return value.isoformat()[:10]
    if kind == "TIME" and isinstance(value, dt.time):
        return value.strftime("%H:%M:%S")
    if kind == "TIMESTMP" and isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    return value if isinstance(value, int | float) else str(value)


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
        values = (key_value(c, v) for c, v in zip(columns, found[1:], strict=True))
        pairs.append((rrn, dict(zip(layout.keys, values, strict=True))))
    return pairs
