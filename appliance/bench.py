"""``appliance bench``: the relay's figures beside this machine's raw limits.

Not a timed test: it prints figures, so the ratio between what the relay
does and what its parts could do at best can be read on the machine at hand
(docs/benchmarks.md). ``appliance bench`` (scenario ``relay``,
:mod:`appliance.benchrelay`) runs issue 9's scenarios (catch-up, sustained,
latency with the polling and the waiting read, memory, outbox bytes, cost on
the IBM i) and prints one table: figure, target, raw limit, ratios.
``appliance bench guardian`` (:mod:`appliance.benchguard`) times the
guardian on one large table instead.

This module holds what both share: the raw limits of the same machine,
measured against the same services in the same run:

- SQLite: batched inserts, one fsync per batch (``synchronous=FULL``, WAL:
  the outbox's durability);
- Kafka: raw produce (the shipper's producer settings: ``acks=all``,
  idempotent, zstd) to a topic of its own, then raw consume of those
  messages (one consumer, every partition);
- PostgreSQL: raw batched upsert into a logged table (one commit per batch);
- one message through all three, one at a time (SQLite commit, produce
  with delivery, consume, PostgreSQL commit): the latency floor;
- the decoder alone on the record images a run's miner stored (records/s,
  this process, no JT400);
- the journal windows the miner would read, through the same ODBC driver
  and query, nothing stored (the source read's limit).

Each throughput part also says the CPU it cost per row (``cpu_us_per_row``,
:class:`appliance.benchprocs.PartCpu`): this process (every thread) plus the
servers serving it: the broker, the PostgreSQL backend and the cluster's
shared helpers. The payloads are the caller's (the relay bench passes a
sample of its own messages) or :data:`PAYLOAD`.

Invariants: every raw measure uses its own table, topic or file (nothing of
the relay's data is touched) and removes its table and topic afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from appliance import benchguard
from appliance.benchprocs import PartCpu, cores, listening_pid, pg_shared_pids
from appliance.config import KafkaSection
from appliance.devstack import Services

if TYPE_CHECKING:
    from appliance.emulator import Head

logger = logging.getLogger(__name__)

RAW_ROWS = 50_000
BATCH = 500
CHAIN_MESSAGES = 300
CHAIN_WARM_UP = 10
DECODE_MAX = 200_000
PAYLOAD = json.dumps(
    {
        "op": "u",
        "table": "PRIX",
        "key": {"ARTNUM": "000123"},
        "after": {"ARTNUM": "000123", "PRIX": "12.50", "LIBELLE": "Crème fraîche"},
        "before": {"ARTNUM": "000123", "PRIX": "12.40", "LIBELLE": "Crème fraîche"},
        "source": {"receiver": "QSQJRN0001", "sequence": 123456},
    }
)
_UPSERT = (
    "INSERT INTO {0} AS t VALUES (%s, %s, %s) ON CONFLICT (pk)"
    " DO UPDATE SET data = excluded.data, version = excluded.version"
    " WHERE t.version < excluded.version"
)


def main(args: argparse.Namespace) -> int:
    services = Services.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    try:
        return _main(args, services, workdir)
    finally:
        # Its pipeline databases hold hundreds of MB per run.
        if getattr(args, "keep_workdir", False):
            print(f"bench directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _main(args: argparse.Namespace, services: Services, workdir: Path) -> int:
    if getattr(args, "scenario", "relay") == "guardian":
        found = benchguard.run(
            services,
            workdir,
            rows=getattr(args, "rows", benchguard.ROWS),
            differences=getattr(args, "differences", benchguard.DIFFERENCES),
        )
        found["raw"] = raw_limits(services, workdir, found.pop("odh_db"))
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            benchguard.show(found)
        return 0
    from appliance import benchrelay, benchtable

    results = benchrelay.run(
        services,
        workdir,
        benchrelay.Sizes(
            changes=args.changes,
            sustained_s=args.sustained_s,
            paced_rate=args.paced_rate,
            paced_seconds=args.paced_seconds,
            writers=args.writers,
            miner_entries=args.miner_entries,
            raw_rows=args.raw_rows,
        ),
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        benchtable.show(results)
    return 0


def raw_limits(
    services: Services,
    workdir: Path,
    odh_db: str,
    *,
    rows: int = RAW_ROWS,
    chain: int = 0,
    payloads: Sequence[bytes] = (PAYLOAD.encode(),),
) -> dict[str, Any]:
    """SQLite, Kafka and PostgreSQL at their best on this machine, same services.

    Rates per second, and under ``cpu_us_per_row`` the machine's CPU each
    part spent per row, by process and in total. ``payloads`` are used in
    turn (one JSON message each). ``chain`` > 0 also sends that many
    messages one at a time through all three (the latency floor, p50/p99 in
    ms).
    """
    texts = [p.decode() for p in payloads]
    sqlite_rate, sqlite_cpu = _raw_sqlite(workdir / "raw.db", rows, texts)
    produced, consumed, kafka_cpu = _raw_kafka(
        services.kafka_bootstrap, rows, list(payloads)
    )
    pg_rate, pg_cpu = _raw_pg(services, odh_db, rows, texts)
    found: dict[str, Any] = {
        "sqlite_rows_per_s": sqlite_rate,
        "kafka_msgs_per_s": produced,
        "kafka_consumed_per_s": consumed,
        "pg_upserts_per_s": pg_rate,
        "payload_bytes": round(sum(map(len, payloads)) / len(payloads), 1),
        "payloads": len(payloads),
        "cores": cores(),
        "cpu_us_per_row": {"sqlite": sqlite_cpu, **kafka_cpu, "pg_upsert": pg_cpu},
    }
    if chain:
        found.update(
            _raw_chain(services, workdir / "chain.db", odh_db, chain, list(payloads))
        )
    return found


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload TEXT)")
    return conn


def _raw_sqlite(
    path: Path, rows: int, texts: list[str]
) -> tuple[float, dict[str, float]]:
    conn = _sqlite(path)
    batches = [
        [(texts[i % len(texts)],) for i in range(start, min(rows, start + BATCH))]
        for start in range(0, rows, BATCH)
    ]
    with PartCpu() as cpu:
        started = time.perf_counter()
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (payload) VALUES (?)", batch)
            conn.execute("COMMIT")
        rate = rows / (time.perf_counter() - started)
    conn.close()
    return round(rate), cpu.us_per(rows)


@contextmanager
def _topic(bootstrap: str, partitions: int) -> Iterator[str]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    try:
        yield topic
    finally:
        # Waited for: unawaited, the request could still be queued when the
        # process ended, and the topic stayed.
        try:
            admin.delete_topics([topic])[topic].result(30)
        except KafkaException as exc:
            logger.warning("raw topic not deleted topic=%s error=%s", topic, exc)


def _producer(bootstrap: str) -> Any:
    """The shipper's producer (:func:`appliance.kafka.producer_config`)."""
    from confluent_kafka import Producer

    from appliance.kafka import producer_config

    return Producer(
        producer_config(KafkaSection(bootstrap=bootstrap), client_id="bench-raw")
    )


