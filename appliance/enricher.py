"""The enricher leg: changes, through the user's scripts, into outbox messages.

Each step reads up to ``pipeline.batch`` rows of ``changes`` with ``state = 0``
in id order, runs every configured script on them (one hand-off per script
and batch to the script's worker thread, the scripts side by side, the time
limit per change; the first failure in config order decides), and then, in
ONE transaction, writes an outbox row (the message of contracts.md §3) for
each enriched change, parks each failed change in dead letters
(``stage='enricher'``, reason ``<script name>: <error>``, payload the change),
marks all of them ``state = 1`` and counts ``enricher.messages``. A crash
before the commit leaves every change to be enriched again; after it, none.

The batch's outbox rows (lanes, lane_seqs, outbox ids, message texts and
their deflated payloads) are composed before that transaction, reading only
(:mod:`appliance.readphase`), so the other legs are not kept from SQLite's
one write lock meanwhile. The transaction first checks what the composing
assumed: the outbox's next id, the lane counts in ``meta`` equal to those in
memory, the payload dictionaries used still there with the same bytes; then
it marks the changes with one ``UPDATE ... WHERE state = 0 AND id BETWEEN``
that must mark exactly the batch. If any of it fails (an outbox insert by
someone else, a change put back meanwhile, a dictionary pruned), or the
composing wanted a write (a table's first or re-picked dictionary), the
composed rows are thrown away and the batch is written the old way, built
inside the transaction (its lane counts read again from the database when
the outbox or ``meta`` moved). Guardian parts are built under the lock either
way (they wait on which changes are done). Both ways write the same rows
(``tests/test_enricher_read_phase.py``).

Invariants:

- Lanes: ``enricher.lanes = [70, 30]`` sends ``message_interest >= 70`` to
  lane 0, ``>= 30`` to lane 1, the rest to lane 2. Without a script named
  ``message_interest`` the interest is 50.
- ``lane_seq`` is contiguous per lane. This leg is the only one that inserts
  into the outbox, so it reads the last ``lane_seq`` of each lane once at
  setup and counts on in memory, committing the new value only with the rows.
  The last value is the largest of the outbox rows, the shipper's
  confirmations and the ``meta`` key ``enricher.lane_seq.<lane>`` written in
  every transaction: pruning may empty a lane of outbox rows, and the hub
  would skip a restarted count as duplicates.
- ``outbox_id`` is in the payload, so ids are taken before the insert: the
  next AUTOINCREMENT id is ``sqlite_sequence.seq + 1``. Composed before the
  lock, that id is checked again inside the ``BEGIN IMMEDIATE`` transaction
  (where nobody else inserts) before a row is written.
- The payload dictionaries (:class:`appliance.payloads.Packer`) are this
  leg's own packer; a batch composed before the lock packs with a copy of
  it, adopted only when the batch commits, so a batch thrown away and
  written again counts each message once towards the dictionary's re-pick.
  Packed before the lock, its payloads are written only after the
  transaction found each dictionary they name still holding the same bytes.

- Guardian parts (docs/guardian.md §3): a ``guardian_outbound`` row is
  emitted once every change with ``id <= after_change_id`` has left
  ``changes`` (``state = 1``), as an ``op: "g"`` message in lane 0, in the
  same transaction as the batch it follows. Its ``fences`` name, for every
  lane, the last ``lane_seq`` written before it (0 for a lane never used),
  so the hub compares only once everything before it is applied. ``r``
  changes are ordinary changes (the scripts see ``op = "r"``).

Worked example: lanes [70, 30], lane 0 last at 56 (confirmed 56, rows pruned,
meta says 56). A batch brings a PRIX update (interest 80) and a STOCK delete
(60): the first gets lane 0, lane_seq 57; the second lane 1, the next of that
lane. If the commit fails, memory still says 56 and the step is done again.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from appliance import jsontext, outbox, payloads, scripting, store
from appliance.config import BoxSettings
from appliance.doorbell import Doorbell
from appliance.errors import ScriptError
from appliance.readphase import ReadPhase

logger = logging.getLogger(__name__)

STAGE = "enricher"
SCHEMA = "store-relay/1"
INTEREST = "message_interest"
DEFAULT_INTEREST = 50
GUARDIAN_LANE = 0
GUARDIAN_INTEREST = 100
_META_SEQ = "enricher.lane_seq."


@dataclass
class Change:
    """One ``changes`` row on its way through the scripts."""

    id: int
    raw_id: int
    entry_ts_ms: int
    mined_at: float
    event: dict[str, Any]
    text: str = ""
    # JSON texts of key, before, after, source (and errors) for the message.
    texts: dict[str, str] = field(default_factory=dict)
    enrichment: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class _Composed:
    """A batch's writes computed before the write lock, and what they assume."""

    changes: list[Change]
    rows: list[tuple[Any, ...]]  # outbox rows, payload deflated, dict_id last
    parked: list[Change]
    seqs: dict[int, int]  # the lane counts after the batch
    first_id: int  # the outbox id the first row takes
    samples: dict[int, bytes]  # the dictionaries the payloads were packed with
    packer: payloads.Packer  # the packer as this batch leaves it
    now: float


