"""``appliance bench``: the relay's rates beside the raw limits of this machine.

Not a timed test: it prints figures, so the ratio between what the relay
does and what its parts could do at best can be read on the machine at hand.

1. catch-up: N changes are written to the emulator with the legs stopped,
   then the legs start; changes/s = N / seconds until the relay has drained.
2. latency: the legs run while the store writes at a paced rate; for every
   applied message, latency = hub commit time - journal entry time (UTC).
3. raw limits, same machine, same services: batched SQLite inserts with
   fsync per batch (the outbox's durability), raw produce to the same broker
   (acks=all, idempotent), raw upsert into the same PostgreSQL.

``appliance bench guardian`` (scenario ``guardian``, :mod:`appliance.benchguard`)
times the guardian on one large table instead: verifying it with no drift,
then finding and repairing scattered differences, beside the same raw limits.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from appliance import benchguard
from appliance.devstack import Services, Stack

RAW_ROWS = 50_000
BATCH = 500
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


def main(args: argparse.Namespace) -> int:
    services = Services.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="appliance-bench-"))
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
    stack = Stack(services, workdir, name="bench", store_id="RE01")
    stack.prepare()
    results: dict[str, Any] = {}
    results["catch_up"] = _catch_up(stack, args.changes)
    results["latency"] = _latency(stack, args.paced_rate, args.paced_seconds)
    stack.close()
    results["raw"] = raw_limits(services, workdir, stack.odh_db)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


def _catch_up(stack: Stack, changes: int) -> dict[str, float]:
    from appliance.emulator import workload

    emulator = stack.emulator()
    workload.seed_store(emulator, articles=500, seed=21)
    workload.run(emulator, rate_per_s=1e9, changes=changes, seed=22)
    started = time.monotonic()
    stack.start_legs()
    stack.wait_drained(timeout_s=1800, settle_s=0.25)
    seconds = time.monotonic() - started
    counts = stack.counts()
    return {
        "changes": counts["transformer.changes"],
        "messages": counts["hub.applied"],
        "seconds": round(seconds, 1),
        "changes_per_s": round(counts["transformer.changes"] / seconds, 1),
    }


def _latency(stack: Stack, rate: float, seconds: float) -> dict[str, float]:
    from appliance.emulator import workload

    with stack.pipeline() as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
    workload.run(stack.emulator(), rate_per_s=rate, duration_s=seconds, seed=23)
    stack.wait_drained(timeout_s=600, settle_s=0.25)
    with stack.pipeline() as conn:
        entry_ms = {
            row[0]: json.loads(row[1])["ts_ms"]
            for row in conn.execute(
                "SELECT id, payload FROM outbox WHERE id > ?", (first,)
            )
        }
    with psycopg.connect(stack.services.conninfo(stack.odh_db)) as pg:
        applied = pg.execute(
            "SELECT outbox_id, extract(epoch FROM applied_at) * 1000"
            " FROM odh.applied WHERE outbox_id > %s",
            (first,),
        ).fetchall()
    lat = sorted(float(at) - entry_ms[oid] for oid, at in applied if oid in entry_ms)
    if not lat:
        return {"messages": 0}
    return {
        "rate_per_s": rate,
        "messages": len(lat),
        "p50_ms": round(statistics.median(lat), 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
        "max_ms": round(lat[-1], 1),
    }


def raw_limits(services: Services, workdir: Path, odh_db: str) -> dict[str, float]:
    """SQLite, Kafka and PostgreSQL at their best on this machine, same services."""
    return {
        "sqlite_rows_per_s": _raw_sqlite(workdir / "raw.db"),
        "kafka_msgs_per_s": _raw_kafka(services.kafka_bootstrap),
        "pg_upserts_per_s": _raw_pg(services, odh_db),
    }


def _raw_sqlite(path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    started = time.perf_counter()
    for _ in range(0, RAW_ROWS, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t (payload) VALUES (?)", [(PAYLOAD,)] * BATCH)
        conn.execute("COMMIT")
    rate = RAW_ROWS / (time.perf_counter() - started)
    conn.close()
    return round(rate)


def _raw_kafka(bootstrap: str) -> float:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    value = PAYLOAD.encode()
    started = time.perf_counter()
    for _ in range(RAW_ROWS):
        while True:
            try:
                producer.produce(topic, value, key=b"RE01")
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    rate = RAW_ROWS / (time.perf_counter() - started)
    admin.delete_topics([topic])
    return round(rate)


def _raw_pg(services: Services, dbname: str) -> float:
    with psycopg.connect(services.conninfo(dbname)) as pg:
        pg.execute(
            "CREATE TEMP TABLE raw_upsert (pk text PRIMARY KEY, data jsonb,"
            " version bigint)"
        )
        started = time.perf_counter()
        with pg.cursor() as cur:
            for start in range(0, RAW_ROWS, BATCH):
                rows = [
                    (str(i % 20_000), PAYLOAD, i) for i in range(start, start + BATCH)
                ]
                cur.executemany(
                    "INSERT INTO raw_upsert VALUES (%s, %s, %s) ON CONFLICT (pk)"
                    " DO UPDATE SET data = excluded.data, version = excluded.version"
                    " WHERE raw_upsert.version < excluded.version",
                    rows,
                )
                pg.commit()
        return round(RAW_ROWS / (time.perf_counter() - started))


def _print(results: dict[str, Any]) -> None:
    catch, lat, raw = results["catch_up"], results["latency"], results["raw"]
    print("relay, end to end (emulator -> ODBC -> legs -> Kafka -> PostgreSQL)")
    print(
        f"  catch-up     {catch['changes_per_s']:>10,.0f} changes/s"
        f"  ({catch['changes']} changes in {catch['seconds']} s)"
    )
    if lat.get("messages"):
        print(
            f"  latency      p50 {lat['p50_ms']:,.0f} ms  p99 {lat['p99_ms']:,.0f} ms"
            f"  max {lat['max_ms']:,.0f} ms  ({lat['messages']} messages"
            f" at {lat['rate_per_s']:.0f}/s)"
        )
    print("raw limits of this machine (same services)")
    print(f"  SQLite insert, fsync per {BATCH}  {raw['sqlite_rows_per_s']:>10,} rows/s")
    print(f"  Kafka produce, acks=all        {raw['kafka_msgs_per_s']:>10,} msgs/s")
    print(f"  PostgreSQL upsert, {BATCH}/commit  {raw['pg_upserts_per_s']:>10,} rows/s")
    slowest = min(raw.values())
    print(
        f"  relay catch-up / slowest raw part = {catch['changes_per_s'] / slowest:.2%}"
    )
