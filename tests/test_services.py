"""The real services started by scripts/services.py answer as the relay expects."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return services.ensure_up()


def test_state_file_shape(state: dict[str, Any]) -> None:
    assert state == services.load_state()
    assert state["kafka"]["bootstrap"].startswith("127.0.0.1:")
    assert state["postgres"]["host"] == "127.0.0.1"
    password_file = Path(state["postgres"]["password_file"])
    assert password_file.stat().st_mode & 0o077 == 0


def test_kafka_round_trip(state: dict[str, Any]) -> None:
    bootstrap = state["kafka"]["bootstrap"]
    topic = f"services-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)],
        operation_timeout=30,
    )
    created[topic].result(timeout=30)
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        payload = uuid.uuid4().bytes
        producer.produce(topic, key=b"k", value=payload)
        assert producer.flush(30) == 0

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{topic}-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe([topic])
            received = None
            deadline = time.monotonic() + 60
            while received is None and time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    continue
                received = message
            assert received is not None, "no message consumed within 60s"
            assert received.key() == b"k"
            assert received.value() == payload
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)


@pytest.mark.parametrize("dbname", ["ibmi", "odh"])
def test_postgres_select_one(state: dict[str, Any], dbname: str) -> None:
    pg = state["postgres"]
    password = Path(pg["password_file"]).read_text().strip()
    with (
        psycopg.connect(
            host=pg["host"],
            port=pg["port"],
            user=pg["user"],
            password=password,
            dbname=dbname,
            connect_timeout=10,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