class _Stale(Exception):
    """What a composed batch assumed is no longer true: write it the old way."""


def _dumps(value: Any) -> str:
    return jsontext.compact(value)


def _body(texts: dict[str, str]) -> str:
    """``"key":..,"before":..,"after":..,"source":..[,"errors":..]`` of a change."""
    body = (
        f'"key":{texts["key"]},"before":{texts["before"]},'
        f'"after":{texts["after"]},"source":{texts["source"]}'
    )
    if "errors" in texts:
        body += f',"errors":{texts["errors"]}'
    return body


def lane_of(interest: float, lanes: Sequence[int]) -> int:
    """The lane of ``interest``: the first bound it reaches, else the last lane."""
    for lane, bound in enumerate(lanes):
        if interest >= bound:
            return lane
    return len(lanes)


def interest_of(enrichment: dict[str, Any]) -> int:
    """``message_interest`` as an int 0-100 (default 50); ScriptError if bad."""
    if INTEREST not in enrichment:
        return DEFAULT_INTEREST
    value = enrichment[INTEREST]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScriptError(f"returned {str(value)[:40]!r}, expected a number 0-100")
    if not 0 <= value <= 100:
        raise ScriptError(f"returned {value!r}, expected a number 0-100")
    # Bounds are integers, so the floor lands in the same lane as the value.
    return int(value)


def last_lane_seqs(conn: sqlite3.Connection) -> dict[int, int]:
    """The last lane_seq of each lane (see the module invariants)."""
    last: dict[int, int] = {}
    queries = (
        "SELECT lane, MAX(lane_seq) FROM outbox GROUP BY lane",
        "SELECT lane, upto FROM confirmations",
        "SELECT CAST(substr(key, ?) AS INTEGER), CAST(value AS INTEGER)"
        " FROM meta WHERE key LIKE ?",
    )
    for sql in queries:
        args = (len(_META_SEQ) + 1, _META_SEQ + "%") if "meta" in sql else ()
        for lane, seq in conn.execute(sql, args):
            last[int(lane)] = max(last.get(int(lane), 0), int(seq))
    return last


