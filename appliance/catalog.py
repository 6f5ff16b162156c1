"""Where the transformer reads the source's catalog: layouts, slots, the head.

One ODBC connection, opened on first use and dropped after any failure so
the next call reconnects; every pyodbc error becomes a
:class:`~appliance.errors.SourceError` (the transformer retries the entry with
backoff). :func:`denied` tells a refusal of the relay's user (a grant is
missing: an operator must act) from a passing failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pyodbc

from appliance import journal, layouts, rrnmap, source
from appliance.config import IbmiSection
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

# The source refused the relay's user (IBM i: SQL0551/CPF2189/CPF9802,
# SQLSTATE 42501; the emulator: PostgreSQL's 42501).
DENIED_MARKS = (
    # no authority to the object (SQL, IBM i)
    "sqlstate=42501",
    "SQL0551",
    "SQL0552",
    "CPF2189",
    "CPF9802",
    # the login itself refused: password wrong, expired, profile disabled
    # (IBM i CPF22E2/E3/E4, the Access client's CWBSYnnnn security codes,
    # SQL's invalid authorization, the emulator's PostgreSQL wording)
    "sqlstate=28000",
    "CPF22E2",
    "CPF22E3",
    "CPF22E4",
    "CWBSY",
    "password authentication failed",
)
_T = TypeVar("_T")


class OdbcCatalog:
    """Reads layouts through ODBC; reconnects on the next call after a failure."""

    def __init__(
        self, ibmi: IbmiSection, connect: Callable[[IbmiSection], Any] = source.connect
    ) -> None:
        self._ibmi = ibmi
        self._connect = connect
        self._conn: Any = None

    def load_layout(self, library: str, table: str) -> layouts.Layout:
        def read(cursor: Any) -> layouts.Layout:
            return layouts.load_layout(cursor, library, table)

        return self._read(read, f"reading layout of {library}/{table}")

    def read_rrn_pairs(
        self, library: str, layout: layouts.Layout
    ) -> list[tuple[int, rrnmap.Key]]:
        """The table's current (RRN, key) pairs (after RGZPFM)."""

        def read(cursor: Any) -> list[tuple[int, rrnmap.Key]]:
            return rrnmap.read_pairs(cursor, self._ibmi.dialect, library, layout)

        return self._read(read, f"reading rrns of {library}/{layout.table}")

    def read_head(self) -> rrnmap.Head | None:
        """The journal head now: the attached receiver and its last sequence."""

        def read(cursor: Any) -> rrnmap.Head | None:
            cursor.execute(
                journal.RECEIVERS_SQL,
                self._ibmi.journal_library,
                self._ibmi.journal_name,
            )
            found = [journal.receiver_from_row(r) for r in cursor.fetchall()]
            head = journal.attached(found)
            if head is None or head.last_seq is None:
                return None
            return rrnmap.Head(head.library, head.name, head.last_seq)

        return self._read(read, "reading the journal head")

    def _read(self, read: Callable[[Any], _T], doing: str) -> _T:
        if self._conn is None:
            self._conn = self._connect(self._ibmi)
        try:
            cursor = self._conn.cursor()
            try:
                return read(cursor)
            finally:
                cursor.close()
        except pyodbc.Error as exc:
            self.close()
            raise source.translate(exc, doing) from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pyodbc.Error:
                logger.debug("closing catalog connection failed", exc_info=True)
            self._conn = None


def denied(failure: SourceError) -> bool:
    """True when the source refused the relay's user (not a passing failure)."""
    text = str(failure)
    return failure.cpf in DENIED_MARKS or any(mark in text for mark in DENIED_MARKS)
