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
  records it (counter ``miner.data_gaps``, ``meta`` row ``miner.data_gap``,
  an ERROR log). With ``ibmi.on_data_gap = "stop"`` it then raises
  :class:`~appliance.errors.DataGapError` on every step (heartbeat state
  ``data_gap``) until an operator acts. With ``"resend"`` it moves the
  bookmark to the oldest entry still available (always past the gap, so
  nothing is read twice) and, in that same transaction, queues one guardian
  ``check`` in mode repair per relayed table (:mod:`appliance.checks`), which
  repairs what the lost entries would have changed, and stores a gap mark
  (code ``*`` type ``DG``) for the transformer. It never restarts
  silently from the oldest receiver.
- Any other source failure (network, CPF7054 range, a receiver deleted between
  two calls) drops the connection and retries with a bounded exponential
  backoff; gaps are only ever decided from a fresh receiver list.
- A window holding a row without a value the relay needs (a NULL sequence,
  code, type, entry time, receiver; a NULL object, RRN or commit cycle on an
  entry that needs one; :func:`appliance.journalrows.check_rows`) is stored in
  none of its entries: the bookmark stays, the window is read again with the
  same backoff, and until it goes through the ``meta`` row
  ``miner.alarm.bad_entry``, the status line and one ERROR log name the
  receiver, sequence, window, column, raw value and expectation (counter
  ``miner.unusable_windows``).
- Only an operator's ``skip_entry`` command passes over such an entry
  (:mod:`appliance.entryskip` decides, the leg reads and writes), and
  only the one the alarm names (receiver and sequence, or the row without a
  sequence after the last one stored); the leg reads the window again and,
  in one transaction, stores the other entries, parks the row whole as a
  dead letter, queues the guardian check(s), moves the bookmark and clears
  the alarm (counter ``miner.skipped_entries``, a WARNING with who asked).
