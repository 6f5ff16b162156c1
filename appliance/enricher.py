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
- ``outbox_id`` is in the payload, so ids are taken before the insert: inside
  the ``BEGIN IMMEDIATE`` transaction nobody else inserts, and the next
  AUTOINCREMENT id is ``sqlite_sequence.seq + 1``.

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

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from appliance import jsontext, outbox, scripting, store
from appliance.config import BoxSettings
from appliance.doorbell import Doorbell
from appliance.errors import ScriptError

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
        return f"messages={self._messages} parked={self._parked} lane_seq={lanes}"

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
        seqs = dict(self.lane_seqs)
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        parked = 0
        with store.transaction(self.conn):
            next_id = self._next_outbox_id()
            for change in changes:
                row = (
                    None
                    if change.error
                    else self._outbox_row(change, seqs, next_id, now)
                )
                if row is None:
                    self._park(change)
                    parked += 1
                    continue
                rows.append(row)
                next_id += 1
            self._insert(rows, changes, seqs)
            guardian = self._guardian_rows(seqs, next_id, now)
            self._insert_guardian(guardian, seqs)
        self.lane_seqs = seqs
        self._messages += len(rows) + len(guardian)
        self._parked += parked

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

    def _insert(
        self, rows: list[tuple[Any, ...]], changes: list[Change], seqs: dict[int, int]
    ) -> None:
        outbox.insert(self.conn, rows)  # deflated: appliance.payloads
        self.conn.executemany(
            "UPDATE changes SET state = 1 WHERE id = ?", [(c.id,) for c in changes]
        )
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
