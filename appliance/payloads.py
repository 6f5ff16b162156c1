"""How an outbox payload is stored: deflated against a per-table dictionary.

Each message the enricher makes is JSON of 700-950 bytes in which most
bytes repeat from one message of a table to the next (field names, the
source block, the store and region). The outbox keeps it deflated (zlib
format, 2 KiB window, ``memLevel`` 4, level 6) with a *preset dictionary*:
one earlier message of the same table, kept in ``outbox_dicts``. On the
bench's workload (101,329 messages, 836 B of JSON on average) a payload
takes 146 B.

Stored layout of an outbox row:

- ``dict_id`` NULL: ``payload`` is the JSON text itself (every row written
  before this format, guardian parts, ``resend`` copies, rows written by
  hand);
- ``dict_id`` = n: ``payload`` is a BLOB, the zlib stream of the JSON's UTF-8
  bytes made with ``outbox_dicts.sample`` of row n as preset dictionary.

Invariants:

- A dictionary row is never changed: its id names one byte string for ever
  (AUTOINCREMENT never gives an id twice), so readers cache samples by id.
- A row compressed with a cached sample is inserted only after a check,
  inside the transaction that inserts it, that the dictionary row of that id
  still holds exactly those bytes: a dictionary pruned meanwhile, or one
  whose insert was rolled back, is never referenced. :meth:`Packer.pack`
  checks when it runs in that transaction; the enricher packs before taking
  the write lock (reading only) and checks again once it holds it.
- :func:`appliance.outbox.prune` deletes a dictionary only when no outbox
  row names it and it is not the newest of its table.
- Every reader of ``outbox.payload`` goes through :meth:`Unpacker.value` (or
  :func:`read_text`). The zlib format carries the dictionary's checksum and
  the data's Adler-32 (10 bytes a message), so a corrupt row or a wrong
  dictionary raises :class:`PayloadError` instead of reading as other
  bytes; nothing here skips a row.

A table's dictionary is picked again when it stops fitting: every
``REPICK_WINDOW`` messages of a table the ratio of stored to JSON bytes is
checked, and above ``REPICK_RATIO`` the next message becomes the new
sample. Worked example: a layout change adds columns to PRIX and its
messages now deflate to, say, 45 % of their size instead of 17 %. Within
two windows (at most 512 PRIX messages) a whole window is over 35 %, the
next PRIX message becomes dictionary 9, and its followers deflate well
again. Dictionary 8 stays until the last row naming it is pruned.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import DecodeError

WBITS = 11
"""zlib format with a 2 KiB window: a sample of up to ~1.1 KB stays in reach
of a message of ~900 B (a 512 B window, wbits 9, cannot see it)."""
MEM_LEVEL = 4
"""A hash table of 2,048 entries: memLevel 8 costs more to set up than the
deflate of a message."""
LEVEL = 6
REPICK_WINDOW = 256
REPICK_RATIO = 0.35
"""Stored/JSON bytes above which a table's dictionary is picked again (the
bench's workload sits at 0.17)."""
READER_CACHE = 256


class PayloadError(DecodeError):
    """An outbox payload cannot be read back (corrupt row, missing dictionary)."""

    def placed(self, table: str, position: str) -> str:
        """The description, naming the row (known to the caller, not here)."""
        self.table, self.position = table, position
        return self.describe()


@dataclass
class _Sample:
    """A writer's dictionary of one table and how well it fits lately."""

    id: int
    sample: bytes
    proto: Any  # a zlib compressor primed with the sample, copied per message
    plain: int = 0
    stored: int = 0
    count: int = 0
    repick: bool = False


def _compressor(sample: bytes) -> Any:
    return zlib.compressobj(
        LEVEL, zlib.DEFLATED, WBITS, MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, sample
    )