class EnricherLeg:
    """Runs the scripts on new changes and writes the outbox (module doc)."""

    name = STAGE
    # An idle step is one local SQLite read: poll soon after work (daemon.run).
    idle_first_s = 0.005

    def __init__(self, settings: BoxSettings, conn: sqlite3.Connection) -> None:
        self.settings = settings
        # Rings the next leg after a step that wrote work for it (a hint:
        # the database stays the hand-over).
        self.doorbell = Doorbell(
            settings.pipeline.db_path.parent, self.name, ("shipper",)
        )
        self.conn = conn
        self.store_id = settings.store.id
        self.runtimes: list[scripting.ScriptRuntime] = []
        self.lane_seqs: dict[int, int] = {}
        self._epoch = 0
        self._messages = 0
        self._parked = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="enrich")
        self._packer = payloads.Packer()
        self._reads_only = ReadPhase(conn)
        # Batches written the old way, inside the transaction (tests, harness).
        self.under_lock = 0

    def setup(self) -> None:
        """Load and warm the scripts; read the lane counts and the epoch."""
        section = self.settings.enricher
        self.runtimes = scripting.load(
            section.scripts, section.timeout_ms, self.store_id
        )
        self.lane_seqs = last_lane_seqs(self.conn)
        self._epoch = store.epoch(self.conn)
        logger.info(
            "enricher ready stage=%s scripts=%d lanes=%s",
            STAGE,
            len(self.runtimes),
            section.lanes,
        )

    def step(self) -> bool:
        """Enrich one batch of changes; False when there was none."""
        started = time.monotonic()
        changes = self._read()
        if not changes:
            return self._write_guardian_only()

        self._run_scripts(changes)
        self._write(changes)

        parked = [c for c in changes if c.error]
        if parked:
            logger.warning(
                "changes parked stage=%s count=%d reason=%s",
                STAGE,
                len(parked),
                parked[0].error,
            )
        logger.debug(
            "batch enriched stage=%s count=%d elapsed_s=%.3f",
            STAGE,
            len(changes),
            time.monotonic() - started,
        )
        return True

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.close()
        self._pool.shutdown(wait=False)

    def handle_command(self, kind: str, args: dict[str, Any]) -> str:
        """Carry out an operator's ``resend`` (see :mod:`appliance.commands`)."""
        from appliance import commands

        if kind != "resend":
            raise commands.CommandError(f"enricher carries out no {kind!r}")
        count, self.lane_seqs = commands.resend(
            self.conn, self.lane_seqs, **commands.resend_args(args)
        )
        return f"{count} messages queued again"

    def status(self) -> str:
        lanes = ",".join(f"{k}:{v}" for k, v in sorted(self.lane_seqs.items()))
        return (
            f"this run: messages={self._messages} parked={self._parked}"
            f" lane_seq={lanes}"
        )

    # -- reading ---------------------------------------------------------------

    def _read(self) -> list[Change]:
        rows = self.conn.execute(
            "SELECT id, raw_id, table_name, op, key, before, after, source,"
            " entry_ts_ms, mined_at FROM changes WHERE state = 0"
            " ORDER BY id LIMIT ?",
            (self.settings.pipeline.batch,),
        ).fetchall()
        return [self._change(row) for row in rows]

    def _change(self, row: sqlite3.Row) -> Change:
        change = Change(
            id=row["id"],
            raw_id=row["raw_id"],
            entry_ts_ms=row["entry_ts_ms"],
            mined_at=row["mined_at"],
            event={"store": self.store_id, "table": row["table_name"], "op": row["op"]},
        )
        texts: dict[str, str] = {}
        try:
            for name in ("key", "before", "after", "source"):
                text = row[name]
                # Parsed to check it (a row that is not JSON is parked) and
                # for dead letters; the scripts' input and the message reuse
                # the text itself (see _message).
                change.event[name] = None if text is None else jsontext.loads(text)
                texts[name] = "null" if text is None else text
            change.event["source"]["store"] = self.store_id
            # Field-level decode errors travel in the row's source (the changes
            # table has no column for them); the message carries them on top.
            errors = change.event["source"].pop("errors", None)
            if errors:
                change.event["errors"] = errors
        except (ValueError, TypeError) as exc:
            change.error = f"change row is not valid JSON: {str(exc)[:200]}"
            return change
        # Only the source changed (store added, errors lifted): encode it, and
        # splice the row's own key/before/after texts around it.
        texts["source"] = _dumps(change.event["source"])
        if errors:
            texts["errors"] = _dumps(errors)
        change.texts = texts
        change.text = (
            f'{{"store":{_dumps(self.store_id)},"table":{_dumps(row["table_name"])},'
            f'"op":{_dumps(row["op"])},{_body(texts)}}}'
        )
        return change

    # -- scripts ---------------------------------------------------------------

    def _run_scripts(self, changes: list[Change]) -> None:
        todo = [c for c in changes if not c.error]
        if not todo or not self.runtimes:
            return
        texts = [c.text for c in todo]
        # Each script has its own worker thread: run them side by side (the
        # JVM calls release the GIL). The first failure in config order wins.
        results = list(self._pool.map(lambda rt: rt.run_batch(texts), self.runtimes))
        for runtime, outcomes in zip(self.runtimes, results, strict=True):
            for change, outcome in zip(todo, outcomes, strict=True):
                if change.error:
                    continue
                if isinstance(outcome, ScriptError):
                    change.error = f"{runtime.name}: {outcome}"
                else:
                    change.enrichment[runtime.name] = outcome

    # -- writing ---------------------------------------------------------------

    def _write(self, changes: list[Change]) -> None:
        """Compose the batch before the lock, write it under; else the old way."""
        composed = self._compose(changes)
        stale = "" if composed is None else self._write_composed(composed)
        if composed is not None and not stale:
            return
        self.under_lock += 1
        # Outbox rows written by someone else: this leg's lane counts may be
        # behind (it counts on being the only writer, module doc).
        self._write_locked(changes, reread=stale in ("outbox id", "lane counts"))

    def _compose(self, changes: list[Change]) -> _Composed | None:
        """The batch's outbox rows, reading only; None if a write was wanted.

        Only a write refused by the read phase (a table's first dictionary,
        a re-pick) gives None; any other error is raised as it would have
        been inside the transaction.
        """
        seqs = dict(self.lane_seqs)
        now = time.time()
        packer = copy.deepcopy(self._packer)
        try:
            with self._reads_only:
                first_id = self._next_outbox_id()
                rows, parked = self._outbox_rows(changes, seqs, first_id, now)
                packed = outbox.pack(self.conn, packer, rows)
                used = {row[-1] for row in packed}
                samples = self._samples(used)
        except Exception:
            if not self._reads_only.wanted_write:  # not the refusal's doing
                raise
        if self._reads_only.wanted_write:
            logger.debug(
                "batch composed under the lock stage=%s count=%d reason=%s",
                STAGE,
                len(changes),
                self._reads_only.refused,
            )
            return None
        if set(samples) != used:  # a dictionary pruned since the packer saw it
            return None
        return _Composed(changes, packed, parked, seqs, first_id, samples, packer, now)

    def _write_composed(self, composed: _Composed) -> str:
        """Write a composed batch in one short transaction; "" when done, else
        (nothing written) what it assumed that no longer holds."""
        seqs, changes = composed.seqs, composed.changes
        try:
            with store.transaction(self.conn):
                stale = self._stale(composed)
                if stale:
                    raise _Stale(stale)
                for change in composed.parked:
                    self._park(change)
                outbox.insert_packed(self.conn, composed.rows)
                marked = self.conn.execute(
                    "UPDATE changes SET state = 1"
                    " WHERE state = 0 AND id BETWEEN ? AND ?",
                    (changes[0].id, changes[-1].id),
                ).rowcount
                if marked != len(changes):
                    raise _Stale("changes")  # rolled back: one came back or went
                self._write_counts(composed.rows, seqs)
                next_id = composed.first_id + len(composed.rows)
                guardian = self._guardian_rows(seqs, next_id, composed.now)
                self._insert_guardian(guardian, seqs)
        except _Stale as exc:
            logger.debug(
                "composed batch stale, written again stage=%s count=%d reason=%s",
                STAGE,
                len(changes),
                exc,
            )
            return str(exc)
        self._packer = composed.packer
        self.lane_seqs = seqs
        self._messages += len(composed.rows) + len(guardian)
        self._parked += len(composed.parked)
        return ""

    def _stale(self, composed: _Composed) -> str:
        """Inside the transaction: what of the outbox id, lane counts and
        dictionaries the batch was composed with is no longer the database's
        ("" when all of it still is)."""
        if self._next_outbox_id() != composed.first_id:
            return "outbox id"
        if not self._seqs_hold():
            return "lane counts"
        if self._samples(set(composed.samples)) != composed.samples:
            return "dictionary"
        return ""

    def _seqs_hold(self) -> bool:
        """The lane counts in ``meta`` are the ones in memory (written with
        every batch, and by a ``resend``)."""
        stored = {
            int(key[len(_META_SEQ) :]): int(value)
            for key, value in self.conn.execute(
                "SELECT key, value FROM meta WHERE key > ? AND key < ?",
                (_META_SEQ, _META_SEQ[:-1] + "/"),
            )
        }
        return stored == self.lane_seqs

    def _samples(self, ids: set[int]) -> dict[int, bytes]:
        """The bytes of the dictionaries ``ids``, as the packer just found them
        (a dictionary row never changes; it may only be pruned)."""
        if not ids:
            return {}
        order = sorted(ids)
        found = self.conn.execute(
            "SELECT id, sample FROM outbox_dicts"
            f" WHERE id IN ({', '.join('?' * len(order))})",
            order,
        ).fetchall()
        return {int(i): bytes(b) for i, b in found}

    def _write_locked(self, changes: list[Change], reread: bool = False) -> None:
        """The batch built and written inside one write transaction.

        The lane counts are read again from the database when ``reread`` or
        when ``meta`` disagrees with memory.
        """
        now = time.time()
        with store.transaction(self.conn):
            fresh = reread or not self._seqs_hold()
            seqs = self._reread_seqs() if fresh else dict(self.lane_seqs)
            first_id = self._next_outbox_id()
            rows, unfit = self._outbox_rows(changes, seqs, first_id, now)
            for change in unfit:
                self._park(change)
            parked = len(unfit)
            next_id = first_id + len(rows)
            outbox.insert(self.conn, rows, self._packer)
            self.conn.executemany(
                "UPDATE changes SET state = 1 WHERE id = ?", [(c.id,) for c in changes]
            )
            self._write_counts(rows, seqs)
            guardian = self._guardian_rows(seqs, next_id, now)
            self._insert_guardian(guardian, seqs)
        self.lane_seqs = seqs
        self._messages += len(rows) + len(guardian)
        self._parked += parked

    def _outbox_rows(
        self, changes: list[Change], seqs: dict[int, int], first_id: int, now: float
    ) -> tuple[list[tuple[Any, ...]], list[Change]]:
        """Outbox rows of the changes fit to send (ids from ``first_id``, lane
        counts taken from ``seqs``), and the changes to park instead."""
        rows: list[tuple[Any, ...]] = []
        unfit: list[Change] = []
        for change in changes:
            outbox_id = first_id + len(rows)
            row = (
                None if change.error else self._outbox_row(change, seqs, outbox_id, now)
            )
            if row is None:
                unfit.append(change)
            else:
                rows.append(row)
        return rows, unfit

    def _reread_seqs(self) -> dict[int, int]:
        """Inside the transaction: the lane counts as the database has them.

        ``meta`` disagreed with memory (an older database without the
        ``meta`` counts), or someone else inserted outbox rows: this leg's
        memory could give a ``lane_seq`` twice.
        """
        found = last_lane_seqs(self.conn)
        seqs = {
            lane: max(self.lane_seqs.get(lane, 0), found.get(lane, 0))
            for lane in {*self.lane_seqs, *found}
        }
        if seqs != self.lane_seqs:
            logger.warning(
                "lane counts read again stage=%s lane=%s",
                STAGE,
                ",".join(f"{k}:{v}" for k, v in sorted(seqs.items())),
            )
        return seqs

    # -- guardian parts --------------------------------------------------------

    def _write_guardian_only(self) -> bool:
        """Emit guardian parts that wait for no change; False when there was none."""
        ready = self.conn.execute(
            "SELECT 1 FROM guardian_outbound WHERE state = 0 LIMIT 1"
        ).fetchone()
        if ready is None:
            return False
        seqs = dict(self.lane_seqs)
        with store.transaction(self.conn):
            guardian = self._guardian_rows(seqs, self._next_outbox_id(), time.time())
            self._insert_guardian(guardian, seqs)
        self.lane_seqs = seqs
        self._messages += len(guardian)
        return bool(guardian)

    def _guardian_rows(
        self, seqs: dict[int, int], outbox_id: int, now: float
    ) -> list[tuple[Any, ...]]:
        """Outbox rows of the guardian parts whose changes are all enriched.

        Inside the step's transaction, after this batch's changes are marked
        done: a part is ready when no change up to its ``after_change_id``
        is still waiting.
        """
        waiting = self.conn.execute(
            "SELECT min(id) FROM changes WHERE state = 0"
        ).fetchone()[0]
        bound = (int(waiting) - 1) if waiting is not None else 2**62
        parts = self.conn.execute(
            "SELECT id, table_name, body FROM guardian_outbound"
            " WHERE state = 0 AND after_change_id <= ? ORDER BY id LIMIT ?",
            (bound, self.settings.pipeline.batch),
        ).fetchall()
        rows: list[tuple[Any, ...]] = []
        for part in parts:
            body = json.loads(part["body"])
            lanes = range(len(self.settings.enricher.lanes) + 1)
            fences = {str(lane): seqs.get(lane, 0) for lane in lanes}
            fences.update({str(lane): seq for lane, seq in seqs.items()})
            seqs[GUARDIAN_LANE] = seqs.get(GUARDIAN_LANE, 0) + 1
            version = int(body["v_low"])
            message = {
                "schema": SCHEMA,
                "store": self.store_id,
                "epoch": self._epoch,
                "lane": GUARDIAN_LANE,
                "lane_seq": seqs[GUARDIAN_LANE],
                "outbox_id": outbox_id,
                "version": version,
                "op": "g",
                "ts_ms": int(now * 1000),
                "table": part["table_name"],
                "key": {},
                "before": None,
                "after": None,
                "source": {"store": self.store_id},
                "enrichment": {},
                "guardian": {**body, "fences": fences},
                "mined_at": now,
            }
            payload = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            rows.append(
                (
                    outbox_id,
                    GUARDIAN_LANE,
                    seqs[GUARDIAN_LANE],
                    GUARDIAN_INTEREST,
                    version,
                    part["table_name"],
                    "g",
                    payload,
                    now,
                    now,
                    part["id"],
                )
            )
            outbox_id += 1
        return rows

    def _insert_guardian(
        self, rows: list[tuple[Any, ...]], seqs: dict[int, int]
    ) -> None:
        if not rows:
            return
        self.conn.executemany(
            "INSERT INTO outbox (id, lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row[:-1] for row in rows],
        )
        self.conn.executemany(
            "UPDATE guardian_outbound SET state = 1 WHERE id = ?",
            [(row[-1],) for row in rows],
        )
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (f"{_META_SEQ}{GUARDIAN_LANE}", str(seqs[GUARDIAN_LANE])),
        )
        store.bump(self.conn, "enricher.messages", len(rows))
        store.bump(self.conn, "enricher.guardian_parts", len(rows))

    def _next_outbox_id(self) -> int:
        row = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()
        return (int(row[0]) if row else 0) + 1

    def _outbox_row(
        self, change: Change, seqs: dict[int, int], outbox_id: int, now: float
    ) -> tuple[Any, ...] | None:
        """The outbox row of ``change``; None (and ``change.error``) if unfit."""
        try:
            interest = interest_of(change.enrichment)
        except ScriptError as exc:
            change.error = f"{INTEREST}: {exc}"
            return None
        lane = lane_of(interest, self.settings.enricher.lanes)
        seqs[lane] = seqs.get(lane, 0) + 1
        version = store.version_of(self._epoch, change.raw_id)
        payload = self._message(change, lane, seqs[lane], outbox_id, version)
        event = change.event
        return (
            outbox_id,
            lane,
            seqs[lane],
            interest,
            version,
            event["table"],
            event["op"],
            payload,
            now,
            change.mined_at,
        )

    def _message(
        self, change: Change, lane: int, lane_seq: int, outbox_id: int, version: int
    ) -> str:
        """The message of contracts.md §3, in its field order.

        Built as text: the head and the enrichment are encoded here, key,
        before, after and source are the texts :meth:`_change` kept. Encoding
        the whole message again cost more than half of the leg's own time.
        """
        event = change.event
        head = _dumps(
            {
                "schema": SCHEMA,
                "store": self.store_id,
                "epoch": self._epoch,
                "lane": lane,
                "lane_seq": lane_seq,
                "outbox_id": outbox_id,
                "version": version,
                "op": event["op"],
                "ts_ms": change.entry_ts_ms,
                "table": event["table"],
            }
        )
        texts = change.texts
        tail = f',"errors":{texts["errors"]}' if "errors" in texts else ""
        return (
            f'{head[:-1]},"key":{texts["key"]},"before":{texts["before"]},'
            f'"after":{texts["after"]},"source":{texts["source"]},'
            f'"enrichment":{_dumps(change.enrichment)},'
            f'"mined_at":{_dumps(change.mined_at)}{tail}}}'
        )

    def _park(self, change: Change) -> None:
        source = change.event.get("source") or {}
        position = ""
        if isinstance(source, dict) and "sequence" in source:
            position = "{}/{}:{}".format(
                source.get("receiver_library", ""),
                source.get("receiver", ""),
                source["sequence"],
            )
        payload = dict(
            change.event,
            change_id=change.id,
            raw_id=change.raw_id,
            entry_ts_ms=change.entry_ts_ms,
            mined_at=change.mined_at,
        )
        store.park(
            self.conn,
            stage=STAGE,
            reason=change.error,
            table=str(change.event.get("table", "")),
            position=position,
            raw_id=change.raw_id,
            payload=payload,
        )

    def _write_counts(self, rows: list[tuple[Any, ...]], seqs: dict[int, int]) -> None:
        self.conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(f"{_META_SEQ}{lane}", str(seq)) for lane, seq in seqs.items()],
        )
        if rows:
            store.bump(self.conn, "enricher.messages", len(rows))


def build(settings: BoxSettings) -> EnricherLeg:
    """The enricher leg on the configured pipeline database."""
    return EnricherLeg(settings, store.connect(settings.pipeline.db_path))