- Leaving a finished receiver needs the same finish seen on two refreshes one
  poll apart, then one bounded read past the reported end that comes back
  empty, so a stale LAST_SEQUENCE_NUMBER after CHGJRN (jhc #83), even one
  that stays stale for several polls, cannot make the miner skip the tail.
- The start-up pre-flight (:mod:`appliance.preflight`) reports journal
  settings that put data at risk; every 2 s the head and the miner's lag in
  entries and seconds go to ``meta`` row ``miner.lag``.
- When the transformer lags (more than 50 windows of unprocessed entries),
  the miner stops reading until it catches up.
- Waiting read (``ibmi.wait_s`` > 0, 0 = polling): when the receiver list
  shows the bookmark at the head of the attached receiver, the miner does
  not pause but calls DISPLAY_JOURNAL with ``EOF_DELAY => wait_s`` from the
  bookmark (at-head semantics: it keeps only what came back). That call
  fetches at most one window, always closes its cursor and is cancelled
  after ``wait_s + WAIT_GRACE_S``, or ``WAIT_SETTLE_S`` after its latest
  row (:func:`appliance.source.fetch_bounded`), so a real IBM i cursor
  that never ends cannot hold the leg; rows fetched before a cancel are
  kept (journalrows.check_window still checks them), and after a cancel that brought
  nothing the next head read is a plain one. A waiting call that came back
  empty counts as the pause (``step`` returns True); one that came back
  empty too early (the source ignored EOF_DELAY) does not, so the IBM i is
  never asked more often than ``poll_interval_s`` allows. Moves, gaps and
  waits on other grounds are still decided on a fresh receiver list.
- ``mined_at`` is one time per window, taken when its rows came back.
- Counters for benchmarks: ``miner.calls`` (every ODBC round trip),
  ``miner.windows`` (DISPLAY_JOURNAL windows stored), ``miner.rows`` (rows
  those windows returned, before filtering), ``miner.waits`` (calls with
  EOF_DELAY) and ``miner.waits_cancelled``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pyodbc

from appliance import (
    catalog,
    checks,
    entryskip,
    journal,
    journalrows,
    outbox,
    preflight,
    source,
    store,
)
from appliance.config import BoxSettings, IbmiSection
from appliance.doorbell import Doorbell
from appliance.errors import DataGapError, SourceError
from appliance.journal import Bookmark, Gap, Move, Read, Receiver, Wait

logger = logging.getLogger(__name__)

BACKLOG_WINDOWS = 50
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_MOVES_PER_STEP = 16
QUERY_TIMEOUT_S = 120
LAG_EVERY_S = 2.0
LAG_KEY = "miner.lag"
DENIED_KEY = "miner.alarm.source_denied"
BAD_ENTRY_KEY = entryskip.BAD_ENTRY_KEY
GAP_KEY = "miner.data_gap"
# A waiting call is cancelled this long after its EOF_DELAY should have ended,
# or this long after its latest row once rows flow (a streaming cursor).
WAIT_GRACE_S = 5.0
WAIT_SETTLE_S = 0.1
# Waiting calls start at least this far apart: when entries flow, each call
# returns at once with what is there, and without a gap a busy store would
# see ~90 calls/s at 200 changes/s. 0.1 s caps it at 10/s for <= 0.1 s more
# latency.
WAIT_MIN_GAP_S = 0.1
# A skip asked while the miner was down waits this long after its start for
# the alarm's window to be read again, then is refused as any other.
SKIP_WAIT_S = 60.0

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
        # Rings the next leg after a step that wrote work for it (a hint:
        # the database stays the hand-over).
        self.doorbell = Doorbell(
            settings.pipeline.db_path.parent, self.name, ("transformer",)
        )
        self.ibmi = settings.ibmi
        self.conn = conn
        self.journal = f"{self.ibmi.journal_library}/{self.ibmi.journal_name}"
        self._connect = connect_source
        self._own_store = own_store
        self._source: Any = None
        self._sql = journal.window_sql(self.ibmi.dialect)
        self._internal_sql = journal.window_sql(
            self.ibmi.dialect, include_internal=True
        )
        self._wait_sql = journal.window_sql(
            self.ibmi.dialect, eof_delay=self.ibmi.wait_s
        )
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
        self._checked = not self.ibmi.preflight
        self._lag_at = float("-inf")
        self._zone = ZoneInfo(settings.store.timezone)
        self._recovered = ""
        self._checks = checks.Flusher(conn, self.name)
        self._tally: Counter[str] = Counter()
        self._plain_next = False
        self._cancel_logged = False
        self._last_wait = 0.0
        self._denied = False
        self._started = time.monotonic()
        self._bad: journalrows.EntryError | None = None
        self._bad_alarm = False

    # -- Leg protocol ----------------------------------------------------------

    def setup(self) -> None:
        """Load the bookmark and open the source (a failure is retried in step)."""
        checks.ensure_schema(self.conn)
        self._bookmark = load_bookmark(self.conn, self.journal)
        # An alarm raised before a restart is cleared by the next good call.
        self._denied = (
            self.conn.execute(
                "SELECT 1 FROM meta WHERE key = ?", (DENIED_KEY,)
            ).fetchone()
            is not None
        )
        self._bad_alarm = (
            self.conn.execute(
                "SELECT 1 FROM meta WHERE key = ?", (BAD_ENTRY_KEY,)
            ).fetchone()
            is not None
        )
        where = self._bookmark.position() if self._bookmark else "none"
        logger.info("miner starting position=%s journal=%s", where, self.journal)
        try:
            self._ensure_source()
        except SourceError as exc:
            self._failed(exc)

    def step(self) -> bool:
        """Read one window; True when the bookmark advanced (entries stored or not).

        Also True after a waiting read that came back empty once it waited
        (``ibmi.wait_s`` > 0): the call was the pause, the next step follows.
        """
        if self._gap is not None:
            raise self._gap
        if time.monotonic() < self._retry_at or self._backlogged():
            return False
        self._checks.flush()
        if outbox.budget_hold(self.conn, self.settings.pipeline):
            return False
        try:
            worked = self._work()
        except DataGapError:
            raise
        except journalrows.EntryError as exc:
            self._unusable(exc)
            self._failed(exc)
            return False
        except SourceError as exc:
            self._failed(exc)
            return False
        self._attempt = 0
        if self._denied:
            self._let_in()
        if worked and (self._bad is not None or self._bad_alarm):
            self._usable_again()
        return worked

    def close(self) -> None:
        self._drop_source()
        if self._own_store:
            self.conn.close()

    def handle_command(self, kind: str, args: dict[str, Any]) -> str:
        """Carry out an operator's ``rewind`` or ``skip_entry`` (see
        :mod:`appliance.commands`)."""
        from appliance import commands

        if kind == "skip_entry":
            return self._skip(commands.skip_entry_args(args), args)
        if kind != "rewind":
            raise commands.CommandError(f"miner carries out no {kind!r}")
        self._bookmark = commands.rewind(
            self.conn,
            self.journal,
            self._bookmark,
            str(args["receiver"]),
            int(args["sequence"]),
        )
        self._stale = True
        return f"rewound to {self._bookmark.position()}"

    def status(self) -> str:
        if self._gap is not None:
            return f"data gap: {self._gap}"[:200]
        if self._bad is not None:
            bad = self._bad
            seq = "?" if bad.sequence is None else bad.sequence
            return (
                f"unusable entry {bad.receiver}:{seq} (stored up to {bad.after}),"
                f" retrying: {bad.field}={bad.value} expected {bad.expected}"
            )[:200]
        head = journal.attached(self._receivers)
        bookmark = self._bookmark
        text = "receiver={} seq={} head={}".format(
            bookmark.receiver_name if bookmark else "-",
            bookmark.sequence if bookmark else "-",
            head.last_seq if head and head.last_seq is not None else "-",
        )
        return f"{text} {self._recovered}".strip()[:200]

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
            self._after_refresh(src)
        for _ in range(MAX_MOVES_PER_STEP):
            action = journal.plan(self._bookmark, self._receivers, self.ibmi.window)
            if isinstance(action, Read):
                return self._read(src, action)
            head = self._head_read() if isinstance(action, Wait) else None
            if head is not None:
                return self._waited(src, head)
            if not fresh:
                # Decide moves, waits and gaps only on a fresh receiver list.
                self._refresh(src)
                fresh = True
                continue
            if isinstance(action, Gap) and self.ibmi.on_data_gap == "resend":
                return self._resent(action)
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
            if self._tail_found(src, action):
                return True
            self._enter(action)
        return False

    def _tail_found(self, src: Any, move: Move) -> bool:
        """Probe past the receiver's reported end before leaving it.

        A LAST_SEQUENCE_NUMBER that stays stale for more than one poll would
        pass the two-refresh rule; one bounded read after the reported end
        (at-head semantics: the bookmark takes only what came back) finds
        such a tail and stores it instead of skipping it.
        """
        if move.source is None or self._bookmark is None:
            return False
        start = self._bookmark.next_sequence
        probe = Read(move.source, start, start + self.ibmi.window - 1, at_head=True)
        if not self._read(src, probe):
            return False
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.tails_found")
        logger.warning(
            "entries past the reported receiver end stage=miner position=%s",
            self._bookmark.position() if self._bookmark else "-",
        )
        self._stale = True
        return True

    def _head_read(self) -> Read | None:
        """The waiting read at the head, when ``wait_s`` > 0 and we are there.

        At the head = the bookmark is in the attached receiver of the list
        and at or past its LAST_SEQUENCE_NUMBER (past it when the list is
        older than the entries read since).
        """
        bookmark = self._bookmark
        head = journal.attached(self._receivers)
        if (
            self.ibmi.wait_s <= 0
            or bookmark is None
            or head is None
            or head.key != bookmark.key
            or head.attach_ts is None
            or head.last_seq is None
        ):
            return None
        start = bookmark.next_sequence
        if start <= head.last_seq:
            return None
        return Read(head, start, start + self.ibmi.window - 1, at_head=True)

    def _waited(self, src: Any, read: Read) -> bool:
        """One waiting read; True when it stored entries or was the pause."""
        gap = WAIT_MIN_GAP_S - (time.monotonic() - self._last_wait)
        if gap > 0:
            time.sleep(gap)
        started = self._last_wait = time.monotonic()
        if self._read(src, read, wait=True):
            return True
        # Empty: it was the pause only if the call really waited.
        return time.monotonic() - started >= self.ibmi.wait_s / 2

    def _fetch_waiting(self, src: Any, params: Sequence[Any]) -> list[Any]:
        """Rows of one head read with EOF_DELAY (plain after a cancel)."""
        plain = self._plain_next
        sql = self._sql if plain else self._wait_sql
        self._tally["miner.calls"] += 1
        self._tally["miner.waits"] += 0 if plain else 1
        rows, cancelled = source.fetch_bounded(
            src,
            sql,
            params,
            "waiting for journal entries",
            max_rows=self.ibmi.window,
            deadline_s=self.ibmi.wait_s + WAIT_GRACE_S,
            settle_s=WAIT_SETTLE_S,
        )
        # A cancel after rows is the end of a stream; one before any row is
        # the deadline: read plainly next (it ends at end-of-journal).
        self._plain_next = cancelled and not rows
        if self._plain_next:
            self._tally["miner.waits_cancelled"] += 1
            log = logger.debug if self._cancel_logged else logger.warning
            self._cancel_logged = True
            log(
                "waiting read cancelled at its deadline, next read plain"
                " stage=miner delay_s=%.1f position=%s",
                self.ibmi.wait_s + WAIT_GRACE_S,
                self._bookmark.position() if self._bookmark else "-",
            )
        return rows

    def _flush_tally(self) -> None:
        """Add the round trips counted so far (inside a transaction)."""
        for name, count in self._tally.items():
            if count:
                store.bump(self.conn, name, count)
        self._tally.clear()

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

    def _after_refresh(self, src: Any) -> None:
        """Pre-flight once per start; the head and lag every LAG_EVERY_S."""
        if not self._checked:
            found = preflight.run(
                lambda sql, params: self._described(src, sql, params),
                self.ibmi.journal_library,
                self.ibmi.journal_name,
                self.ibmi.table_library,
                self.ibmi.tables,
            )
            preflight.record(self.conn, self.journal, found)
            self._checked = True
        if time.monotonic() - self._lag_at >= LAG_EVERY_S:
            self._lag_at = time.monotonic()
            self._publish_lag(src)

    def _publish_lag(self, src: Any) -> None:
        """Write ``meta`` row ``miner.lag``: head, lag in entries and seconds."""
        entries = journal.lag_entries(self._bookmark, self._receivers)
        read = journal.head_read(self._receivers)
        if entries is None or read is None or self._bookmark is None:
            return
        seconds: float | None = 0.0
        if entries > 0:
            rows = self._query(
                src,
                self._sql,
                journal.window_params(
                    self.ibmi.journal_library, self.ibmi.journal_name, read
                ),
                "reading the head entry",
            )
            head_ts = journal.timestamp(rows[-1][0]) if rows else None
            head_s = journal.utc_seconds(head_ts or "", self._zone)
            mark_s = journal.utc_seconds(self._bookmark.entry_ts, self._zone)
            seconds = None if head_s is None or mark_s is None else head_s - mark_s
            seconds = None if seconds is None else round(max(0.0, seconds), 3)
        lag = journal.Lag(
            head=f"{read.receiver.library}/{read.receiver.name}:{read.end}",
            entries=entries,
            seconds=seconds,
        )
        value = {**lag.__dict__, "bookmark": self._bookmark.position()}
        value["at"] = round(time.time(), 3)
        with store.transaction(self.conn):
            _put_meta(self.conn, LAG_KEY, value)
            self._save_head()

    def _described(
        self, src: Any, sql: str, params: Sequence[Any]
    ) -> tuple[list[str], list[Any]]:
        """Rows of ``sql`` with their lower-case column names."""
        self._tally["miner.calls"] += 1
        try:
            cursor = src.cursor()
            try:
                cursor.execute(sql, *params)
                names = [str(d[0]).lower() for d in cursor.description or ()]
                return names, list(cursor.fetchall())
            finally:
                cursor.close()
        except pyodbc.Error as exc:
            raise source.translate(exc, "checking journal settings") from exc

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
            self._flush_tally()
            save_bookmark(self.conn, self.journal, bookmark)
            self._save_head()
        self._bookmark = bookmark
        logger.info(
            "receiver entered position=%s reason=%s", bookmark.position(), move.reason
        )

    def _read(self, src: Any, read: Read, *, wait: bool = False) -> bool:
        bookmark = self._bookmark
        assert bookmark is not None
        params = journal.window_params(
            self.ibmi.journal_library, self.ibmi.journal_name, read
        )
        if wait:
            rows = self._fetch_waiting(src, params)
        else:
            rows = self._query(src, self._sql, params, "reading journal")
        self._tally["miner.rows"] += len(rows)
        entries = journalrows.entries_from_rows(rows, self.journal, time.time(), read)
        journalrows.check_window(entries, read)
        keep, hidden = journalrows.select(
            entries, self.ibmi.table_library, self.ibmi.tables
        )
        last_seen = entries[-1][journalrows.SEQUENCE_AT] if entries else None
        last_ts = entries[-1][journalrows.TS_AT] if entries else ""
        after = journal.after_window(bookmark, read, last_seen, last_ts)
        self._store(keep, after, hidden)
        self._bookmark = after
        self._pending_move = None
        if read.end == read.receiver.last_seq:
            self._stale = True
        return after != bookmark

    def _store(
        self,
        entries: list[tuple[Any, ...]],
        after: Bookmark,
        hidden: int = 0,
        also: Callable[[], None] | None = None,
    ) -> None:
        with store.transaction(self.conn):
            if entries:
                self.conn.executemany(journalrows.INSERT_ENTRY, entries)
                store.bump(self.conn, "miner.entries", len(entries))
            if also is not None:
                also()  # after the entries: a mark it stores follows them
            if hidden:
                store.bump(self.conn, "miner.internal_skipped", hidden)
            store.bump(self.conn, "miner.windows")
            self._flush_tally()
            save_bookmark(self.conn, self.journal, after)
            self._save_head()

    # -- an operator's skip ----------------------------------------------------

    def _skip(self, args: dict[str, Any], given: dict[str, Any]) -> str:
        """``skip_entry``: pass over exactly the entry the alarm names
        (:mod:`appliance.entryskip` decides; the window is read again here,
        so the decision rests on what the source says now)."""
        from appliance import commands

        if (
            self._bad is None
            and self._bad_alarm
            and time.monotonic() - self._started < SKIP_WAIT_S
        ):
            # The alarm shown is from before a restart: the first read of its
            # window raises it again (or clears it) within seconds.
            raise commands.CommandLater("the alarm's window is not read again yet")
        named, bookmark, bad = entryskip.check(
            self._bad, self._bad_alarm, self._bookmark, args
        )
        found = commands.requested(self.conn, self.name, "skip_entry", given)
        command_id, user = found if found is not None else (0, "?")
        try:
            read, rows, hidden = self._reread(bookmark, bad)
            skip = entryskip.plan(
                bookmark,
                bad,
                read,
                rows,
                journal_id=self.journal,
                ibmi=self.ibmi,
                user=user,
                command_id=command_id,
                now=time.time(),
                internal=hidden,
            )
        except entryskip.SkipRefused as exc:
            raise commands.CommandError(f"{named} not skipped: {exc}") from exc
        except SourceError as exc:
            self._drop_source()
            self._stale = True
            raise commands.CommandError(
                f"{named} not skipped: {str(exc)[:300]}"
            ) from exc
        letter: list[int] = []
        self._store(
            skip.entries,
            skip.after,
            skip.hidden,
            also=lambda: letter.append(entryskip.write(self.conn, skip)),
        )
        self._bookmark = skip.after
        self._pending_move = None
        self._stale = True
        self._bad, self._bad_alarm = None, False
        self._attempt, self._retry_at = 0, 0.0
        self._checks.flush(force=True)
        logger.warning(
            "journal entry skipped by an operator, row parked stage=miner"
            " position=%s user=%s command=%d field=%s count=%d table=%s",
            skip.position,
            user,
            command_id,
            skip.field,
            len(skip.entries),
            ",".join(skip.tables) or "-",
        )
        return entryskip.answer(named, skip, letter[0])

    def _reread(
        self, bookmark: Bookmark, bad: journalrows.EntryError
    ) -> tuple[Read, list[Any], set[int]]:
        """The alarm's window as the source gives it now (cut at a sequence),
        and for a row without a sequence the sequences of the window's hidden
        internal entries (:func:`entryskip.hidden_sequences`)."""
        src = self._ensure_source()
        self._refresh(src)
        rcv = journal.index(self._receivers).get(bookmark.key)
        if rcv is None:
            raise entryskip.SkipRefused(f"receiver {bad.receiver} is no longer listed")
        start = bookmark.next_sequence
        read = journal.plan(bookmark, self._receivers, self.ibmi.window)
        if not (
            isinstance(read, Read) and read.receiver == rcv and read.start == start
        ):
            # The alarm came from a waiting read or a probe past the end.
            read = Read(rcv, start, start + self.ibmi.window - 1, at_head=True)
        read = entryskip.cut(bad, read)
        params = journal.window_params(
            self.ibmi.journal_library, self.ibmi.journal_name, read
        )
        shown: list[Any] | None = None
        if bad.sequence is None:
            # Read first, so an entry journaled meanwhile is in the plain read.
            try:
                shown = self._query(
                    src, self._internal_sql, params, "reading internal entries"
                )
            except SourceError as exc:  # a release without INCLUDE_INTERNAL
                logger.info(
                    "internal entries not shown, holes stay unknown stage=miner"
                    " error=%s",
                    exc,
                )
        rows = self._query(src, self._sql, params, "reading the window again")
        hidden = set() if shown is None else entryskip.hidden_sequences(shown, rows)
        return read, rows, hidden

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
            self._flush_tally()
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
        if catalog.denied(exc):
            self._refused(exc)
        logger.warning(
            "source failed, will retry stage=miner attempt=%d delay_s=%.1f error=%s",
            self._attempt,
            delay,
            exc,
        )

    def _refused(self, exc: SourceError) -> None:
        """The IBM i refuses the relay's user: retried, but an alarm until it clears.

        A wrong or expired password does not mend by waiting: ERROR once, the
        ``meta`` row ``miner.alarm.source_denied`` (the web page's alarm),
        counter ``miner.source_denied`` at every attempt.
        """
        first = not self._denied
        self._denied = True
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.source_denied")
            _put_meta(
                self.conn,
                DENIED_KEY,
                {"error": str(exc)[:500], "attempt": self._attempt},
            )
        if first:
            logger.error(
                "source refused the relay's user, retrying until it is let in"
                " stage=miner attempt=%d error=%s",
                self._attempt,
                exc,
            )

    def _unusable(self, exc: journalrows.EntryError) -> None:
        """A window holds a row without a value the relay needs: nothing stored.

        The bookmark stays before the window, so no entry is skipped: the
        window is read again after the backoff (a transient fault mends by
        itself), and until it goes through the technician sees the ``meta``
        row ``miner.alarm.bad_entry`` (receiver, the entry's sequence, the
        last sequence stored, field, raw value, expectation), the status line, counter
        ``miner.unusable_windows`` (every refused read) and one ERROR log per
        distinct fault.
        """
        first = self._bad is None or str(self._bad) != str(exc)
        self._bad, self._bad_alarm = exc, True
        where = self._bookmark.position() if self._bookmark else "none"
        value = {
            "position": where,
            "receiver": exc.receiver,
            "sequence": exc.sequence,
            "last_stored": exc.after,
            "window_end": exc.end,
            "field": exc.field,
            "value": exc.value,
            "expected": exc.expected,
            "attempt": self._attempt + 1,
            "at": round(time.time(), 3),
        }
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.unusable_windows")
            _put_meta(self.conn, BAD_ENTRY_KEY, value)
        if first:
            logger.error(
                "journal entry unusable, window not stored, will retry"
                " stage=miner position=%s error=%s",
                where,
                exc,
            )

    def _usable_again(self) -> None:
        """The window went through: the alarm clears."""
        self._bad, self._bad_alarm = None, False
        with store.transaction(self.conn):
            self.conn.execute("DELETE FROM meta WHERE key = ?", (BAD_ENTRY_KEY,))
        logger.warning(
            "journal entries usable again stage=miner position=%s",
            self._bookmark.position() if self._bookmark else "-",
        )

    def _let_in(self) -> None:
        """The first good call after a refusal clears the alarm."""
        self._denied = False
        with store.transaction(self.conn):
            self.conn.execute("DELETE FROM meta WHERE key = ?", (DENIED_KEY,))
        logger.warning("source lets the relay's user in again stage=miner")

    def _gap_record(self, gap: Gap) -> tuple[str, dict[str, Any]]:
        """(position, ``meta`` value) of a data gap found at the bookmark."""
        where = self._bookmark.position() if self._bookmark else "none"
        return where, {
            "position": where,
            "receiver": gap.receiver,
            "reason": gap.reason,
            "cpf": gap.cpf,
            "recovery": self.ibmi.on_data_gap,
            "at": round(time.time(), 3),
        }

    def _resent(self, gap: Gap) -> bool:
        """``on_data_gap = "resend"``: resume past the gap, ask for repairs.

        One transaction records the gap, moves the bookmark to the oldest
        available entry and queues a guardian check of every relayed table,
        so the checks are asked for exactly once per gap, even across a crash.
        False (nothing done) when no receiver is settled yet to resume in: the
        gap is then looked at again on the next step.
        """
        move = journal.resume_after_gap(self._bookmark, self._receivers)
        if isinstance(move, Wait):
            logger.debug("data gap, resume point not ready reason=%s", move.reason)
            self._save_head_alone()
            return False
        where, value = self._gap_record(gap)
        bookmark = journal.entered(move, self._bookmark)
        tables = sorted({t.strip().upper() for t in self.ibmi.tables})
        value["resumed_at"] = bookmark.position()
        value["checks"] = tables
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.data_gaps")
            _put_meta(self.conn, GAP_KEY, value)
            for table in tables:
                checks.queue(
                    self.conn, table, "data_gap", f"miner data_gap {where} {table}"
                )
            self.conn.execute(
                journalrows.INSERT_ENTRY, _gap_mark(self.journal, bookmark)
            )
            save_bookmark(self.conn, self.journal, bookmark)
            self._save_head()
        self._bookmark = bookmark
        self._pending_move = None
        self._stale = True
        self._recovered = f"data gap at {where} resent from {bookmark.position()}"
        logger.error(
            "data gap, entries lost at the source stage=%s position=%s receiver=%s"
            " reason=%s",
            self.name,
            where,
            gap.receiver,
            gap.reason,
        )
        logger.warning(
            "data gap recovery: resumed, guardian checks queued stage=%s"
            " position=%s count=%d",
            self.name,
            bookmark.position(),
            len(tables),
        )
        self._checks.flush(force=True)
        return True

    def _record_gap(self, gap: Gap) -> None:
        where, value = self._gap_record(gap)
        error = DataGapError(
            f"data gap at position={where} receiver={gap.receiver}: {gap.reason}",
            cpf=gap.cpf,
        )
        with store.transaction(self.conn):
            store.bump(self.conn, "miner.data_gaps")
            _put_meta(self.conn, GAP_KEY, value)
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
        self._tally["miner.calls"] += 1
        return source.fetch_all(src, sql, params, doing)


def _gap_mark(journal_id: str, resumed: Bookmark) -> tuple[Any, ...]:
    """The raw entry that tells the transformer a data gap was passed over.

    It sits just before the first entry read after the gap (same receiver,
    sequence one less), so the transformer drops what it holds of commit
    cycles whose end was lost (their rows go to the guardian's repair).
    """
    before = dataclasses.replace(resumed, sequence=resumed.sequence - 1)
    return journalrows.mark(journal_id, before, journal.GAP_MARK)


def _put_meta(conn: sqlite3.Connection, key: str, value: dict[str, Any]) -> None:
    store.meta_put(conn, key, json.dumps(value, sort_keys=True))


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