def _consumer(bootstrap: str, topic: str, partitions: int) -> Any:
    """The sink's consumer settings, assigned every partition from the start."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from appliance.kafka import consumer_config

    conf = consumer_config(
        KafkaSection(bootstrap=bootstrap),
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        client_id="bench-raw",
    )
    consumer = Consumer({**conf, "fetch.wait.max.ms": 10})
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    )
    return consumer


def _broker(bootstrap: str) -> list[int]:
    """The broker's pid when it listens on this machine (else nothing)."""
    host, _, port = bootstrap.split(",", maxsplit=1)[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        return []
    pid = listening_pid(int(port))
    return [pid] if pid else []


def _raw_kafka(
    bootstrap: str, rows: int, values: list[bytes]
) -> tuple[float, float, dict[str, dict[str, float]]]:
    """Produce ``rows`` messages, then consume them all: both rates, both CPUs."""
    broker = _broker(bootstrap)
    with _topic(bootstrap, 3) as topic:
        producer = _producer(bootstrap)
        with PartCpu(broker=lambda: broker) as produce_cpu:
            started = time.perf_counter()
            for n in range(rows):
                value = values[n % len(values)]
                while True:
                    try:
                        producer.produce(topic, value, key=b"RE01")
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
            producer.flush(60)
            produced = rows / (time.perf_counter() - started)
        producer.close()  # its threads would count in the consume's CPU
        consumer = _consumer(bootstrap, topic, 3)
        got = 0
        with PartCpu(broker=lambda: broker) as consume_cpu:
            started = time.perf_counter()
            deadline = started + 120
            while got < rows and time.perf_counter() < deadline:
                got += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
            consumed = got / (time.perf_counter() - started)
        consumer.close()
    cpu = {
        "kafka_produce": produce_cpu.us_per(rows),
        "kafka_consume": consume_cpu.us_per(got),
    }
    return round(produced), round(consumed), cpu


@contextmanager
def _pg_table(pg: psycopg.Connection[Any]) -> Iterator[sql.Composed]:
    """A logged table of its own in the ODH database (as the hub's tables are),
    dropped afterwards: its commits wait for the WAL flush."""
    table = sql.Identifier(f"bench_raw_{uuid.uuid4().hex[:8]}")
    pg.execute(
        sql.SQL(
            "CREATE TABLE {0} (pk text PRIMARY KEY, data jsonb, version bigint)"
        ).format(table)
    )
    pg.commit()
    try:
        yield sql.SQL(_UPSERT).format(table)
    finally:
        pg.rollback()
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {0}").format(table))
        pg.commit()


def _pg_servers(pg: psycopg.Connection[Any]) -> dict[str, Any]:
    """This connection's backend and its cluster's shared helpers (PartCpu)."""
    row = pg.execute("SELECT pg_backend_pid()").fetchone()
    pg.commit()
    backend = int(row[0]) if row else 0
    return {
        "backend": lambda: [backend] if backend else [],
        "shared": lambda: pg_shared_pids(backend) if backend else [],
    }


def _raw_pg(
    services: Services, dbname: str, rows: int, texts: list[str]
) -> tuple[float, dict[str, float]]:
    with psycopg.connect(services.conninfo(dbname)) as pg, _pg_table(pg) as upsert:
        batches = [
            [
                (str(i % 20_000), texts[i % len(texts)], i)
                for i in range(start, min(rows, start + BATCH))
            ]
            for start in range(0, rows, BATCH)
        ]
        with PartCpu(**_pg_servers(pg)) as cpu, pg.cursor() as cur:
            started = time.perf_counter()
            for batch in batches:
                cur.executemany(upsert, batch)
                pg.commit()
            rate = rows / (time.perf_counter() - started)
        return round(rate), cpu.us_per(rows)


def _raw_chain(
    services: Services, path: Path, odh_db: str, messages: int, values: list[bytes]
) -> dict[str, float]:
    """One message at a time: SQLite commit, produce, consume, PG commit."""
    lite = _sqlite(path)
    bootstrap = services.kafka_bootstrap
    lat: list[float] = []
    with (
        _topic(bootstrap, 1) as topic,
        psycopg.connect(services.conninfo(odh_db)) as pg,
        _pg_table(pg) as upsert,
    ):
        producer = _producer(bootstrap)
        consumer = _consumer(bootstrap, topic, 1)
        for n in range(-CHAIN_WARM_UP, messages):
            value = values[n % len(values)]
            started = time.perf_counter()
            lite.execute("BEGIN IMMEDIATE")
            lite.execute("INSERT INTO t (payload) VALUES (?)", (value.decode(),))
            lite.execute("COMMIT")
            producer.produce(topic, value, key=b"RE01")
            producer.flush(30)
            message = None
            while message is None or message.error():
                message = consumer.poll(10.0)
            pg.execute(
                upsert, (str(n % 100), message.value().decode(), n + CHAIN_WARM_UP)
            )
            pg.commit()
            if n >= 0:  # the first ones wait for the consumer's fetch set-up
                lat.append((time.perf_counter() - started) * 1000)
        consumer.close()
        producer.close()
    lite.close()
    lat.sort()
    return {
        "chain_messages": messages,
        "chain_p50_ms": round(statistics.median(lat), 2),
        "chain_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
    }


def raw_odbc(box_config: Path, head: Head) -> dict[str, Any]:
    """The same windows read through ODBC, nothing stored: the read's limit.

    ``cpu_us_per_entry``: this process (pyodbc, psqlODBC) and, on the
    emulator, the PostgreSQL backend serving the connection and the
    cluster's shared helpers; the emulator's 50 ms per call is a sleep.
    """
    from appliance import config, journal, source

    ibmi = config.load_box(box_config).ibmi
    query = journal.window_sql(ibmi.dialect)
    conn = source.connect(ibmi)
    try:
        servers: dict[str, Any] = {}
        if ibmi.dialect == "emulator":
            pid = source.fetch_all(conn, "SELECT pg_backend_pid()", (), "pid")[0][0]
            servers = {
                "backend": lambda: [int(pid)],
                "shared": lambda: pg_shared_pids(int(pid)),
            }
        rows = calls = 0
        start = 1
        with PartCpu(**servers) as cpu:
            started = time.perf_counter()
            while head.sequence is not None and start <= head.sequence:
                end = start + ibmi.window - 1
                params = (
                    ibmi.journal_library,
                    ibmi.journal_name,
                    head.receiver_library,
                    head.receiver_name,
                    Decimal(start),
                    head.receiver_library,
                    head.receiver_name,
                    Decimal(end),
                )
                rows += len(source.fetch_all(conn, query, params, "raw read"))
                calls += 1
                start = end + 1
            seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {
        "rows": rows,
        "round_trips": calls,
        "entries_per_s": round(rows / seconds, 1) if seconds else 0.0,
        "round_trips_per_s": round(calls / seconds, 2) if seconds else 0.0,
        "cpu_us_per_entry": cpu.us_per(rows),
    }


def raw_decode(db: Path, limit: int = DECODE_MAX) -> dict[str, float]:
    """The decoder alone on the bench's own record images (one process)."""
    from appliance import decoder, layouts

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        history = layouts.LayoutHistory(conn)
        decoders: dict[str, Any] = {}
        images = []
        for obj, data, null_map in conn.execute(
            "SELECT object, data, null_map FROM raw_entries WHERE code = 'R'"
            " AND length(data) > 0 LIMIT ?",
            (limit,),
        ):
            table = f"{obj[10:20].strip()}/{obj[:10].strip()}"
            if table not in decoders:
                versions = [v for v in history.versions(table) if v.layout]
                if not versions:
                    continue
                layout = versions[-1].layout
                assert layout is not None
                decoders[table] = decoder.compile_layout(layout)
            images.append((decoders[table], bytes(data), null_map))
        changes = conn.execute("SELECT count(*) FROM changes").fetchone()[0] or 1
        records = conn.execute(
            "SELECT count(*) FROM raw_entries WHERE code = 'R'"
        ).fetchone()[0]
    finally:
        conn.close()
    with PartCpu() as cpu:
        started = time.perf_counter()
        for record_decoder, image, null_map in images:
            record_decoder.decode_record(image, null_map)
        seconds = time.perf_counter() - started
    return {
        "records": len(images),
        "records_per_s": round(len(images) / seconds) if seconds else 0,
        "records_per_change": round(records / changes, 3),
        "cpu_us_per_record": cpu.us_per(len(images))["total"],
    }
