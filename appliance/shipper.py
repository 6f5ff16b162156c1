"""The shipper leg: drains the outbox to Kafka and reads the hub's confirmations.

Responsibilities:

- send pending outbox rows, lower lanes first and each lane in ``lane_seq``
  order, with an idempotent ``acks=all`` producer keyed by the store id, and
  never more than ``shipper.max_in_flight`` produced and unconfirmed;
- verify: record each delivery report (partition, offset) as ``sent``;
- confirm: read ``{"store", "lane", "upto"}`` from the confirm topic, only
  this store's partition, and confirm the rows;
- send again, paced by :class:`appliance.outbox.ResendPacer`, the rows of a
  lane whose confirmations stopped moving for ``shipper.confirm_timeout_s``;
- prune confirmed rows after ``pipeline.replay_window_h``;
- hold a lane whose next row cannot be read back (see below).

Invariants:

- SQLite is written only by :meth:`ShipperLeg.step` (and setup/close), in ONE
  transaction per step: the in_flight marks, the delivery reports collected in
  memory by the callback, the confirmations and the confirm-topic offset move
  together (a step with nothing to write opens none). The delivery callback
  never touches SQLite.
- The confirm-topic position lives in ``shipper_offsets`` next to the rows it
  confirmed, so a restart resumes exactly where the last committed step ended:
  a confirmation is never skipped, and reading one twice changes nothing.
- A produced row is ``in_flight`` until its report is read; ``in_flight``
  rows found at start lost their report with the old process and go back to
  ``pending``. Sending twice is always safe: the hub skips what its watermark
  covers and confirms again.
- The Kafka value is the JSON the enricher made, byte for byte: the outbox
  stores it compressed (:mod:`appliance.payloads`), the shipper inflates it
  before producing, and the producer compresses batches on its own.
- A row whose payload cannot be read back (corrupt, dictionary missing) is
  never skipped: the hub applies a lane strictly in order, so a skipped row
  would be a gap it waits on for ever. Its lane is held (the row and every
  later row of the lane stay ``pending``; other lanes go on), the row is
  parked once in dead letters (stage ``shipper``, its table, position
  ``outbox_id=.. lane=.. lane_seq=..`` and the reason), logged at ERROR,
  and shown in the status line as ``unreadable=<lane>:<outbox_id>``. Every
  ``_UNREADABLE_RETRY_S`` the row is read again; once it reads (the
  dictionary or the row was restored) the lane goes on and its letter is
  marked ``retried``.

Worked example (store MQ01, confirm topic with 3 partitions)::

    murmur2(b"MQ01") & 0x7fffffff = 1489664457; 1489664457 % 3 = 0 -> partition 0
    shipper_offsets(odh.confirm, 0) = 17: assign partition 0 at offset 17
    step: offset 17 {"store":"GP01",...}          other store: skipped
          offset 18 {"store":"MQ01","lane":0,"upto":41}
                -> lane 0 rows 39, 40, 41 confirmed; next offset 19
          one COMMIT: rows confirmed + shipper_offsets = 19
    crash before COMMIT: restart reads 17 and 18 again, same result.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from appliance import outbox, payloads, store
from appliance.config import BoxSettings
from appliance.doorbell import Doorbell
from appliance.errors import TransportError
from appliance.kafka import (
    consumer_config,
    ensure_topics,
    partition_for,
    producer_config,
    topic_partitions,
    translate,
)

__all__ = ["OFFSETS_DDL", "ShipperLeg", "build", "ensure_topics"]

logger = logging.getLogger(__name__)

_LEADERLESS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)

_ASSIGN_RETRY_S = 2.0

OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS shipper_offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (topic, partition)
)
"""
_CONFIRM_READ = 500
# A step with max_in_flight spent waits this long for a confirmation (bounded
# step; a hub down for hours costs one wake-up per wait, no busy loop).
_STARVED_WAIT_S = 0.05
_PRUNE_EVERY_S = 60.0
_UNREADABLE_RETRY_S = 30.0
_METADATA_TIMEOUT_S = 10.0


@dataclass
class _Step:
    """What one step gathered in memory before its single transaction."""

    produced: list[int] = field(default_factory=list)
    reports: list[outbox.Delivery] = field(default_factory=list)
    confirms: dict[int, int] = field(default_factory=dict)
    bad_confirms: list[tuple[str, bytes]] = field(default_factory=list)
    guardian: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[outbox.OutboxRow] = field(default_factory=list)
    readable_again: list[int] = field(default_factory=list)
    next_offset: int | None = None

    def busy(self) -> bool:
        return bool(
            self.produced
            or self.reports
            or self.confirms
            or self.bad_confirms
            or self.guardian
            or self.unreadable
            or self.readable_again
        )


