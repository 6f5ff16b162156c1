"""The Kafka boundary: client settings, error translation, the Java partitioner.

The only module that turns a :class:`~appliance.config.KafkaSection` into
librdkafka settings and ``confluent_kafka`` errors into
:class:`~appliance.errors.TransportError`. The SASL password comes from a file
or the systemd credential ``kafka-password`` and never reaches a log line or
an error message.

Security: over ``SSL`` and ``SASL_SSL`` the broker's certificate is always
verified, chain (``kafka.ca_file``, else the system's CA store) and name
(endpoint identification ``https``); no setting turns either off. The SASL
mechanisms are PLAIN and SCRAM-SHA-512 with the password above, and
OAUTHBEARER with Google Managed Kafka's token
(:class:`~appliance.gcp_token.GoogleTokenSource` as ``oauth_cb``, minting
from the service account key or reading an agent's token file). See
docs/kafka-security.md.

Partitioning: both the shipper and the hub use librdkafka's
``murmur2_random`` partitioner, which is the Java client's default. The
shipper reads the confirmations of its own store only, so it must compute the
partition the hub's producer chose: :func:`partition_for` does that the way
``org.apache.kafka.clients.producer.internals.BuiltInPartitioner`` does,
``toPositive(murmur2(key)) % partitions``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from appliance.config import KafkaSection, read_secret
from appliance.errors import ConfigError, TransportError
from appliance.gcp_token import GoogleTokenSource

logger = logging.getLogger(__name__)

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK32 = 0xFFFFFFFF
_ADMIN_TIMEOUT_S = 30.0


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as Java's signed 32-bit ``int``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = data[whole:]
    if tail:
        # Java falls through from case 3 to case 1: every tail byte counts.
        for index in range(len(tail) - 1, -1, -1):
            h ^= tail[index] << (8 * index)
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner gives a keyed record."""
    if partitions < 1:
        raise TransportError(f"partition count must be >= 1 (got {partitions})")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def translate(exc: BaseException, doing: str) -> TransportError:
    """A confluent_kafka error as a TransportError naming what was being done."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc
    if isinstance(err, KafkaError):
        text = f"{err.name()}: {err.str()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return TransportError(f"kafka {doing} failed: {text[:300]}")


def common_config(kafka: KafkaSection) -> dict[str, Any]:
    """Settings shared by every client: servers, TLS, SASL, logging."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap,
        "security.protocol": kafka.security_protocol,
        "logger": logging.getLogger("confluent_kafka"),
    }
    if kafka.security_protocol != "PLAINTEXT":
        conf["enable.ssl.certificate.verification"] = True
        conf["ssl.endpoint.identification.algorithm"] = "https"
        if kafka.ca_file is not None:
            conf["ssl.ca.location"] = str(kafka.ca_file)
    if kafka.security_protocol == "SASL_SSL":
        conf.update(_sasl_config(kafka))
    return conf


def _sasl_config(kafka: KafkaSection) -> dict[str, Any]:
    if kafka.sasl_mechanism == "OAUTHBEARER":
        return _oauth_config(kafka)
    if not kafka.sasl_username:
        raise ConfigError("kafka.sasl_username: required with SASL_SSL (got '')")
    return {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": read_secret("kafka-password", kafka.password_file),
    }


def _oauth_config(kafka: KafkaSection) -> dict[str, Any]:
    """Google Managed Kafka: librdkafka asks ``oauth_cb`` for each token.

    The token's origin is the service account key (store boxes) or a token
    file kept fresh by an agent of the host; the settings allow exactly one.
    The key file is read here, so a bad key fails the leg at start.
    """
    credentials, token_file = kafka.oauth_credentials_file, kafka.oauth_token_file
    if credentials is not None and token_file is None:
        source = GoogleTokenSource.from_credentials(
            credentials,
            kafka.oauth_service_account,
            ca_file=kafka.oauth_ca_file,
            timeout_s=kafka.oauth_timeout_s,
        )
    elif token_file is not None and credentials is None:
        source = GoogleTokenSource(token_file, kafka.oauth_service_account)
    else:
        raise ConfigError(
            "kafka.oauth_credentials_file, kafka.oauth_token_file: exactly one"
            " is required with OAUTHBEARER"
        )
    return {"sasl.mechanism": "OAUTHBEARER", "oauth_cb": source}


def producer_config(
    kafka: KafkaSection, *, client_id: str, delivery_timeout_s: float = 300.0
) -> dict[str, Any]:
    """An idempotent, ordered, acks=all producer with Java's partitioner."""
    conf = common_config(kafka)
    conf.update(
        {
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "zstd",
            "partitioner": "murmur2_random",
            "message.timeout.ms": int(delivery_timeout_s * 1000),
        }
    )
    return conf


def consumer_config(
    kafka: KafkaSection, *, group_id: str, client_id: str
) -> dict[str, Any]:
    """A consumer that never commits by itself: offsets are the caller's job."""
    conf = common_config(kafka)
    conf.update(
        {
            "client.id": client_id,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    return conf


def topic_partitions(client: Any, topic: str, timeout_s: float = 10.0) -> int:
    """Partition count of ``topic`` from cluster metadata."""
    try:
        meta = client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise translate(exc, f"metadata topic={topic}") from exc
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error.str() if info is not None and info.error else "missing"
        raise TransportError(f"kafka topic {topic!r} unusable: {reason}")
    return len(info.partitions)


def ensure_topics(
    kafka: KafkaSection, partitions: int = 3, replication: int = 1
) -> list[str]:
    """Create the changes and confirm topics when missing; return those created."""
    admin = AdminClient(common_config(kafka))
    wanted = [kafka.changes_topic, kafka.confirm_topic]
    try:
        existing = set(admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise translate(exc, "list topics") from exc
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, partitions, replication) for t in missing],
        operation_timeout=_ADMIN_TIMEOUT_S,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=_ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise translate(exc, f"create topic={topic}") from exc
        else:
            created.append(topic)
            logger.info("topic created topic=%s count=%d", topic, partitions)
    _wait_for_leaders(admin, created)
    return created


def _wait_for_leaders(admin: AdminClient, topics: list[str]) -> None:
    """Block until every partition of ``topics`` has a leader (new topics lag)."""
    deadline = time.monotonic() + _ADMIN_TIMEOUT_S
    for topic in topics:
        while True:
            info = admin.list_topics(topic, timeout=_ADMIN_TIMEOUT_S).topics.get(topic)
            parts = info.partitions.values() if info is not None else []
            if parts and all(p.leader >= 0 and p.error is None for p in parts):
                break
            if time.monotonic() > deadline:
                raise TransportError(f"kafka topic {topic!r} has no leader yet")
            time.sleep(0.1)
