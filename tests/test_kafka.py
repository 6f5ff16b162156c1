"""The Kafka boundary: Java-compatible partitioning and client settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import KafkaSection
from appliance.errors import ConfigError, TransportError
from appliance.kafka import (
    common_config,
    consumer_config,
    murmur2,
    partition_for,
    producer_config,
)

# Reference values computed once with Java, Kafka 4.1.1's
# org.apache.kafka.common.utils.Utils.murmur2(key.getBytes(UTF_8)), then
# Utils.toPositive(h) % 3 (kafka-clients-4.1.1.jar from the services cache).
JAVA_MURMUR2 = [
    ("", 275646681, 0),
    ("a", -1563381124, 1),
    ("ab", 316155434, 2),
    ("abc", 479470107, 0),
    ("abcd", -1323649548, 2),
    ("abcde", 461995741, 1),
    ("MQ01", -657819191, 0),
    ("GP01", -2060669026, 1),
    ("RE01", -726077822, 0),
    ("GF01", -1053886230, 2),
    ("SM01", -478912535, 0),
    ("STORE123456", 1998083781, 0),
    ("héllo", 614509002, 0),
    ("The quick brown fox jumps over the lazy dog", 495243318, 0),
]


@pytest.mark.parametrize(("key", "java_hash", "partition"), JAVA_MURMUR2)
def test_murmur2_matches_java(key: str, java_hash: int, partition: int) -> None:
    """Hash and partition of 3 equal what the Java client computes."""
    assert murmur2(key.encode()) == java_hash
    assert partition_for(key.encode(), 3) == partition


def test_partition_for_rejects_zero_partitions() -> None:
    """A topic without partitions is a transport error, not a ZeroDivisionError."""
    with pytest.raises(TransportError, match="partition count"):
        partition_for(b"MQ01", 0)


def test_producer_is_idempotent_acks_all_with_java_partitioner() -> None:
    """The shipper's guarantees come from these settings."""
    conf = producer_config(KafkaSection(), client_id="t", delivery_timeout_s=30)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["partitioner"] == "murmur2_random"
    assert conf["message.timeout.ms"] == 30_000
    assert conf["compression.type"] in {"lz4", "zstd"}


def test_consumer_never_commits_by_itself() -> None:
    """Offsets are committed by the legs after their own commit only."""
    conf = consumer_config(KafkaSection(), group_id="g", client_id="c")
    assert conf["enable.auto.commit"] is False
    assert conf["enable.auto.offset.store"] is False
    assert conf["group.id"] == "g"


def test_sasl_ssl_reads_password_from_file_and_sets_ca(tmp_path: Path) -> None:
    """SASL_SSL takes the password from its file and the CA bundle path."""
    secret = tmp_path / "kafka.password"
    secret.write_text("s3cr3t-value\n")
    kafka = KafkaSection(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="mq01",
        password_file=secret,
        ca_file=tmp_path / "ca.pem",
    )
    conf = common_config(kafka)
    assert conf["sasl.password"] == "s3cr3t-value"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem")


def test_sasl_ssl_missing_password_names_credential_not_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No password file: a ConfigError naming the credential."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    kafka = KafkaSection(
        security_protocol="SASL_SSL",
        sasl_username="mq01",
        password_file=tmp_path / "absent",
    )
    with pytest.raises(ConfigError, match="kafka-password"):
        common_config(kafka)


def test_plaintext_carries_no_sasl_settings() -> None:
    """Loopback PLAINTEXT: no SASL keys at all."""
    conf = common_config(KafkaSection())
    assert not any(key.startswith("sasl.") for key in conf)
