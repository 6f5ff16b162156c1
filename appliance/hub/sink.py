"""The hub sink leg: applies change messages to the ODH, then confirms them.

Responsibilities, per batch read from ``kafka.changes_topic``:

1. in ONE PostgreSQL transaction: create the ODH table of a table seen for
   the first time, apply each message under the watermark rule and the
   version guard, record it in ``applied``, park what cannot be applied in
   ``dead_letters``, advance the watermarks; commit;
2. then publish ``{"store", "lane", "upto"}`` on ``kafka.confirm_topic`` for
   every (store, lane) the batch touched, duplicates included, so that a
   resend is always answered;
3. then commit the Kafka offsets;
4. then the guardian's evaluator (:mod:`appliance.hub.guardian`) takes the
   checksum messages (op ``g``) whose fences are met, at most
   ``sink.guardian_items`` per step, and publishes its requests.

Guardian messages ride the same lanes: an ``r`` row (a row read at the
source) is applied under the rule of docs/guardian.md section 1
(``version >= existing``, after NULL -> tombstone) and recorded in
``guardian_repairs``; a ``g`` message is stored in ``guardian_pending`` in
the apply transaction and counts as applied. Both are content-checked like
any message, so a malformed one is parked and its lane moves on.

Invariants:

- A message is applied at most once: only ``lane_seq == watermark + 1`` is
  applied, and ``applied`` has (store, lane, lane_seq) as primary key.
- Offsets are committed only after PostgreSQL committed. A crash in between
  re-reads the batch, and the watermark turns it into duplicates.
- A confirmation is published only after PostgreSQL committed, so ``upto``
  never names a message that is not durably in the ODH.
- Nothing blocks a lane for good. A message whose store, lane and lane_seq
  can be read but whose content cannot be applied (unknown op, bad table
  name, missing key, a text holding U+0000, a value PostgreSQL rejects) is
  *poison*: it is parked in ``dead_letters`` with the reason and its bytes,
  and the watermark moves past it as if applied (it does not get an
  ``applied`` row). A message without a readable store/lane/lane_seq (a
  store id holding U+0000 included) is parked and touches no watermark.

Worked example (store MQ01, lane 0, watermark 40)::

    batch: 42, 41, 41 (a resend), 44, 43 (poison: op "x")
    sorted: 41 -> applied (w=41); 41 -> duplicate; 42 -> applied (w=42);
            43 -> parked, w=43; 44 -> applied (w=44)
    COMMIT; publish {"store":"MQ01","lane":0,"upto":44}; commit offsets.
    Had 43 been missing: 44 is a gap (counted, left; the shipper sends it
    again after its timeout), and the confirmation says upto=42.

PostgreSQL failure: the transaction rolls back, the connection is dropped,
the consumer seeks back to the first offset of the batch in each partition
(the last committed ones), and the step reconnects with a doubling backoff.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from appliance import jsontext
from appliance.config import HubSettings, read_secret
from appliance.errors import SinkError, TransportError
from appliance.hub import guardian, odh
from appliance.kafka import consumer_config, producer_config, translate

logger = logging.getLogger(__name__)

SCHEMA = "store-relay/1"
OPS = frozenset("cudrtg")
_POLL_S = 0.2
_CONFIRM_FLUSH_S = 10.0
_BACKOFF_FIRST_S = 1.0
# A connection attempt is cheap; the long run lost up to 30 s after each
# PostgreSQL restart waiting for a 30 s step of the backoff.
_BACKOFF_MAX_S = 8.0


@dataclass
class _Incoming:
    """One message of a batch, parsed as far as it goes."""

    topic: str
    partition: int
    offset: int
    raw: bytes
    value: dict[str, Any] | None
    reason: str = ""
    # Read once from a value whose identity is valid (``value`` not None):
    # (store, box epoch, lane), the stream a watermark counts, and the place
    # in it.
    lane_key: tuple[str, int, int] = ("", 0, 0)
    lane_seq: int = 0


class SinkLeg:
    """Kafka -> ODH -> confirmations. See the module docstring."""

    name = "sink"
    # An idle step already waited in poll() for a message (returning as soon
    # as one comes): the runner's pause after it is kept short, only enough
    # not to spin while PostgreSQL is down (daemon.run).
    idle_first_s = 0.001
    idle_max_s = 0.02

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.schema = settings.sink.schema_name
        self.counts: Counter[str] = Counter()
        self._pg: psycopg.Connection[Any] | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._tables: set[str] = set()
        self._backoff_s = _BACKOFF_FIRST_S
        self._retry_at = 0.0
        # Work the evaluator may have left (bounded steps, or a restart).
        self._guardian_due = True

    # -- lifecycle ---------------------------------------------------------

    def setup(self) -> None:
        """Open Kafka clients and connect to PostgreSQL (a database down is retried).

        PostgreSQL unreachable at start is an outage like any other: the step
        reconnects with the doubling backoff instead of the leg exiting.
        """
        try:
            self._pg = self._connect()
        except SinkError as exc:
            self._retry_at = time.monotonic() + self._backoff_s
            logger.warning("postgresql unreachable at start, will retry error=%s", exc)
        kafka = self.settings.kafka
        try:
            self._consumer = Consumer(
                consumer_config(
                    kafka, group_id=self.settings.sink.group_id, client_id="odh-sink"
                )
            )
            self._consumer.subscribe([kafka.changes_topic])
            self._producer = Producer(producer_config(kafka, client_id="odh-sink"))
        except KafkaException as exc:
            raise translate(exc, "create clients") from exc

    def close(self) -> None:
        """Flush confirmations (bounded), leave the group, close PostgreSQL."""
        if self._producer is not None:
            left = self._producer.flush(_CONFIRM_FLUSH_S)
            if left:
                logger.warning("confirmations not flushed at close count=%d", left)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def status(self) -> str:
        names = (
            "applied",
            "duplicates",
            "gaps",
            "stale",
            "dead_letters",
            "pg_errors",
            "guardian_evaluated",
        )
        return " ".join(f"{name}={self.counts[name]}" for name in names)

    # -- the step ----------------------------------------------------------

    def step(self) -> bool:
        """Apply one batch, confirm it, commit its offsets."""
        self._producer.poll(0)
        if self._pg is None and not self._reconnect():
            return False
        messages = self._consume()
        if not messages:
            return self._guardian()
        batch = [self._parse(m) for m in messages]
        try:
            marks, counts, tables = self._apply(batch)
        except SinkError as exc:
            self._failed(exc, batch)
            return False
        self._tables |= tables
        self.counts.update(counts)
        self.counts["batches"] += 1
        self._confirm(marks)
        self._commit_offsets(batch)
        # Any batch may meet a fence, store a checksum or answer a repair.
        self._guardian_due = True
        self._guardian()
        return True

    def _guardian(self) -> bool:
        """Evaluate ready checksums and publish requests, bounded; True = did work.

        A PostgreSQL failure here is retried on a later step (the pending
        items and queued messages stay where they are).
        """
        if not self._guardian_due or self._pg is None:
            return False
        limit = self.settings.sink.guardian_items
        try:
            done = guardian.evaluate(self._pg, self.schema, limit)
            sent = guardian.publish(
                self._pg,
                self.schema,
                self._producer,
                self.settings.kafka.confirm_topic,
                limit * 4,
            )
        except psycopg.Error as exc:
            self.counts["pg_errors"] += 1
            logger.warning(
                "guardian step failed, will retry error=%s",
                _describe(exc, "guardian step"),
            )
            self._pg.close()
            self._pg = None
            self._retry_at = time.monotonic() + self._backoff_s
            return False
        except KafkaException as exc:
            logger.warning("guardian publish failed, will retry error=%s", exc)
            return False
        self.counts["guardian_evaluated"] += done
        self.counts["guardian_published"] += sent
        self._guardian_due = bool(done or sent)
        return self._guardian_due

    def _consume(self) -> list[Any]:
        # What is already fetched is taken at once; with nothing there, wait
        # for the first message only (poll returns as soon as one arrives,
        # where consume would wait the whole timeout for a full batch: up to
        # 200 ms of latency added to every message at a moderate rate).
        batch = self.settings.sink.batch
        try:
            messages = self._consumer.consume(batch, timeout=0)
            if not messages:
                first = self._consumer.poll(_POLL_S)
                messages = [] if first is None else [first]
                if first is not None and batch > 1:
                    messages += self._consumer.consume(batch - 1, timeout=0)
        except KafkaException as exc:
            raise translate(exc, "consume changes") from exc
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.fatal():
                raise TransportError(f"kafka changes consumer: {err.str()}")
            else:
                logger.warning("changes topic error error=%s", err.str())
        return good

    def _parse(self, msg: Any) -> _Incoming:
        raw = msg.value() or b""
        item = _Incoming(msg.topic(), msg.partition(), msg.offset(), raw, None)
        try:
            value = jsontext.loads(raw, allow_nan=False)
        except ValueError as exc:
            item.reason = f"bad json: {exc}"
            return item
        item.reason = _identity_problem(value)
        if not item.reason:
            item.value = value
            item.lane_key = (value["store"], value["epoch"], value["lane"])
            item.lane_seq = value["lane_seq"]
        return item

    # -- the transaction ---------------------------------------------------

    def _apply(
        self, batch: list[_Incoming]
    ) -> tuple[dict[tuple[str, int, int], int], Counter[str], set[str]]:
        """The batch in one transaction; return watermarks, counts, new tables."""
        assert self._pg is not None
        counts: Counter[str] = Counter()
        try:
            with self._pg.transaction():
                for item in batch:
                    if item.value is None:
                        self._park(item, item.reason)
                        counts["dead_letters"] += 1
                todo, marks, first = self._decide(batch, counts)
                tables = self._write_all(todo, counts)
                for lane, upto in marks.items():
                    if upto != first[lane]:
                        odh.set_watermark(self._pg, self.schema, lane, upto)
        except psycopg.Error as exc:
            raise SinkError(_describe(exc, "apply batch")) from exc
        return marks, counts, tables

    def _decide(
        self, batch: list[_Incoming], counts: Counter[str]
    ) -> tuple[
        list[_Incoming],
        dict[tuple[str, int, int], int],
        dict[tuple[str, int, int], int],
    ]:
        """The watermark rule: which messages to write, in order, and the new marks.

        Locks each lane's watermark row (in sorted order, so two sinks cannot
        deadlock) and parks poison on the way; a parked message advances its
        lane like an applied one.
        """
        assert self._pg is not None
        ordered = sorted(
            (i for i in batch if i.value is not None),
            key=lambda i: (i.lane_key, i.lane_seq),
        )
        todo: list[_Incoming] = []
        marks: dict[tuple[str, int, int], int] = {}
        first: dict[tuple[str, int, int], int] = {}
        for item in ordered:
            lane = item.lane_key
            if lane not in marks:
                first[lane] = odh.lock_watermark(self._pg, self.schema, lane)
                marks[lane] = first[lane]
            if item.lane_seq <= marks[lane]:
                counts["duplicates"] += 1
                continue
            if item.lane_seq > marks[lane] + 1:
                counts["gaps"] += 1
                continue
            reason = _content_problem(item.value or {}) or _nul_problem(item)
            if reason:
                self._park(item, reason)
                counts["dead_letters"] += 1
            else:
                todo.append(item)
            marks[lane] = item.lane_seq
        return todo, marks, first

    def _write_all(self, todo: list[_Incoming], counts: Counter[str]) -> set[str]:
        """Write the rows, batched; on a refused value, one by one to find it.

        The fast path writes the whole batch in one savepoint (one set-based
        statement per group of :func:`_statements`). When
        PostgreSQL refuses a value (a DataError), that savepoint is rolled
        back and each message gets its own savepoint, so only the culprit is
        parked. Returns the ODH tables created.
        """
        assert self._pg is not None
        try:
            with self._pg.transaction():
                fast, tables = self._write_runs(todo)
        except psycopg.DataError:
            tables = set()
            for item in todo:
                try:
                    with self._pg.transaction():
                        one, created = self._write_runs([item], tables)
                except psycopg.DataError as exc:
                    where = _where(item.value or {})
                    self._park(item, _describe(exc, f"rejected by postgresql {where}"))
                    counts["dead_letters"] += 1
                    continue
                counts.update(one)
                tables |= created
            return tables
        counts.update(fast)
        return tables

    def _write_runs(
        self, items: list[_Incoming], known: set[str] | None = None
    ) -> tuple[Counter[str], set[str]]:
        """Create new tables, write runs of like rows, record ``applied``."""
        assert self._pg is not None
        msgs = [i.value for i in items if i.value is not None]
        counts: Counter[str] = Counter()
        created: set[str] = set()
        seen = self._tables | (known or set())
        for msg in msgs:
            table = msg["table"].lower()
            if msg["op"] == "g":
                continue
            if table not in seen and table not in created:
                odh.ensure_table(self._pg, self.schema, msg["table"])
                created.add(table)
        for (_table, op), rows, pks in _statements(msgs):
            if op == "t":
                for msg in rows:
                    odh.truncate(self._pg, self.schema, msg)
                continue
            if op == "g":
                odh.store_pending(self._pg, self.schema, rows)
                counts["guardian_pending"] += len(rows)
                continue
            if op == "r":
                outcomes = odh.apply_reads(self._pg, self.schema, rows)
                counts.update({f"guardian_{k}": v for k, v in outcomes.items()})
                counts["guardian_reads"] += len(rows)
                continue
            changed = odh.upsert(
                self._pg, self.schema, rows, deleted=op == "d", pks=pks
            )
            counts["stale"] += len(rows) - changed
        odh.record_applied(self._pg, self.schema, msgs)
        counts["applied"] += len(msgs)
        return counts, created

    def _park(self, item: _Incoming, reason: str) -> None:
        assert self._pg is not None
        value = item.value or {}
        odh.park(
            self._pg,
            self.schema,
            reason=reason,
            raw=item.raw,
            topic=item.topic,
            partition=item.partition,
            offset=item.offset,
            store_id=value.get("store"),
            lane=value.get("lane"),
            lane_seq=value.get("lane_seq"),
        )
        logger.warning(
            "message parked topic=%s partition=%d offset=%d reason=%s",
            item.topic,
            item.partition,
            item.offset,
            reason[:120],
        )

    # -- after the commit --------------------------------------------------

    def _confirm(self, marks: dict[tuple[str, int, int], int]) -> None:
        """Publish ``upto`` per touched lane; a lost one is answered on resend."""
        topic = self.settings.kafka.confirm_topic
        for (store_id, epoch, lane), upto in sorted(marks.items()):
            value = json.dumps(
                {"store": store_id, "epoch": epoch, "lane": lane, "upto": upto}
            )
            try:
                self._producer.produce(topic, value=value.encode(), key=store_id)
            except (BufferError, KafkaException) as exc:
                logger.warning(
                    "confirmation not sent topic=%s lane=%d error=%s",
                    topic,
                    lane,
                    exc,
                )
                continue
            self.counts["confirms"] += 1
        left = self._producer.flush(_CONFIRM_FLUSH_S)
        if left:
            logger.warning("confirmations not flushed topic=%s count=%d", topic, left)

    def _commit_offsets(self, batch: list[_Incoming]) -> None:
        offsets = [
            TopicPartition(topic, partition, offset + 1)
            for (topic, partition), offset in _last_offsets(batch).items()
        ]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The batch is in the ODH; re-reading it only yields duplicates.
            logger.warning("offset commit failed error=%s", translate(exc, "commit"))

    # -- PostgreSQL failures -----------------------------------------------

    def _failed(self, exc: SinkError, batch: list[_Incoming]) -> None:
        self.counts["pg_errors"] += 1
        logger.warning(
            "batch rolled back, will retry count=%d error=%s", len(batch), exc
        )
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        for (topic, partition), offset in _first_offsets(batch).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as seek_exc:
                # Revoked meanwhile: its new owner starts from the committed offset.
                logger.warning(
                    "seek back failed partition=%d offset=%d error=%s",
                    partition,
                    offset,
                    translate(seek_exc, "seek"),
                )
        self._retry_at = time.monotonic() + self._backoff_s

    def _reconnect(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._pg = self._connect()
        except SinkError as exc:
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + self._backoff_s
            logger.warning(
                "postgresql unreachable attempt_in_s=%.0f error=%s",
                self._backoff_s,
                exc,
            )
            return False
        self._backoff_s = _BACKOFF_FIRST_S
        logger.info("postgresql reconnected")
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self.settings.postgres
        password = read_secret("odh-password", pg.password_file)
        try:
            conn = psycopg.connect(
                host=pg.host,
                port=pg.port,
                dbname=pg.database,
                user=pg.user,
                password=password,
                sslmode=pg.sslmode,
                connect_timeout=10,
                application_name="appliance-sink",
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise SinkError(_describe(exc, f"connect host={pg.host}")) from exc
        try:
            with conn.transaction():
                odh.ensure_base(conn, self.schema)
        except psycopg.Error as exc:
            conn.close()
            raise SinkError(_describe(exc, "create base tables")) from exc
        return conn


def _identity_problem(value: Any) -> str:
    """Why store/lane/lane_seq cannot be read, or ''."""
    if not isinstance(value, dict):
        return f"expected a JSON object (got {type(value).__name__})"
    store_id = value.get("store")
    if not isinstance(store_id, str) or not store_id:
        return f"store: expected a non-empty string (got {repr(store_id)[:40]})"
    if "\x00" in store_id:
        # Every watermark, applied row and dead letter holds the store id as
        # text, which PostgreSQL refuses with a NUL: the batch would roll
        # back at every retry. Parked without a lane (repr escapes the NUL).
        return (
            f"store: expected text without U+0000 (NUL)"
            f" (got {repr(store_id)[:40]}, bytes {_hex(store_id)})"
        )
    for name, low in (("epoch", 0), ("lane", 0), ("lane_seq", 1)):
        got = value.get(name)
        if not isinstance(got, int) or isinstance(got, bool) or got < low:
            return f"{name}: expected an integer >= {low} (got {repr(got)[:40]})"
    return ""


def _content_problem(value: dict[str, Any]) -> str:
    """Why a message with a valid identity cannot be applied, or ''."""
    schema = value.get("schema", SCHEMA)
    if schema != SCHEMA:
        return f"schema: expected {SCHEMA!r} (got {repr(schema)[:40]})"
    op = value.get("op")
    if op not in OPS:
        return f"op: expected one of c, u, d, r, t, g (got {repr(op)[:40]})"
    table = value.get("table")
    if not isinstance(table, str):
        return f"table: expected an SQL table name (got {repr(table)[:40]})"
    try:
        odh.table_ident("odh", table)
    except SinkError as exc:
        return str(exc)
    if not _is_int(value.get("version")) or value["version"] < 1:
        return f"version: expected a positive integer (got {value.get('version')!r})"
    if op == "g":
        return guardian.body_problem(value.get("guardian"), value["version"])
    if op != "t" and (not isinstance(value.get("key"), dict) or not value["key"]):
        return "key: expected a non-empty JSON object"
    if op in ("c", "u") and not isinstance(value.get("after"), dict):
        return f"after: expected a JSON object for op {op!r}"
    if op == "r" and not isinstance(value.get("after"), dict | None):
        return "after: expected a JSON object or null for op 'r'"
    for name in ("before", "enrichment", "source"):
        if value.get(name) is not None and not isinstance(value[name], dict):
            return f"{name}: expected a JSON object or null"
    return ""


# JSON writes U+0000 only as this escape (a control character is never raw
# in a string), so a message whose bytes lack it holds no NUL. Most messages
# hold no backslash at all: a one-byte search rules them out (~150 ns on a
# 400-byte message, where the six-byte search took ~290 ns).
_BACKSLASH = b"\\"
_NUL_ESCAPE = b"\\u0000"
_NUL_EXPECTED = "text without U+0000 (PostgreSQL refuses it in text and jsonb)"


def _nul_problem(item: _Incoming) -> str:
    """Where a message holds U+0000 (NUL), or ''.

    PostgreSQL refuses the character in text (psycopg says so before
    sending) and in jsonb (22P05, "unsupported Unicode escape sequence"),
    so such a message can never be applied: it is parked before it is
    written, with the table, the key, the field (its path in the message:
    ``after.PRIX``, ``key.ARTNUM``, a name holding the NUL included) and the
    UTF-8 bytes of the offending text. The dead letter keeps the message's
    bytes as received. A ``\\u0000`` that is not a NUL (an escaped
    backslash before ``u0000``) finds no NUL in the walk and is no problem.
    """
    raw = item.raw
    if _BACKSLASH not in raw or _NUL_ESCAPE not in raw:
        return ""
    found = _nul_in(item.value, "")
    if found is None:
        return ""
    path, text = found
    return (
        f"NUL character (U+0000) {_where(item.value or {})} field={path}"
        f" bytes={_hex(text)} expected={_NUL_EXPECTED}"
    )


def _nul_in(value: Any, path: str) -> tuple[str, str] | None:
    """(path, text) of the first string holding U+0000 in ``value``, or None."""
    if isinstance(value, str):
        return (path or "(value)", value) if "\x00" in value else None
    if isinstance(value, dict):
        for name, item in value.items():
            inner = f"{path}.{_shown(name)}" if path else _shown(name)
            if "\x00" in name:
                return inner, name
            found = _nul_in(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_in(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _shown(text: str) -> str:
    """A name as JSON writes it, without quotes: a NUL shows as ``\\u0000``."""
    return json.dumps(text)[1:-1]


def _hex(text: str) -> str:
    """The UTF-8 bytes of ``text`` in hex, the first 32 (``...`` when more)."""
    data = text.encode("utf-8", "surrogatepass")
    more = "..." if len(data) > 32 else ""
    return data[:32].hex(" ").upper() + more


def _where(value: dict[str, Any]) -> str:
    """``table=.. key=..`` of a message for a dead letter's reason."""
    key = value.get("key")
    shown = json.dumps(key, sort_keys=True, default=repr) if key is not None else "-"
    return f"table={value.get('table')} key={shown[:120]}"


