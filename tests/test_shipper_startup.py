"""The shipper's start-up survives a confirm partition that has no leader yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from appliance import store
from appliance.config import BoxSettings
from appliance.shipper import ShipperLeg


class LeaderlessThenReady:
    """get_watermark_offsets fails like a just-created partition, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return (0, 42)


def test_not_leader_at_start_is_waited_out(tmp_path: Path) -> None:
    """NOT_LEADER_FOR_PARTITION is not 'retriable' to librdkafka, but transient.

    Seen on a loaded CI machine: the shipper's set-up failed at once instead of
    waiting for the new partition's leader.
    """
    settings = BoxSettings(store={"id": "MQ01"}, pipeline={"db_path": tmp_path / "p"})
    leg = ShipperLeg(settings, store.connect(tmp_path / "p.db"))
    consumer = LeaderlessThenReady(failures=3)
    leg._consumer = consumer
    leg._confirm_partition = 0
    assert leg._high_watermark("odh.confirm") == 42
    assert consumer.calls == 4
