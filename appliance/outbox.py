"""The outbox state machine: what the shipper sends and what the hub confirmed.

Every message the enricher made waits in the SQLite ``outbox`` table until the
hub confirms it, then stays for the replay window. A row walks::

    pending ──produce──> in_flight ──delivery report──> sent ──confirm──> confirmed
       ^                    │  (report failed)           │                   │
       └────────────────────┴── no confirm within the ───┘            pruned after
                                timeout: sent again                  the replay window

Invariants:

- A row leaves the outbox only as ``confirmed`` and older than the replay
  window: nothing unconfirmed is ever pruned.
- ``confirmed`` is final for the state machine (only :func:`replay` moves a
  confirmed row back, on an operator's command).
- A confirmation ``(lane, upto)`` confirms every row of that lane with
  ``lane_seq <= upto``, because the hub applies a lane strictly in order.
- ``sent_at`` is the time of the latest produce; the resend timeout counts
  from there, whatever the delivery report said.
- ``attempts`` counts produce calls, so ``attempts - 1`` is the resends.

Payloads are stored deflated against a per-table dictionary (the layout and
its invariants are in :mod:`appliance.payloads`): rows are written by
:func:`insert` (the enricher, which deflates before taking the write lock,
calls its two halves, :func:`pack` and :func:`insert_packed`) and read back by
:func:`next_batch`, which hands the shipper the exact JSON bytes the enricher
made.

These are plain SQL functions over a connection from :func:`appliance.store.connect`.
Functions that write run inside the caller's :func:`appliance.store.transaction`,
so the shipper can move a whole step in one commit; the web UI calls the
readers directly.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance import payloads, store
from appliance.config import PipelineSection
from appliance.errors import ApplianceError

logger = logging.getLogger(__name__)

STATES = ("pending", "in_flight", "sent", "confirmed")


class DowngradeError(ApplianceError):
    """:func:`downgrade` refused or left rows it could not read."""


# Every state but 'confirmed', as SQL (the CHECK constraint allows no other).
_UNCONFIRMED = "('pending', 'in_flight', 'sent')"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message ready to send: ``value`` is the Kafka value (JSON bytes).

    ``fault`` is set (and ``value`` empty) when the stored payload cannot be
    read back: the error, placed at this row (field, bytes, expectation for
    the dead letter); ``error`` is its one-line description. See
    :func:`next_batch`.
    """

    id: int
    lane: int
    lane_seq: int
    table: str
    value: bytes
    attempts: int
    fault: payloads.PayloadError | None = None

    @property
    def error(self) -> str:
        return "" if self.fault is None else self.fault.describe()


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery report, as collected in memory during ``poll()``.

    ``error`` is empty when the broker acknowledged the message.
    """

    outbox_id: int
    partition: int
    offset: int
    error: str = ""


INSERT_COLUMNS = (
    "id, lane, lane_seq, interest, version, table_name, op, payload,"
    " created_at, mined_at"
)
"""The columns of a row tuple given to :func:`insert`, in order (the payload,
JSON text, at index 7)."""

_PACKERS_KEPT = 8
_packers: dict[int, tuple[sqlite3.Connection, payloads.Packer]] = {}


_INSERT = (
    f"INSERT INTO outbox ({INSERT_COLUMNS}, dict_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def pack(
    conn: sqlite3.Connection,
    packer: payloads.Packer,
    rows: Sequence[Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """Rows in ``INSERT_COLUMNS`` order -> the same, payload deflated and
    ``dict_id`` added, ready for :func:`insert_packed` (see
    :meth:`appliance.payloads.Packer.pack` for the transaction it wants)."""
    if not rows:
        return []
    packed = packer.pack(conn, [(str(r[5]), str(r[7])) for r in rows])
    return [
        (*row[:7], stored, *row[8:10], dict_id)
        for row, (stored, dict_id) in zip(rows, packed, strict=True)
    ]


def insert_packed(conn: sqlite3.Connection, packed: Sequence[Sequence[Any]]) -> None:
    """Insert rows :func:`pack` made (inside the caller's transaction)."""
    conn.executemany(_INSERT, packed)


def insert(
    conn: sqlite3.Connection,
    rows: Sequence[Sequence[Any]],
    packer: payloads.Packer | None = None,
) -> None:
    """Insert outbox rows, payloads compressed (inside the caller's transaction).

    Each row is a tuple in ``INSERT_COLUMNS`` order. Without ``packer``, the
    connection's :class:`appliance.payloads.Packer` is kept between calls
    (its dictionaries are checked against the database at each call, so a
    lost or stale one costs a reload, never a wrong row).
    """
    if not rows:
        return
    if packer is None:
        held = _packers.get(id(conn))
        if held is None or held[0] is not conn:
            if len(_packers) >= _PACKERS_KEPT:
                _packers.clear()
            held = _packers[id(conn)] = (conn, payloads.Packer())
        packer = held[1]
    insert_packed(conn, pack(conn, packer, rows))


def next_batch(
    conn: sqlite3.Connection,
    limit: int,
    skip_lanes: Iterable[int] = (),
    unpacker: payloads.Unpacker | None = None,
) -> list[OutboxRow]:
    """Up to ``limit`` pending rows, lower lanes first, each lane in order.

    Rows of ``skip_lanes`` are left for a later batch. A row whose payload
    cannot be read back comes with ``error`` set, and the rows after it in
    its lane are left out of the batch: the hub applies a lane in order, so
    nothing behind an unreadable row may go before it (the caller holds the
    lane and parks the row, see the shipper). ``unpacker`` caches the
    dictionaries; pass the same one each time.
    """
    if limit <= 0:
        return []
    unpacker = payloads.Unpacker() if unpacker is None else unpacker
    skip = sorted(set(skip_lanes))
    holes = ", ".join("?" * len(skip))
    rows = conn.execute(
        "SELECT id, lane, lane_seq, table_name, payload, dict_id, attempts"
        " FROM outbox WHERE state = 'pending'"
        + (f" AND lane NOT IN ({holes})" if skip else "")
        + " ORDER BY lane, lane_seq LIMIT ?",
        (*skip, limit),
    ).fetchall()
    batch: list[OutboxRow] = []
    stopped: set[int] = set()
    for oid, lane, lane_seq, table, payload, dict_id, attempts in rows:
        if lane in stopped:
            continue
        try:
            value = unpacker.value(conn, payload, dict_id)
        except payloads.PayloadError as exc:
            stopped.add(lane)
            exc.placed(table, _where(oid, lane, lane_seq))
            batch.append(OutboxRow(oid, lane, lane_seq, table, b"", attempts, exc))
            continue
        batch.append(OutboxRow(oid, lane, lane_seq, table, value, attempts))
    return batch


def _where(outbox_id: int, lane: int, lane_seq: int) -> str:
    return f"outbox_id={outbox_id} lane={lane} lane_seq={lane_seq}"


def parked_unreadable(conn: sqlite3.Connection) -> set[int]:
    """Outbox ids of the shipper's dead letters still parked (see the shipper)."""
    ids = set()
    for (where,) in conn.execute(
        "SELECT position FROM dead_letters WHERE stage = 'shipper' AND state = 'parked'"
    ):
        head = str(where).split(" ", 1)[0]
        if head.startswith("outbox_id=") and head[10:].isdigit():
            ids.add(int(head[10:]))
    return ids


def position(row: OutboxRow) -> str:
    """Where a row is, as dead letters name it: ``outbox_id=7 lane=0 lane_seq=3``."""
    return _where(row.id, row.lane, row.lane_seq)


def unconfirmed(conn: sqlite3.Connection) -> int:
    """Rows produced and not yet confirmed (``in_flight`` + ``sent``)."""
    row = conn.execute(
        "SELECT count(*) FROM outbox WHERE state IN ('in_flight', 'sent')"
    ).fetchone()
    return int(row[0])


def mark_in_flight(
    conn: sqlite3.Connection, ids: Iterable[int], now: float | None = None
) -> int:
    """Pending rows just produced become ``in_flight`` (attempts + 1)."""
    now = time.time() if now is None else now
    cur = conn.executemany(
        "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1,"
        " sent_at = ? WHERE id = ? AND state = 'pending'",
        [(now, i) for i in ids],
    )
    return cur.rowcount


def apply_deliveries(
    conn: sqlite3.Connection, reports: Sequence[Delivery]
) -> tuple[int, int]:
    """Write delivery reports; return (acknowledged, failed).

    An acknowledged report moves ``in_flight`` to ``sent`` and records where
    the message landed; a row already confirmed (the hub can be faster than
    the report) keeps its state and only gains the position. A failed report
    puts the row back to ``pending``, together with every later unconfirmed
    row of its lane: the hub applies a lane in order, so those would only wait
    at the hub as a gap until their own timeout.
    """
    ok = [r for r in reports if not r.error]
    failed = [r for r in reports if r.error]
    conn.executemany(
        "UPDATE outbox SET partition = ?, kafka_offset = ?, state = CASE state"
        " WHEN 'in_flight' THEN 'sent' ELSE state END WHERE id = ?",
        [(r.partition, r.offset, r.outbox_id) for r in ok],
    )
    for report in failed:
        conn.execute(
            "UPDATE outbox SET state = 'pending' WHERE state IN ('in_flight', 'sent')"
            " AND lane = (SELECT lane FROM outbox WHERE id = ?)"
            " AND lane_seq >= (SELECT lane_seq FROM outbox WHERE id = ?)",
            (report.outbox_id, report.outbox_id),
        )
    return len(ok), len(failed)


def confirm(
    conn: sqlite3.Connection, lane: int, upto: int, now: float | None = None
) -> int:
    """Apply the hub's confirmation; return how many rows it newly confirmed.

    Worked example: lane 0 holds 39 (sent), 40 (sent), 41 (in_flight, its
    report not yet read) and 42 (pending). ``confirm(lane=0, upto=41)``
    confirms 39, 40 and 41 (returns 3) and leaves 42 alone;
    ``confirmations[0].upto`` becomes 41. A second, older ``upto=40`` (a
    confirmation of a resend, read late) changes nothing and returns 0.
    """
    now = time.time() if now is None else now
    # Through the (state, lane, lane_seq) index: only unconfirmed rows are
    # visited. ``state != 'confirmed'`` took the (lane, lane_seq) index and
    # walked every confirmed row of the lane kept for the replay window, at
    # each confirmation (a cost growing with the window, not the work).
    cur = conn.execute(
        "UPDATE outbox SET state = 'confirmed', confirmed_at = ?"
        f" WHERE state IN {_UNCONFIRMED} AND lane = ? AND lane_seq <= ?",
        (now, lane, upto),
    )
    conn.execute(
        "INSERT INTO confirmations (lane, upto, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (lane) DO UPDATE SET upto = max(upto, excluded.upto),"
        " updated_at = excluded.updated_at",
        (lane, upto, now),
    )
    return cur.rowcount


def requeue_expired_lane(
    conn: sqlite3.Connection,
    lane: int,
    timeout_s: float,
    now: float,
    limit: int | None = None,
) -> int:
    """Rows of ``lane`` unconfirmed ``timeout_s`` after their send go back to pending.

    Lowest ``lane_seq`` first; ``limit`` bounds the rows moved (a probe of the
    lane's head), ``None`` moves every expired row of the lane.
    """
    cur = conn.execute(
        "UPDATE outbox SET state = 'pending' WHERE id IN ("
        " SELECT id FROM outbox WHERE lane = ? AND state IN ('in_flight', 'sent')"
        " AND sent_at < ? ORDER BY lane_seq LIMIT ?)",
        (lane, now - timeout_s, -1 if limit is None else limit),
    )
    return cur.rowcount


def expired_lanes(conn: sqlite3.Connection, timeout_s: float, now: float) -> list[int]:
    """Lanes holding at least one row unconfirmed ``timeout_s`` after its send."""
    rows = conn.execute(
        "SELECT DISTINCT lane FROM outbox"
        " WHERE state IN ('in_flight', 'sent') AND sent_at < ? ORDER BY lane",
        (now - timeout_s,),
    )
    return [int(lane) for (lane,) in rows]


class ResendPacer:
    """Decides when unconfirmed rows are sent again, lane by lane.

    A row the broker acknowledged is durable in Kafka: the hub gets it when
    it reads that far. Sending it again only helps when the hub skipped it
    (a gap in the lane) or the topic lost it, and both show the same way:
    the lane's confirmations stop moving. So:

    - a lane whose confirmations moved within the timeout is never resent,
      however old its rows (a hub catching up a backlog is left alone);
    - a lane stalled for the timeout gets every expired row sent again once
      (this also refills the rows the hub dropped behind a gap);
    - if that brought no progress (the hub or the broker is down), later
      rounds send only the first ``probe_rows`` of the lane and wait twice
      as long each time, up to ``max_backoff`` times the timeout.

    Worked example (timeout 30 s, hub down from t=0 for 10 minutes, 5,000
    rows in flight on lane 0): t=31 s all 5,000 again; t=91 s, 211 s, 451 s
    the first 100; t=691 s the first 100 (backoff capped at 8x = 240 s) -
    5,400 resends instead of 100,000 with a flat 30 s timer. The hub's first
    confirmation resets the lane to the first rule.

    State is in memory: after a restart every lane starts as "progressing
    now", so nothing is resent before one timeout.
    """

    def __init__(
        self,
        timeout_s: float,
        probe_rows: int = 100,
        max_backoff: int = 8,
        now: float | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self._started = time.time() if now is None else now
        self.probe_rows = probe_rows
        self.max_backoff = max_backoff
        self._upto: dict[int, int] = {}
        self._moved_at: dict[int, float] = {}
        self._backoff: dict[int, int] = {}

    def confirmed(self, confirms: dict[int, int], now: float) -> None:
        """Note the confirmations read in this step (lane -> upto)."""
        for lane, upto in confirms.items():
            if upto > self._upto.get(lane, -1):
                self._upto[lane] = upto
                self._moved_at[lane] = now
                self._backoff[lane] = 0

    def sweep(self, conn: sqlite3.Connection, now: float) -> int:
        """Requeue what is due (inside the caller's transaction); rows moved."""
        moved = 0
        for lane in expired_lanes(conn, self.timeout_s, now):
            level = self._backoff.get(lane, 0)
            since = self._moved_at.get(lane, self._started)
            if now - since < self.timeout_s * min(2**level, self.max_backoff):
                continue
            limit = None if level == 0 else self.probe_rows
            moved += requeue_expired_lane(conn, lane, self.timeout_s, now, limit)
            self._backoff[lane] = level + 1
            self._moved_at[lane] = now
        return moved


def requeue_in_flight(conn: sqlite3.Connection) -> int:
    """At start (or after losing a producer), in_flight rows go back to pending.

    Their delivery reports died with the old producer, so nobody would ever
    move them on; the hub skips whatever of them did reach Kafka.
    """
    cur = conn.execute("UPDATE outbox SET state = 'pending' WHERE state = 'in_flight'")
    return cur.rowcount


PRUNE_ROWS = 10_000
"""At most this many confirmed rows of a lane per prune (the shipper's
transaction); a prune that took them all is run again a second later."""


def prune(conn: sqlite3.Connection, window_h: float, now: float | None = None) -> int:
    """Delete confirmed rows confirmed more than ``window_h`` hours ago.

    Lane by lane, from the lane's oldest confirmed row up to its first one
    still inside the window: the hub confirms a lane in order, so its
    ``confirmed_at`` grows with ``lane_seq``, and the rows visited are the
    rows deleted plus one. A plain ``state = 'confirmed' AND confirmed_at <
    ?`` visited every confirmed row kept for the window, inside the
    shipper's write transaction (223 ms at 300,000 kept rows, every minute,
    holding every leg's commits). A row confirmed out of that order (a
    replay confirmed again) is kept until the rows before it go.

    Then the payload dictionaries no row names any more go too, except the
    newest of each table (the one the enricher writes with next); a seek in
    the ``dict_id`` index per dictionary.
    """
    now = time.time() if now is None else now
    cutoff = now - window_h * 3600
    pruned = 0
    lane = -1
    while True:
        # The next lane holding confirmed rows: one seek in the index each.
        found = conn.execute(
            "SELECT min(lane) FROM outbox WHERE state = 'confirmed' AND lane > ?",
            (lane,),
        ).fetchone()
        if found is None or found[0] is None:
            prune_dicts(conn)
            return pruned
        lane = int(found[0])
        young = conn.execute(
            "SELECT lane_seq FROM outbox WHERE state = 'confirmed' AND lane = ?"
            " AND (confirmed_at IS NULL OR confirmed_at >= ?)"
            " ORDER BY lane_seq LIMIT 1",
            (lane, cutoff),
        ).fetchone()
        oldest = conn.execute(
            "SELECT min(lane_seq) FROM outbox WHERE state = 'confirmed' AND lane = ?",
            (lane,),
        ).fetchone()[0]
        bound = min(young[0] if young else 2**62, int(oldest) + PRUNE_ROWS)
        pruned += conn.execute(
            "DELETE FROM outbox WHERE state = 'confirmed' AND lane = ?"
            " AND lane_seq < ? AND confirmed_at < ?",
            (lane, bound, cutoff),
        ).rowcount


def prune_dicts(conn: sqlite3.Connection) -> int:
    """Delete dictionaries no outbox row names, but the newest of each table."""
    return conn.execute(
        "DELETE FROM outbox_dicts WHERE id NOT IN"
        " (SELECT max(id) FROM outbox_dicts GROUP BY table_name)"
        " AND NOT EXISTS (SELECT 1 FROM outbox WHERE dict_id = outbox_dicts.id)"
    ).rowcount


def replay(conn: sqlite3.Connection, lane: int, from_seq: int) -> int:
    """Send confirmed rows of ``lane`` from ``from_seq`` on again (operator command).

    Safe by construction: the hub skips what its watermark already covers and
    answers with a confirmation, so a replay re-confirms and never re-applies.
    """
    cur = conn.execute(
        "UPDATE outbox SET state = 'pending', confirmed_at = NULL"
        " WHERE lane = ? AND lane_seq >= ? AND state = 'confirmed'",
        (lane, from_seq),
    )
    return cur.rowcount


def unconfirmed_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per unconfirmed state (pending, in_flight, sent), zero when empty.

    Searched in the ``(state, ...)`` index: the cost is the unconfirmed rows,
    not the confirmed ones kept for the replay window (a ``GROUP BY state``
    over the whole table took 32 ms at 300,000 kept rows, growing with the
    window, in every status line of the shipper).
    """
    counts = {state: 0 for state in STATES if state != "confirmed"}
    for state, count in conn.execute(
        f"SELECT state, count(*) FROM outbox WHERE state IN {_UNCONFIRMED}"
        " GROUP BY state"
    ):
        counts[state] = count
    return counts


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per state, every state present (zero when empty)."""
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(
        "SELECT state, count(*) FROM outbox GROUP BY state"
    ):
        counts[state] = count
    return counts


def lane_confirmations(conn: sqlite3.Connection) -> dict[int, int]:
    """Highest confirmed lane_seq per lane."""
    return {r[0]: r[1] for r in conn.execute("SELECT lane, upto FROM confirmations")}


# -- the outbox budget ------------------------------------------------------
#
# The box's disk is small and the link to the hub can be down for days. The
# outbox therefore has a budget: a number of unconfirmed rows and an age of the
# oldest unconfirmed row. The miner asks :class:`BudgetGate` before each
# window. Nothing is ever dropped: the miner only reads the journal more
# slowly, then not at all, and the journal (which the IBM i keeps) holds what
# is not read yet. Worked example with ``outbox_budget_rows = 1000`` and
# ``outbox_slow_at = 0.8``: 700 unconfirmed -> ok; 850 -> slow (one window
# per ``SLOW_PAUSE_S``); 1000 -> paused (ERROR once, counter
# ``miner.budget_paused``); back under 800 -> ok again, INFO once.

SLOW_PAUSE_S = 1.0
_MEASURE_EVERY_S = 1.0
BUDGET_STATES = ("ok", "slow", "paused")


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """How much of the outbox budget is used: unconfirmed rows and oldest age."""

    rows: int
    age_s: float
    share: float
    state: str


def budget_use(
    conn: sqlite3.Connection, pipeline: PipelineSection, now: float | None = None
) -> BudgetUse:
    """Measure the unconfirmed rows against the budget (the larger share wins)."""
    now = time.time() if now is None else now
    # IN, not !=: the index on state visits the unconfirmed rows only, not
    # the whole replay window (this runs every second in the miner).
    count, oldest = conn.execute(
        f"SELECT count(*), min(created_at) FROM outbox WHERE state IN {_UNCONFIRMED}"
    ).fetchone()
    age = 0.0 if oldest is None else max(0.0, now - float(oldest))
    share = max(
        int(count) / pipeline.outbox_budget_rows, age / pipeline.outbox_budget_age_s
    )
    state = "ok"
    if share >= 1.0:
        state = "paused"
    elif share >= pipeline.outbox_slow_at:
        state = "slow"
    return BudgetUse(int(count), round(age, 1), round(share, 3), state)


class BudgetGate:
    """Tells the miner whether to read now; alarms on each change of state.

    Invariant: the gate never deletes or skips anything; it only delays
    reading. Each change of state logs once (WARNING slow, ERROR paused,
    INFO back to ok), bumps ``miner.budget_<state>`` and writes the
    ``outbox-budget`` heartbeat row that ``appliance status`` and the web UI
    show.
    """

    def __init__(self, pipeline: PipelineSection) -> None:
        self.pipeline = pipeline
        self.state = "ok"
        self._measured_at = float("-inf")
        self._next_read = 0.0
        self.use: BudgetUse | None = None

    def hold(self, conn: sqlite3.Connection) -> bool:
        """True when the miner must not read a window now."""
        mono = time.monotonic()
        if mono - self._measured_at >= _MEASURE_EVERY_S:
            self._measured_at = mono
            self.use = budget_use(conn, self.pipeline)
            if self.use.state != self.state:
                self._changed(conn, self.use)
        if self.state == "paused":
            return True
        if self.state == "slow":
            if mono < self._next_read:
                return True
            self._next_read = mono + SLOW_PAUSE_S
        return False

    def _changed(self, conn: sqlite3.Connection, use: BudgetUse) -> None:
        before, self.state = self.state, use.state
        # The budget's own numbers (share, state before) are in the heartbeat.
        args = (use.rows, use.age_s)
        if use.state == "paused":
            logger.error(
                "outbox budget spent, miner paused, nothing dropped"
                " stage=miner count=%d elapsed_s=%.0f",
                *args,
            )
        elif use.state == "slow":
            logger.warning(
                "outbox budget nearly spent, miner slowed"
                " stage=miner count=%d elapsed_s=%.0f",
                *args,
            )
        else:
            logger.info(
                "outbox budget back under its mark, miner resumed"
                " stage=miner count=%d elapsed_s=%.0f",
                *args,
            )
        with store.transaction(conn):
            store.bump(conn, f"miner.budget_{use.state}")
        status = (
            f"rows={use.rows} age_s={use.age_s:.0f} share={use.share:.2f} from={before}"
        )
        store.heartbeat(conn, "outbox-budget", os.getpid(), use.state, status)


_gates: dict[int, tuple[sqlite3.Connection, BudgetGate]] = {}


def budget_hold(conn: sqlite3.Connection, pipeline: PipelineSection) -> bool:
    """The miner's hook: one :class:`BudgetGate` per connection, True = wait."""
    held = _gates.get(id(conn))
    if held is None or held[0] is not conn:
        held = _gates[id(conn)] = (conn, BudgetGate(pipeline))
    return held[1].hold(conn)


def live_legs(conn: sqlite3.Connection) -> list[str]:
    """Legs whose last heartbeat is not ``stopped`` and whose pid still runs here."""
    live = []
    for leg, pid, state in conn.execute("SELECT leg, pid, state FROM heartbeats"):
        if state == "stopped" or not pid:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass  # another user's process: it runs
        live.append(f"{leg} (pid {pid}, {state})")
    return live


def downgrade(conn: sqlite3.Connection, to: int, chunk: int = 5_000) -> int:
    """Make the database readable by a release of schema ``to``; rows rewritten.

    For a rollback: refused (:class:`DowngradeError`) while a leg runs, since a
    running enricher would go on deflating. Schema 1 (releases before the
    payloads were deflated) reads ``payload`` as text: every row naming a
    dictionary is written back as its JSON text, ``chunk`` rows per commit, so
    a run cut short leaves each row either form and the next run goes on; then
    the dictionaries go and ``schema_version`` says ``to``. A row that cannot
    be read is left as it is and the others are still written back; then
    :class:`DowngradeError` names every such row, the dictionaries stay and
    the schema is unchanged (the older release would stop at those rows: an
    operator restores them or discards them, then runs this again).
    """
    if not 1 <= to <= store.SCHEMA_VERSION:
        raise ValueError(f"schema {to} is not one this release can go back to")
    if to == store.SCHEMA_VERSION:
        return 0
    running = live_legs(conn)
    if running:
        raise DowngradeError(
            "legs still running, stop them first: " + ", ".join(running)
        )
    unpacker = payloads.Unpacker()
    rewritten, after = 0, 0
    unreadable: list[str] = []
    while True:
        with store.transaction(conn):
            rows = conn.execute(
                "SELECT id, lane, lane_seq, table_name, payload, dict_id FROM outbox"
                " WHERE dict_id IS NOT NULL AND id > ? ORDER BY id LIMIT ?",
                (after, chunk),
            ).fetchall()
            texts = []
            for oid, lane, lane_seq, table, payload, dict_id in rows:
                try:
                    value = unpacker.value(conn, payload, dict_id)
                except payloads.PayloadError as exc:
                    unreadable.append(exc.placed(table, _where(oid, lane, lane_seq)))
                    continue
                texts.append((value.decode(), oid))
            conn.executemany(
                "UPDATE outbox SET payload = ?, dict_id = NULL WHERE id = ?", texts
            )
            rewritten += len(texts)
            if rows:
                after = rows[-1][0]
                continue
            if not unreadable:
                conn.execute("DELETE FROM outbox_dicts")
                store.meta_put(conn, "schema_version", str(to))
                return rewritten
        shown = "; ".join(unreadable[:10])
        more = f" (and {len(unreadable) - 10} more)" if len(unreadable) > 10 else ""
        raise DowngradeError(
            f"{rewritten} rows written back as text, {len(unreadable)} cannot be"
            f" read and stay deflated, schema unchanged: {shown}{more}"
        )