class Packer:
    """Compresses the payloads of one writing connection (see the module doc)."""

    def __init__(self) -> None:
        self._tables: dict[str, _Sample] = {}

    def pack(
        self, conn: sqlite3.Connection, items: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, int]]:
        """``(table, JSON text)`` pairs -> ``(stored bytes, dict_id)`` pairs.

        It may insert dictionaries: called inside the caller's transaction,
        its rows must be inserted in that same transaction; called while the
        connection may only read (the enricher's read phase), a needed insert
        is refused and the caller checks the dictionaries again under its
        write lock.
        """
        for table in {table for table, _ in items}:
            self._check(conn, table)
        out: list[tuple[bytes, int]] = []
        for table, text in items:
            data = text.encode()
            current = self._tables.get(table)
            if current is None or current.repick:
                current = self._new_sample(conn, table, data)
            packer = current.proto.copy()
            stored = packer.compress(data) + packer.flush()
            out.append((stored, current.id))
            self._note(current, len(data), len(stored))
        return out

    def forget(self) -> None:
        """Drop every cached dictionary (they are checked again on next use)."""
        self._tables.clear()

    def _check(self, conn: sqlite3.Connection, table: str) -> None:
        """Keep the cached sample only if its row still holds those bytes."""
        current = self._tables.get(table)
        if current is not None:
            found = conn.execute(
                "SELECT 1 FROM outbox_dicts WHERE id = ? AND sample = ?",
                (current.id, current.sample),
            ).fetchone()
            if found is not None:
                return
            del self._tables[table]
        row = conn.execute(
            "SELECT id, sample FROM outbox_dicts WHERE table_name = ?"
            " ORDER BY id DESC LIMIT 1",
            (table,),
        ).fetchone()
        if row is not None:
            sample = bytes(row[1])
            self._tables[table] = _Sample(int(row[0]), sample, _compressor(sample))

    def _new_sample(self, conn: sqlite3.Connection, table: str, data: bytes) -> _Sample:
        cur = conn.execute(
            "INSERT INTO outbox_dicts (table_name, sample, created_at)"
            " VALUES (?, ?, ?)",
            (table, data, time.time()),
        )
        current = _Sample(int(cur.lastrowid or 0), data, _compressor(data))
        self._tables[table] = current
        return current

    @staticmethod
    def _note(current: _Sample, plain: int, stored: int) -> None:
        current.plain += plain
        current.stored += stored
        current.count += 1
        if current.count >= REPICK_WINDOW:
            current.repick = current.stored > REPICK_RATIO * current.plain
            current.plain = current.stored = current.count = 0


class Unpacker:
    """Reads payloads back, dictionaries cached by id (they never change)."""

    def __init__(self) -> None:
        self._samples: dict[int, bytes] = {}

    def value(
        self,
        conn: sqlite3.Connection,
        payload: str | bytes,
        dict_id: int | None,
        *,
        table: str = "",
        position: str = "",
    ) -> bytes:
        """The message's JSON as UTF-8 bytes; :class:`PayloadError` if unreadable.

        ``table`` and ``position`` only name the row in the error.
        """
        if dict_id is None:
            return payload.encode() if isinstance(payload, str) else bytes(payload)
        if not isinstance(payload, bytes):
            raise PayloadError(
                "compressed payload stored as text",
                table=table,
                position=position,
                field="payload",
                expected=f"zlib stream with dictionary {dict_id}",
            )
        sample = self._sample(conn, dict_id, table, position)
        reader = zlib.decompressobj(WBITS, zdict=sample)
        try:
            data = reader.decompress(payload) + reader.flush()
        except zlib.error as exc:
            raise self._error(str(exc), payload, dict_id, table, position) from exc
        if not reader.eof or reader.unused_data:
            raise self._error(
                "stream cut or overlong", payload, dict_id, table, position
            )
        return data

    def _sample(
        self, conn: sqlite3.Connection, dict_id: int, table: str, position: str
    ) -> bytes:
        sample = self._samples.get(dict_id)
        if sample is not None:
            return sample
        row = conn.execute(
            "SELECT sample FROM outbox_dicts WHERE id = ?", (dict_id,)
        ).fetchone()
        if row is None:
            raise PayloadError(
                f"dictionary {dict_id} is missing",
                table=table,
                position=position,
                field="dict_id",
                expected="a row of outbox_dicts",
            )
        if len(self._samples) >= READER_CACHE:
            self._samples.clear()
        sample = self._samples[dict_id] = bytes(row[0])
        return sample

    @staticmethod
    def _error(
        why: str, payload: bytes, dict_id: int, table: str, position: str
    ) -> PayloadError:
        return PayloadError(
            f"payload does not inflate: {why[:120]}",
            table=table,
            position=position,
            field="payload",
            data=payload[:256],
            expected=f"zlib stream with dictionary {dict_id}",
        )


def messages(
    conn: sqlite3.Connection,
    where: str = "1",
    params: Sequence[Any] = (),
    order: str = "id",
) -> list[tuple[int, bytes]]:
    """``(outbox id, message JSON)`` of the rows ``where`` selects, by ``order``.

    ``where`` and ``order`` are SQL over the outbox's columns written by the
    caller (never from outside input); a row that cannot be read raises
    :class:`PayloadError`.
    """
    unpacker = Unpacker()
    return [
        (int(oid), unpacker.value(conn, payload, dict_id, table=table))
        for oid, table, payload, dict_id in conn.execute(
            "SELECT id, table_name, payload, dict_id FROM outbox"
            f" WHERE {where} ORDER BY {order}",
            tuple(params),
        )
    ]


def read_text(conn: sqlite3.Connection, payload: str | bytes, dict_id: Any) -> str:
    """The JSON text of one stored payload (a one-off read: nothing cached).

    A caller reading many rows keeps one :class:`Unpacker` instead.
    """
    key = None if dict_id is None else int(dict_id)
    return Unpacker().value(conn, payload, key).decode()
