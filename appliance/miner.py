"""The miner leg: IBM i journal -> ``raw_entries``, one bounded window per step.

Responsibilities: walk the journal's receiver chain, read one receiver and one
sequence window at a time through ODBC (:mod:`appliance.journal` builds the
query and decides what to read), store the entries with the bookmark, and
publish the journal head.

Invariants:

- Entries and the bookmark that covers them are written in ONE SQLite
  transaction, so after a crash the miner resumes exactly after the last
  stored entry: nothing lost, nothing stored twice.
- The bookmark never moves back. A bookmarked receiver that is gone or was
  re-created, or a successor that vanished unread, is a data gap: the leg
  records it (counter ``miner.data_gaps``, heartbeat state ``data_gap``, an
  ERROR log) and raises :class:`~appliance.errors.DataGapError` on every step
  until an operator acts. It never restarts silently from the oldest receiver.
- Any other source failure (network, CPF7054 range, a receiver deleted between
  two calls) drops the connection and retries with a bounded exponential
  backoff; gaps are only ever decided from a fresh receiver list.
- Leaving a finished receiver needs the same finish seen on two refreshes one
  poll apart, so a stale LAST_SEQUENCE_NUMBER right after CHGJRN (jhc #83)
  cannot make the miner skip the receiver's tail.
- When the transformer lags (more than 50 windows of unprocessed entries),
  the miner stops reading until it catches up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyodbc

from appliance import journal, source, store
from appliance.config import BoxSettings, IbmiSection
from appliance.errors import DataGapError, SourceError
from appliance.journal import Bookmark, Gap, Move, Read, Receiver, Wait

logger = logging.getLogger(__name__)

BACKLOG_WINDOWS = 50
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_MOVES_PER_STEP = 16
QUERY_TIMEOUT_S = 120

_ENTRY_COLUMNS = (
    "journal, receiver_library, receiver_name, sequence, code, entry_type,"
    " entry_ts, commit_cycle, object, object_type, rrn, job, program, user_name,"
    " indicator_flag, null_map, data, mined_at"
)
_INSERT_ENTRY = (
    f"INSERT INTO raw_entries ({_ENTRY_COLUMNS}) VALUES (:journal,"
    " :receiver_library, :receiver_name, :sequence, :code, :entry_type,"
    " :entry_ts, :commit_cycle, :object, :object_type, :rrn, :job, :program,"
    " :user_name, :indicator_flag, :null_map, :data, :mined_at)"
)
_SAVE_BOOKMARK = (
    "INSERT INTO bookmark (journal, receiver_library, receiver_name, sequence,"
    " processed, entry_ts, attach_ts, first_sequence, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (journal) DO UPDATE SET"
    " receiver_library = excluded.receiver_library,"
    " receiver_name = excluded.receiver_name, sequence = excluded.sequence,"
    " processed = excluded.processed, entry_ts = excluded.entry_ts,"
    " attach_ts = excluded.attach_ts, first_sequence = excluded.first_sequence,"
    " updated_at = excluded.updated_at"
)
_SAVE_HEAD = (
    "INSERT INTO journal_head (journal, receiver_library, receiver_name, sequence,"
    " read_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (journal) DO UPDATE SET"
    " receiver_library = excluded.receiver_library,"
    " receiver_name = excluded.receiver_name, sequence = excluded.sequence,"
    " read_at = excluded.read_at"
)

ConnectSource = Callable[[IbmiSection], Any]


class MinerLeg:
    """Reads the journal into ``raw_entries`` (the :class:`~appliance.daemon.Leg`)."""

    name = "miner"

    def __init__(
        self,
        settings: BoxSettings,
        conn: sqlite3.Connection,
        connect_source: ConnectSource = source.connect,
        *,
        own_store: bool = False,
    ) -> None:
        self.settings = settings
        self.ibmi = settings.ibmi
        self.conn = conn
        self.journal = f"{self.ibmi.journal_library}/{self.ibmi.journal_name}"
        self._connect = connect_source
        self._own_store = own_store
        self._source: Any = None
        self._sql = journal.window_sql(self.ibmi.dialect)
        self._receivers: list[Receiver] = []
        self._refreshed_at = float("-inf")
        self._stale = True
        self._read_at = 0.0
        self._bookmark: Bookmark | None = None
        self._pending_move: tuple[journal.Key, int | None, journal.Key] | None = None
        self._attempt = 0
        self._retry_at = 0.0
        self._throttled = False
        self._gap: DataGapError | None = None

    # -- Leg protocol ----------------------------------------------------------

    def setup(self) -> None:
        """Load the bookmark and open the source (a failure is retried in step)."""
        self._bookmark = load_bookmark(self.conn, self.journal)
        where = self._bookmark.position() if self._bookmark else "none"
        logger.info("miner starting position=%s journal=%s", where, self.journal)
        try:
            self._ensure_source()
        except SourceError as exc:
            self._failed(exc)

    def step(self) -> bool:
        """Read one window; True when the bookmark advanced (entries stored or not)."""
        if self._gap is not None:
            raise self._gap
        if time.monotonic() < self._retry_at or self._backlogged():
            return False
        try:
            worked = self._work()
        except DataGapError:
            raise
        except SourceError as exc:
            self._failed(exc)
            return False
        self._attempt = 0
        return worked

    def close(self) -> None:
        self._drop_source()
        if self._own_store:
            self.conn.close()

    def status(self) -> str:
        if self._gap is not None:
            return f"data gap: {self._gap}"[:200]
        head = journal.attached(self._receivers)
        bookmark = self._bookmark
        return "receiver={} seq={} head={}".format(
            bookmark.receiver_name if bookmark else "-",
            bookmark.sequence if bookmark else "-",
            head.last_seq if head and head.last_seq is not None else "-",
        )

    # -- one step --------------------------------------------------------------

    def _work(self) -> bool:
        src = self._ensure_source()
        fresh = False
        if (
            self._stale
            or time.monotonic() - self._refreshed_at >= self.ibmi.poll_interval_s
        ):
            self._refresh(src)
            fresh = True
        for _ in range(MAX_MOVES_PER_STEP):
            action = journal.plan(self._bookmark, self._receivers, self.ibmi.window)
            if isinstance(action, Read):
                return self._read(src, action)
            if not fresh:
                # Decide moves, waits and gaps only on a fresh receiver list.
                self._refresh(src)
                fresh = True
                continue
            if isinstance(action, Gap):
                self._record_gap(action)
            if isinstance(action, Wait):
                logger.debug("miner waiting reason=%s", action.reason)
                self._save_head_alone()
                return False
            assert isinstance(action, Move)
            if not self._confirmed(action):
                self._save_head_alone()
                return False
            self._enter(action)
        return False

    def _refresh(self, src: Any) -> None:
        rows = self._query(
            src,
            journal.RECEIVERS_SQL,
            (self.ibmi.journal_library, self.ibmi.journal_name),
            "reading receivers",
        )
        self._receivers = [journal.receiver_from_row(r) for r in rows]
        self._refreshed_at = time.monotonic()
        self._read_at = time.time()
        self._stale = False

    def _confirmed(self, move: Move) -> bool:
        """A move out of a receiver must be seen on two refreshes, one poll apart."""
        if move.source is None:
            return True
        seen = (move.source.key, move.source.last_seq, move.target.key)
        if self._pending_move == seen:
            self._pending_move = None
            return True
        self._pending_move = seen
        self._stale = True
        return False

    def _enter(self, move: Move) -> None:
        bookmark = journal.entered(move, self._bookmark)
        with store.transaction(self.conn):
            save_bookmark(self.conn, self.journal, bookmark)
            self._save_head()
        self._bookmark = bookmark
        logger.info(
            "receiver entered position=%s reason=%s", bookmark.position(), move.reason
        )

    def _read(self, src: Any, read: Read) -> bool:
        bookmark = self._bookmark
        assert bookmark is not None
        params = journal.window_params(
            self.ibmi.journal_library, self.ibmi.journal_name, read
        )
        rows = self._query(src, self._sql, params, "reading journal")
        entries = [journal.entry_from_row(row, self.journal) for row in rows]
        check_window(entries, read)
        keep = [
            e
            for e in entries
            if journal.wanted(e, self.ibmi.table_library, self.ibmi.tables)
        ]
        last_seen = entries[-1]["sequence"] if entries else None
        last_ts = entries[-1]["entry_ts"] if entries else ""
        after = journal.after_window(bookmark, read, last_seen, last_ts)
        self._store(keep, after)
        self._bookmark = after
        self._pending_move = None
        if read.end == read.receiver.last_seq:
            self._stale = True
        return after != bookmark

    def _store(self, entries: list[dict[str, Any]], after: Bookmark) -> None:
        with store.transaction(self.conn):
            if entries:
                self.conn.executemany(_INSERT_ENTRY, entries)
                store.bump(self.conn, "miner.entries", len(entries))
            store.bump(self.conn, "miner.windows")
            save_bookmark(self.conn, self.journal, after)
            self._save_head()

    # -- head, backlog, failures -----------------------------------------------

    def _save_head(self) -> None:
        head = journal.attached(self._receivers)
        if head is None or head.last_seq is None:
            return
        self.conn.execute(
            _SAVE_HEAD,
            (self.journal, head.library, head.name, head.last_seq, self._read_at),
        )

    def _save_head_alone(self) -> None:
        with store.transaction(self.conn):
            self._save_head()

    def _backlogged(self) -> bool:
        limit = BACKLOG_WINDOWS * self.ibmi.window
        row = self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM raw_entries WHERE state = 0 LIMIT ?)",
            (limit + 1,),
        ).fetchone()
        backlogged = int(row[0]) > limit
        if backlogged and not self._throttled:
            logger.warning(
                "miner paused, transformer behind stage=miner count=%d", limit
            )
        elif not backlogged and self._throttled:
            logger.info("miner resumed stage=miner")
        self._throttled = backlogged
        return backlogged

    def _failed(self, exc: SourceError) -> None:
        self._drop_source()
        self._stale = True
        self._attempt += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._attempt - 1))
        self._retry_at = time.monotonic() + delay
        logger.warning(
            "source failed, will retry stage=miner attempt=%d delay_s=%.1f error=%s",
            self._attempt,
            delay,
            exc,
        )

    def _record_gap(self, gap: Gap) -> None:
        where = self._bookmark.position() if self._bookmark else "none"
        error = DataGapError(
            f"data gap at position={where} receiver={gap.receiver}: {gap.reason}",
            cpf=gap.cpf,
        )
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.data_gaps")
        self._gap = error
        store.heartbeat(self.conn, self.name, os.getpid(), "data_gap", self.status())
        logger.error(
            "data gap, entries lost at the source stage=miner position=%s"
            " receiver=%s reason=%s",
            where,
            gap.receiver,
            gap.reason,
        )
        raise error

    # -- ODBC ------------------------------------------------------------------

    def _ensure_source(self) -> Any:
        if self._source is None:
            conn = self._connect(self.ibmi)
            try:
                conn.timeout = QUERY_TIMEOUT_S
            except (AttributeError, pyodbc.Error):
                logger.debug("query timeout not supported by the driver")
            self._source = conn
        return self._source

    def _drop_source(self) -> None:
        conn, self._source = self._source, None
        if conn is None:
            return
        try:
            conn.close()
        except pyodbc.Error:
            logger.debug("closing a broken source connection failed")

    def _query(
        self, src: Any, sql: str, params: Sequence[Any], doing: str
    ) -> list[Any]:
        try:
            cursor = src.cursor()
            try:
                cursor.execute(sql, *params)
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except pyodbc.Error as exc:
            raise source.translate(exc, doing) from exc


def check_window(entries: Sequence[dict[str, Any]], read: Read) -> None:
    """Refuse a window the source got wrong: wrong receiver, order or range."""
    previous = read.start - 1
    for entry in entries:
        seq = entry["sequence"]
        if entry["receiver_name"] != read.receiver.name:
            raise SourceError(
                f"entry from receiver {entry['receiver_name']!r},"
                f" expected {read.receiver.name!r} at sequence {seq}"
            )
        if not previous < seq <= read.end:
            raise SourceError(
                f"entry sequence {seq} outside window {read.start}..{read.end}"
                f" or out of order (after {previous})"
            )
        previous = seq


def load_bookmark(conn: sqlite3.Connection, journal_id: str) -> Bookmark | None:
    """The stored bookmark of ``journal_id`` ('LIB/NAME'), or None."""
    row = conn.execute(
        "SELECT receiver_library, receiver_name, sequence, processed, entry_ts,"
        " attach_ts, first_sequence FROM bookmark WHERE journal = ?",
        (journal_id,),
    ).fetchone()
    if row is None:
        return None
    return Bookmark(
        receiver_library=row[0],
        receiver_name=row[1],
        sequence=int(row[2]),
        processed=bool(row[3]),
        entry_ts=row[4],
        attach_ts=row[5],
        first_sequence=int(row[6]),
    )


def save_bookmark(
    conn: sqlite3.Connection, journal_id: str, bookmark: Bookmark
) -> None:
    """Upsert the bookmark (inside the caller's transaction)."""
    conn.execute(
        _SAVE_BOOKMARK,
        (
            journal_id,
            bookmark.receiver_library,
            bookmark.receiver_name,
            bookmark.sequence,
            int(bookmark.processed),
            bookmark.entry_ts,
            bookmark.attach_ts,
            bookmark.first_sequence,
            time.time(),
        ),
    )


def build(settings: BoxSettings) -> MinerLeg:
    """The miner on the configured pipeline database and source."""
    conn = store.connect(settings.pipeline.db_path)
    return MinerLeg(settings, conn, own_store=True)