_Statement = tuple[tuple[str, str], list[dict[str, Any]], list[str]]
"""(table, kind of write), its messages in order, and for an upsert or a
delete group each message's key text (:func:`odh.key_text`; empty for the
other kinds)."""


def _statements(msgs: list[dict[str, Any]]) -> list[_Statement]:
    """The batch as statements: like rows together, one statement each.

    Each statement is one round trip to PostgreSQL (``odh.upsert`` writes a
    group in one set-based statement, more only when a key repeats in it),
    and a lane mixes tables and ops (PRIX u, STOCK u, ARTICLE c, PRIX d...),
    so writing runs of consecutive like rows cost a round trip every two or
    three rows: 80% of the sink's time was waiting for those. Upserts (c/u)
    and deletes (d) of a table are therefore gathered across the batch, each
    group keeping its messages in order, up to the next message that must
    stay in place (t, r, g) or the next message of a key already waiting in
    ANOTHER group (a delete after an update of one key stays after it: the
    tombstone keeps the last image when the delete carries none). So the
    writes of every key happen in lane order, and the version guard sees what
    it saw before. A key is told by its stored text (``pk``), computed here
    once per message and handed on to the write.
    """
    out: list[_Statement] = []
    pending: dict[tuple[str, str], tuple[list[dict[str, Any]], list[str]]] = {}
    owner: dict[tuple[str, str], tuple[str, str]] = {}

    def flush() -> None:
        out.extend((group, rows, pks) for group, (rows, pks) in pending.items())
        pending.clear()
        owner.clear()

    for msg in msgs:
        group = _run_key(msg)
        if group[1] not in ("u", "d"):
            flush()
            if out and out[-1][0] == group:
                out[-1][1].append(msg)
            else:
                out.append((group, [msg], []))
            continue
        pk = odh.key_text(msg["key"])
        ident = (group[0], pk)
        if owner.get(ident, group) != group:
            flush()
        owner[ident] = group
        rows, pks = pending.setdefault(group, ([], []))
        rows.append(msg)
        pks.append(pk)
    flush()
    return out


def _run_key(msg: dict[str, Any]) -> tuple[str, str]:
    """Messages written by one statement: same table, same kind of write."""
    op = msg["op"]
    return msg["table"].lower(), op if op in ("d", "t", "r", "g") else "u"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(exc: psycopg.Error, doing: str) -> str:
    """A short error text: the SQLSTATE and the first line, no connection string."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    state = exc.sqlstate or type(exc).__name__
    return f"{doing}: {state} {first[:200]}"


def _first_offsets(batch: list[_Incoming]) -> dict[tuple[str, int], int]:
    first: dict[tuple[str, int], int] = {}
    for item in batch:
        key = (item.topic, item.partition)
        first[key] = min(item.offset, first.get(key, item.offset))
    return first


def _last_offsets(batch: list[_Incoming]) -> dict[tuple[str, int], int]:
    last: dict[tuple[str, int], int] = {}
    for item in batch:
        key = (item.topic, item.partition)
        last[key] = max(item.offset, last.get(key, item.offset))
    return last


def build(settings: HubSettings) -> SinkLeg:
    """The sink leg for these settings (connects in ``setup``)."""
    return SinkLeg(settings)