class ShipperLeg:
    """Outbox -> Kafka, confirmations -> outbox. See the module docstring."""

    name = "shipper"
    # Idle steps are local (SQLite, the client's queues): poll soon after work.
    idle_first_s = 0.005

    def __init__(self, settings: BoxSettings, conn: sqlite3.Connection) -> None:
        self.settings = settings
        # Woken by the enricher's ring (a hint: the database is the hand-over).
        self.doorbell = Doorbell(settings.pipeline.db_path.parent, self.name)
        self.conn = conn
        self.key = settings.store.id.encode()
        self._reports: list[outbox.Delivery] = []
        self._fatal = ""
        self._producer: Any = None
        self._consumer: Any = None
        self._confirm_partition = -1
        self._assign_at = 0.0
        self._next_offset = 0
        self._last_sweep = 0.0
        self._last_prune = 0.0
        self._starved = False
        # Copies handed to the producer and not yet reported, per lane; a lane
        # whose rows were put back to pending (a failed report, a resend) is
        # held until its earlier copies have all reported, so a row is never
        # handed over again while a copy of it may still reach the broker.
        self._outstanding: Counter[int] = Counter()
        self._held: set[int] = set()
        self._pacer = outbox.ResendPacer(settings.shipper.confirm_timeout_s)
        self._unpacker = payloads.Unpacker()
        # Lanes held behind a row that cannot be read back: lane -> that row;
        # the ids parked (by this process or an earlier one: released when
        # their row reads again); when to read them again.
        self._unreadable: dict[int, outbox.OutboxRow] = {}
        self._parked_ids: set[int] = outbox.parked_unreadable(conn)
        self._unreadable_retry_at = 0.0
        self._to_park: list[outbox.OutboxRow] = []
        self._readable_again: list[int] = []
        # The hub keeps one watermark per (store, box epoch, lane).
        self._epoch = store.epoch(conn)

    # -- lifecycle ---------------------------------------------------------

    def setup(self) -> None:
        """Recover in_flight rows, open the clients, assign the confirm partition."""
        with store.transaction(self.conn):
            self.conn.execute(OFFSETS_DDL)
            requeued = outbox.requeue_in_flight(self.conn)
        if requeued:
            logger.info("in_flight rows requeued at start count=%d", requeued)
        self._producer = self._new_producer()
        self._consumer = self._new_consumer()
        self._try_assign()

    def _try_assign(self) -> bool:
        """Assign the confirm partition; a broker that is down is retried later.

        Without the partition the step neither reads confirmations nor
        produces, so nothing moves until the broker answers (a leg that
        exited instead would only be restarted to wait the same way).
        """
        if time.monotonic() < self._assign_at:
            return False
        try:
            self._assign_confirmations()
        except TransportError as exc:
            self._confirm_partition = -1
            self._assign_at = time.monotonic() + _ASSIGN_RETRY_S
            logger.warning("confirmations not assigned, will retry error=%s", exc)
            return False
        return True

    def close(self) -> None:
        """Flush (bounded), write the last reports, close the clients."""
        if self._producer is not None:
            left = self._producer.flush(self.settings.shipper.flush_timeout_s)
            if left:
                logger.warning(
                    "flush timed out, rows stay in_flight count=%d elapsed_s=%.1f",
                    left,
                    self.settings.shipper.flush_timeout_s,
                )
            self._commit(_Step(reports=self._take_reports()))
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def status(self) -> str:
        """Unconfirmed rows by state, and messages confirmed since the start.

        Every heartbeat: only the index's unconfirmed part is read.
        """
        counts = outbox.unconfirmed_counts(self.conn)
        text = " ".join(f"{name}={value}" for name, value in counts.items())
        total = store.counters(self.conn).get("shipper.confirmed", 0)
        held = ",".join(f"{n}:{r.id}" for n, r in sorted(self._unreadable.items()))
        return f"{text} confirmed_total={total}" + (
            f" unreadable={held}" if held else ""
        )

    # -- the step ----------------------------------------------------------

    def step(self) -> bool:
        """Read confirmations, produce a batch, write everything in one commit."""
        if self._confirm_partition < 0 and not self._try_assign():
            return False
        if self._fatal:
            self._replace_producer()
        work = _Step()
        self._producer.poll(0)
        # With max_in_flight spent, nothing can go out before a confirmation
        # comes in: wait for one in Kafka (returns as soon as it arrives)
        # rather than in the runner's idle pause.
        self._read_confirmations(work, _STARVED_WAIT_S if self._starved else 0.0)
        work.produced = self._produce()
        work.unreadable, self._to_park = self._to_park, []
        work.readable_again, self._readable_again = self._readable_again, []
        self._producer.poll(0)
        work.reports = self._take_reports()
        self._commit(work)
        return work.busy() or self._starved

    def _produce(self) -> list[int]:
        budget = self.settings.shipper.max_in_flight - outbox.unconfirmed(self.conn)
        self._starved = budget <= 0
        limit = min(budget, self.settings.pipeline.batch)
        if self._unreadable and time.monotonic() >= self._unreadable_retry_at:
            # Read the held rows again: a restored dictionary frees the lane.
            self._unreadable.clear()
        skip = self._held | self._unreadable.keys()
        produced: list[int] = []
        for row in outbox.next_batch(self.conn, limit, skip, self._unpacker):
            if row.fault is not None:
                self._hold_unreadable(row)
                continue
            if row.id in self._parked_ids:
                self._parked_ids.discard(row.id)
                self._readable_again.append(row.id)
            try:
                self._producer.produce(
                    self.settings.kafka.changes_topic,
                    value=row.value,
                    key=self.key,
                    on_delivery=functools.partial(self._on_delivery, row.id, row.lane),
                )
            except BufferError:
                # Local queue full: what was not produced stays pending.
                break
            except KafkaException as exc:
                error = translate(exc, "produce")
                logger.warning("produce refused outbox_id=%d error=%s", row.id, error)
                break
            produced.append(row.id)
            self._outstanding[row.lane] += 1
        return produced

    def _hold_unreadable(self, row: outbox.OutboxRow) -> None:
        """Hold the row's lane; park and log the row once (see the module doc)."""
        self._unreadable[row.lane] = row
        self._unreadable_retry_at = time.monotonic() + _UNREADABLE_RETRY_S
        if row.id not in self._parked_ids:
            self._parked_ids.add(row.id)
            self._to_park.append(row)

    def _on_delivery(
        self, outbox_id: int, lane: int, err: KafkaError | None, msg: Any
    ) -> None:
        # Runs inside poll()/flush(): memory only, SQLite is written by step().
        self._outstanding[lane] -= 1
        if err is not None:
            # The row and the rest of its lane go back to pending: hold the
            # lane until the copies still in the producer have reported.
            self._held.add(lane)
            self._reports.append(outbox.Delivery(outbox_id, -1, -1, err.str()))
        else:
            self._reports.append(
                outbox.Delivery(outbox_id, msg.partition(), msg.offset())
            )

    def _take_reports(self) -> list[outbox.Delivery]:
        reports, self._reports = self._reports, []
        return reports

    def _commit(self, work: _Step) -> None:
        now = time.time()
        if not (
            work.busy()
            or (work.next_offset is not None and work.next_offset != self._next_offset)
            or self._sweep_due(now)
        ):
            # Nothing to write: no transaction, so an idle step costs no
            # write lock and no fsync (it polls every few ms after work).
            return
        with store.transaction(self.conn):
            outbox.mark_in_flight(self.conn, work.produced, now)
            acked, failed = outbox.apply_deliveries(self.conn, work.reports)
            # Every report received so far is written now: a held lane with
            # no copy left in the producer may go again from its first pending.
            self._held = {n for n in self._held if self._outstanding[n] > 0}
            confirmed = self._apply_confirms(work)
            self._park_unreadable(work)
            self._pacer.confirmed(work.confirms, now)
            resent = self._sweep(now)
            for name, count in (
                ("shipper.sent", acked),
                ("shipper.delivery_errors", failed),
                ("shipper.confirmed", confirmed),
                ("shipper.resends", resent),
            ):
                if count:
                    store.bump(self.conn, name, count)
        if failed:
            first = next(r for r in work.reports if r.error)
            logger.warning(
                "delivery failed, rows back to pending count=%d outbox_id=%d error=%s",
                failed,
                first.outbox_id,
                first.error,
            )
        if resent:
            logger.warning("lane stalled, sending again count=%d", resent)
            # Rows of a stalled lane may still have copies in the producer.
            self._held |= {n for n, left in self._outstanding.items() if left > 0}

    def _park_unreadable(self, work: _Step) -> None:
        """Dead letters of rows that cannot be read; one per row, across restarts."""
        for row in work.unreadable:
            where = outbox.position(row)
            logger.error(
                "payload unreadable, lane held table=%s outbox_id=%d position=%s"
                " error=%s",
                row.table,
                row.id,
                where,
                row.error,
            )
            # Once per row: its id joined _parked_ids (loaded from the parked
            # letters at start), so it is not in work.unreadable again.
            fault = row.fault
            assert fault is not None  # next_batch places one on every such row
            store.park(
                self.conn,
                stage="shipper",
                reason=f"payload unreadable, lane held: {fault.reason}"[:500],
                table=row.table,
                position=where,
                field=fault.field or "payload",
                byte_offset=fault.offset,
                data=fault.data,
                expected=fault.expected,
            )
        for oid in work.readable_again:
            self.conn.execute(
                "UPDATE dead_letters SET state = 'retried' WHERE stage = 'shipper'"
                " AND position LIKE ? AND state = 'parked'",
                (f"outbox_id={oid} %",),
            )
            logger.info("payload readable again, lane goes on outbox_id=%d", oid)

    def _sweep_due(self, now: float) -> bool:
        timeout = self.settings.shipper.confirm_timeout_s
        return (
            now - self._last_sweep >= min(1.0, timeout / 4)
            or now - self._last_prune >= _PRUNE_EVERY_S
        )

    def _sweep(self, now: float) -> int:
        """Resend stalled lanes (paced), now and then prune (inside the commit)."""
        timeout = self.settings.shipper.confirm_timeout_s
        resent = 0
        if now - self._last_sweep >= min(1.0, timeout / 4):
            resent = self._pacer.sweep(self.conn, now)
            self._last_sweep = now
        if now - self._last_prune >= _PRUNE_EVERY_S:
            pruned = outbox.prune(
                self.conn, self.settings.pipeline.replay_window_h, now
            )
            self._last_prune = now
            store.bump(self.conn, "shipper.pruned", pruned)
            raw, changes = store.prune_processed(
                self.conn, self.settings.pipeline.processed_keep_h, now
            )
            if max(raw, changes) >= store.PRUNE_ROWS or pruned >= outbox.PRUNE_ROWS:
                # More to go (after an outage's backlog aged out): again in
                # a second, each time a short transaction.
                self._last_prune = now - _PRUNE_EVERY_S + 1.0
            for name, count in (("raw", raw), ("changes", changes)):
                if count:
                    store.bump(self.conn, f"shipper.pruned_{name}", count)
            if pruned or raw or changes:
                logger.debug(
                    "pruned confirmed=%d raw_entries=%d changes=%d",
                    pruned,
                    raw,
                    changes,
                )
        return resent

    # -- confirmations -----------------------------------------------------

    def _assign_confirmations(self) -> None:
        topic = self.settings.kafka.confirm_topic
        partitions = topic_partitions(self._consumer, topic, _METADATA_TIMEOUT_S)
        self._confirm_partition = partition_for(self.key, partitions)
        row = self.conn.execute(
            "SELECT next_offset FROM shipper_offsets WHERE topic = ? AND partition = ?",
            (topic, self._confirm_partition),
        ).fetchone()
        if row is not None:
            self._next_offset = int(row[0])
        else:
            # First start: confirmations before now answer nothing of ours.
            self._next_offset = self._high_watermark(topic)
            with store.transaction(self.conn):
                self._save_offset(self._next_offset)
        self._consumer.assign(
            [TopicPartition(topic, self._confirm_partition, self._next_offset)]
        )
        logger.info(
            "confirmations assigned topic=%s partition=%d offset=%d",
            topic,
            self._confirm_partition,
            self._next_offset,
        )

    def _high_watermark(self, topic: str) -> int:
        tp = TopicPartition(topic, self._confirm_partition)
        deadline = time.monotonic() + _METADATA_TIMEOUT_S
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    tp, timeout=_METADATA_TIMEOUT_S
                )
            except KafkaException as exc:
                # A partition just created or moving has no leader for a moment;
                # librdkafka does not flag those codes as retriable.
                error = exc.args[0]
                transient = error.retriable() or error.code() in _LEADERLESS
                if transient and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise translate(exc, f"watermarks topic={topic}") from exc
            return int(high)

    def _save_offset(self, next_offset: int) -> None:
        self.conn.execute(
            "INSERT INTO shipper_offsets (topic, partition, next_offset, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET"
            " next_offset = excluded.next_offset, updated_at = excluded.updated_at",
            (
                self.settings.kafka.confirm_topic,
                self._confirm_partition,
                next_offset,
                time.time(),
            ),
        )

    def _read_confirmations(self, work: _Step, wait_s: float = 0.0) -> None:
        """Take the confirmations already fetched; with none, wait up to ``wait_s``."""
        try:
            messages = self._consumer.consume(_CONFIRM_READ, timeout=0)
            if not messages and wait_s > 0:
                first = self._consumer.poll(wait_s)
                if first is not None:
                    messages = [first]
                    messages += self._consumer.consume(_CONFIRM_READ - 1, timeout=0)
        except KafkaException as exc:
            raise translate(exc, "consume confirmations") from exc
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise TransportError(f"kafka confirm consumer: {err.str()}")
                logger.warning("confirm topic error error=%s", err.str())
                continue
            work.next_offset = msg.offset() + 1
            self._parse_confirmation(msg.value() or b"", work)

    def _parse_confirmation(self, raw: bytes, work: _Step) -> None:
        try:
            value = json.loads(raw)
            if value.get("store") != self.settings.store.id:
                return
            if value.get("epoch") != self._epoch:
                return  # the box this one replaced: its lanes are not ours
            if "type" in value:
                self._guardian_request(value, raw, work)
                return
            lane, upto = value["lane"], value["upto"]
            if not isinstance(lane, int) or not isinstance(upto, int):
                raise TypeError("lane and upto must be integers")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            work.bad_confirms.append((f"bad confirmation: {exc}"[:200], raw))
            return
        work.confirms[lane] = max(upto, work.confirms.get(lane, upto))

    def _guardian_request(self, value: dict[str, Any], raw: bytes, work: _Step) -> None:
        """A hub request for the guardian (docs/guardian.md §4), kept for later."""
        if value.get("type") != "guardian":
            reason = f"confirmation of unknown type {str(value.get('type'))[:40]!r}"
            work.bad_confirms.append((reason, raw))
            return
        request, run, table = value.get("request"), value.get("run"), value.get("table")
        if not all(isinstance(v, str) and v for v in (request, run, table)):
            reason = "bad guardian request: request, run and table must be text"
            work.bad_confirms.append((reason, raw))
            return
        work.guardian.append(value)

    def _apply_confirms(self, work: _Step) -> int:
        confirmed = 0
        for lane, upto in sorted(work.confirms.items()):
            confirmed += outbox.confirm(self.conn, lane, upto)
        now = time.time()
        for value in work.guardian:
            # OR IGNORE: a re-delivered request (offset not yet saved) is harmless.
            self.conn.execute(
                "INSERT OR IGNORE INTO guardian_requests (request, received_at, run,"
                " table_name, body, state) VALUES (?, ?, ?, ?, ?, 0)",
                (
                    value["request"],
                    now,
                    value["run"],
                    value["table"],
                    json.dumps(value, ensure_ascii=False),
                ),
            )
        if work.guardian:
            store.bump(self.conn, "shipper.guardian_requests", len(work.guardian))
        for reason, raw in work.bad_confirms:
            store.park(self.conn, stage="shipper", reason=reason, data=raw[:4096])
        if work.next_offset is not None and work.next_offset != self._next_offset:
            self._save_offset(work.next_offset)
            self._next_offset = work.next_offset
        return confirmed

    # -- clients -----------------------------------------------------------

    def _new_producer(self) -> Any:
        timeout = min(max(self.settings.shipper.confirm_timeout_s, 5.0), 300.0)
        conf = producer_config(
            self.settings.kafka,
            client_id=f"shipper-{self.settings.store.id}",
            delivery_timeout_s=timeout,
        )
        conf["error_cb"] = self._on_error
        try:
            return Producer(conf)
        except KafkaException as exc:
            raise translate(exc, "create producer") from exc

    def _new_consumer(self) -> Any:
        conf = consumer_config(
            self.settings.kafka,
            group_id=f"shipper-{self.settings.store.id}",
            client_id=f"shipper-{self.settings.store.id}",
        )
        try:
            return Consumer(conf)
        except KafkaException as exc:
            raise translate(exc, "create consumer") from exc

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
        else:
            logger.warning("kafka client error error=%s", err.str())

    def _replace_producer(self) -> None:
        """A fatal producer error: drop it, requeue its rows, start a new one."""
        logger.warning("producer failed fatally, recreating error=%s", self._fatal)
        try:
            self._producer.purge()
            self._producer.poll(0)
        except (KafkaException, RuntimeError) as exc:
            logger.warning("purge of failed producer refused error=%s", exc)
        self._commit(_Step(reports=self._take_reports()))
        with store.transaction(self.conn):
            outbox.requeue_in_flight(self.conn)
        self._fatal = ""
        self._outstanding.clear()
        self._held.clear()
        self._producer = self._new_producer()


def build(settings: BoxSettings) -> ShipperLeg:
    """The shipper leg on the configured pipeline database."""
    return ShipperLeg(settings, store.connect(settings.pipeline.db_path))
