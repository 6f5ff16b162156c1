"""A leg's computing outside SQLite's write lock, with every write refused.

Every leg writes the one pipeline database, and SQLite lets one writer at a
time in. A leg that spends most of a batch computing (the transformer
decodes each record image of it) holds that lock for the whole batch when it
computes inside its write transaction, and every other leg queues. With a
:class:`ReadPhase` it computes first, reading only, and takes the lock just
for its writes. The phase installs a SQLite authorizer that lets reads
through and refuses any other statement; a batch that turns out to need a
write in the middle (a layout change, a dead letter: rare) is thrown away
and done again the usual way, inside the write transaction.

Invariants:

- While the phase is active no statement of the connection writes: SQLite
  asks the authorizer when it prepares a statement, and installing or
  removing it expires the statements already prepared, so a cached INSERT
  is prepared again and refused too (``tests/test_readphase.py``).
- One way around it: incremental BLOB I/O (``Connection.blobopen``) writes
  without a statement, so the authorizer never sees it; no leg uses it, and
  one that did would have to call :meth:`ReadPhase.need_lock` first.
- :attr:`ReadPhase.wanted_write` is True after any refusal, whatever the
  code that got the refusal's error did with it: the caller decides on the
  flag, not on the exception.
- The phase only reads; whether what it read is still true when the writes
  come is the caller's question (the transformer checks that its entries are
  still new, in the write transaction, and redoes the batch if not).
"""

from __future__ import annotations

import sqlite3
from types import TracebackType

# What a reading statement is made of: SELECT, reading a column, calling a
# function, a recursive common table expression.
_READS = frozenset(
    (
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    )
)


class WriteWanted(Exception):
    """Raised by :meth:`ReadPhase.need_lock`: do this batch under the lock."""


class ReadPhase:
    """``with ReadPhase(conn) as phase:`` reads only; then look at ``wanted_write``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.active = False
        self.wanted_write = False
        self.refused = ""

    def __enter__(self) -> ReadPhase:
        self.wanted_write = False
        self.refused = ""
        self.conn.set_authorizer(self._allow)
        self.active = True
        return self

    def need_lock(self, why: str) -> None:
        """Give up the phase before a step that is not SQL (a catalog read on
        the IBM i): it would only be done again under the lock."""
        if self.active:
            self.wanted_write = True
            self.refused = why
            raise WriteWanted(why)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.active = False
        self.conn.set_authorizer(None)

    def _allow(
        self,
        action: int,
        first: str | None,
        second: str | None,
        database: str | None,
        source: str | None,
    ) -> int:
        if action in _READS:
            return sqlite3.SQLITE_OK
        if not self.wanted_write:
            self.wanted_write = True
            self.refused = f"action {action} on {first or ''}"
        return sqlite3.SQLITE_DENY
