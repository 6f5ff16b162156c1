"""Shared rig of the shipper and hub-sink integration tests (real Kafka + PG).

Each rig owns unique topics (3 partitions), a unique ODH schema, a unique
consumer group and a temporary SQLite pipeline, and removes its topics and
schema at the end, so tests never clash with other users of the services.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from appliance import store
from appliance.config import BoxSettings, HubSettings, KafkaSection
from appliance.hub.sink import SinkLeg
from appliance.kafka import ensure_topics
from appliance.shipper import ShipperLeg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

STORE = "MQ01"


def payload(
    lane: int,
    lane_seq: int,
    *,
    store_id: str = STORE,
    op: str = "u",
    key: str = "000001",
    price: str = "1.00",
    version: int | None = None,
    table: str = "PRIX",
    outbox_id: int | None = None,
) -> dict[str, Any]:
    """A message as the enricher writes it (contracts.md section 3)."""
    image = {"ARTNUM": key, "PRIX": price}
    return {
        "schema": "store-relay/1",
        "store": store_id,
        "epoch": 7,
        "lane": lane,
        "lane_seq": lane_seq,
        "outbox_id": outbox_id,
        "version": version if version is not None else 1000 + lane * 100 + lane_seq,
        "op": op,
        "ts_ms": 1796407200123,
        "table": table,
        "key": {"ARTNUM": key},
        "before": image if op == "d" else None,
        "after": None if op in ("d", "t") else image,
        "source": {"store": store_id, "sequence": lane_seq},
        "enrichment": {"business_key": f"{store_id}:{key}", "message_interest": 80},
        "mined_at": 1796407200.05,
    }


class Rig:
    """Topics, schema, settings and legs of one test."""

    def __init__(
        self, tmp_path: Path, *, confirm_timeout_s: float = 30.0, batch: int = 500
    ) -> None:
        state = services.ensure_up()
        tag = uuid.uuid4().hex[:10]
        self.schema = f"t_{tag}"
        self.kafka: dict[str, Any] = {
            "bootstrap": state["kafka"]["bootstrap"],
            "changes_topic": f"t-{tag}-changes",
            "confirm_topic": f"t-{tag}-confirm",
        }
        pg = state["postgres"]
        self.box = BoxSettings(
            store={"id": STORE},
            pipeline={"db_path": tmp_path / "pipeline.db", "batch": batch},
            kafka=self.kafka,
            shipper={"confirm_timeout_s": confirm_timeout_s, "flush_timeout_s": 5},
        )
        self.hub = HubSettings(
            kafka=self.kafka,
            postgres={
                "host": pg["host"],
                "port": pg["port"],
                "user": pg["user"],
                "password_file": pg["password_file"],
                "sslmode": "disable",
            },
            sink={
                "group_id": f"sink-{tag}",
                "schema_name": self.schema,
                "batch": batch,
            },
        )
        ensure_topics(KafkaSection(**self.kafka), partitions=3)
        self.conn = store.connect(tmp_path / "pipeline.db")
        self.epoch = store.epoch(self.conn)
        self.pg = psycopg.connect(
            host=pg["host"],
            port=pg["port"],
            user=pg["user"],
            dbname="odh",
            password=Path(pg["password_file"]).read_text().strip(),
            autocommit=True,
        )
        self._legs: list[Any] = []

    def shipper(self) -> ShipperLeg:
        leg = ShipperLeg(self.box, self.conn)
        leg.setup()
        self._legs.append(leg)
        return leg

    def sink(self) -> SinkLeg:
        leg = SinkLeg(self.hub)
        leg.setup()
        self._legs.append(leg)
        return leg

    def add(self, lane: int, lane_seq: int, **fields: Any) -> int:
        """Insert one pending outbox row as the enricher would; return its id."""
        with store.transaction(self.conn):
            return self._insert(lane, lane_seq, **fields)

    def add_many(self, rows: list[tuple[int, int, str]]) -> None:
        """Insert (lane, lane_seq, key) rows in one transaction."""
        with store.transaction(self.conn):
            for lane, lane_seq, key in rows:
                self._insert(lane, lane_seq, key=key)

    def _insert(self, lane: int, lane_seq: int, **fields: Any) -> int:
        body = payload(lane, lane_seq, **fields)
        body["epoch"] = store.epoch(self.conn)
        cur = self.conn.execute(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at)"
            " VALUES (?, ?, 80, ?, ?, ?, '', 0, 0)",
            (lane, lane_seq, body["version"], body["table"], body["op"]),
        )
        row_id = int(cur.lastrowid or 0)
        body["outbox_id"] = row_id
        self.conn.execute(
            "UPDATE outbox SET payload = ? WHERE id = ?", (json.dumps(body), row_id)
        )
        return row_id

    def produce_raw(self, values: list[bytes], key: bytes = STORE.encode()) -> None:
        """Put messages on the changes topic directly (the sink's own tests)."""
        producer = Producer({"bootstrap.servers": self.kafka["bootstrap"]})
        for value in values:
            producer.produce(self.kafka["changes_topic"], value=value, key=key)
        assert producer.flush(10) == 0

    def confirmations(self, timeout_s: float = 5.0) -> list[tuple[int, dict[str, Any]]]:
        """Every (partition, confirmation) on the confirm topic so far."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka["bootstrap"],
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        topic = self.kafka["confirm_topic"]
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
            for p in range(3)
        ]
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        got: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < sum(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.2):
                if msg.error() is None:
                    got.append((msg.partition(), json.loads(msg.value())))
        consumer.close()
        return got

    def states(self) -> dict[tuple[int, int], str]:
        rows = self.conn.execute("SELECT lane, lane_seq, state FROM outbox")
        return {(r[0], r[1]): r[2] for r in rows}

    def close(self) -> None:
        for leg in self._legs:
            leg.close()
        self.pg.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.pg.close()
        self.conn.close()
        admin = AdminClient({"bootstrap.servers": self.kafka["bootstrap"]})
        topics = [self.kafka["changes_topic"], self.kafka["confirm_topic"]]
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result(timeout=30)


def pump(legs: list[Any], until: Callable[[], bool], timeout_s: float = 60.0) -> float:
    """Step the legs in turn until ``until()`` holds; return the seconds it took."""
    started = time.monotonic()
    while not until():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not reached within {timeout_s}s")
        for leg in legs:
            leg.step()
    return time.monotonic() - started


def all_confirmed(conn: sqlite3.Connection, count: int) -> Callable[[], bool]:
    def check() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE state = 'confirmed'"
        ).fetchone()
        return int(row[0]) >= count

    return check
