"""Kafka 4.1.1 in KRaft mode from the official Maven Central jars, on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from devservices.common import (
    KAFKA_HEAP,
    KAFKA_POM,
    KAFKA_SASL_USER,
    KAFKA_START_TIMEOUT,
    KAFKA_VERSION,
    LOOPBACK,
    MARKER,
    REPO,
    TLS_DAYS,
    ServiceError,
    _alive,
    _file_sha256,
    _is_ours,
    _locked,
    _make_state_dir,
    _port_is_free,
    _resolve,
    _rotate,
    _run,
    _tcp_answers,
    _terminate,
    _update_state,
    _write_secret,
    free_port,
    kafka_cache_dir,
    load_state,
)

# --------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------


def ensure_kafka_jars(cache: Path | None = None) -> tuple[Path, float | None]:
    """Copy Kafka and its runtime jars from Maven Central into the cache, once.

    Returns the libs directory and the seconds the fetch took (None when the
    cache was already complete). A marker file holding the pom's digest says
    the copy finished; a changed pom fetches again.
    """
    libs = cache if cache is not None else kafka_cache_dir()
    digest = _file_sha256(KAFKA_POM)
    marker = libs / MARKER

    def complete() -> bool:
        try:
            return marker.read_text().strip() == digest
        except OSError:
            return False

    if complete():
        return libs, None
    with _locked(libs.parent / (libs.name + ".lock")):
        if complete():
            return libs, None
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("mvn not found on PATH (apt-get install maven)")
        partial = libs.with_name(f"{libs.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
        ]
        try:
            _run(cmd, cwd=KAFKA_POM.parent)
        except ServiceError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not any(partial.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            shutil.rmtree(partial, ignore_errors=True)
            raise ServiceError(f"maven copied no kafka_2.13-{KAFKA_VERSION}.jar")
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(partial, libs)
        (libs / MARKER).write_text(digest + "\n")
        return libs, time.monotonic() - started


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceError("java not found (apt-get install openjdk-17-jre-headless)")
    return found


def _kafka_paths(state_dir: Path) -> dict[str, Path]:
    base = state_dir / "kafka"
    return {
        "base": base,
        "data": base / "data",
        "props": base / "server.properties",
        "log4j": base / "log4j2.properties",
        "log": base / "kafka.log",
        "pidfile": base / "kafka.pid",
        "cluster_id": base / "cluster.id",
        "secure": base / "sasl_ssl.json",
        "tls": base / "tls",
    }


def _previous_kafka_ports(props: Path) -> tuple[int, int] | None:
    try:
        text = props.read_text()
    except OSError:
        return None
    ports: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("listeners="):
            for item in line.split("=", 1)[1].split(","):
                name, _, rest = item.partition("://")
                with contextlib.suppress(ValueError):
                    ports[name] = int(rest.rsplit(":", 1)[1])
    broker = ports.get("PLAINTEXT", ports.get("SASL_SSL"))
    if broker is not None and "CONTROLLER" in ports:
        return broker, ports["CONTROLLER"]
    return None


def _choose_kafka_ports(props: Path) -> tuple[int, int]:
    """Reuse the last ports when they are still free, else take new ones."""
    previous = _previous_kafka_ports(props)
    if previous and all(_port_is_free(port) for port in previous):
        return previous
    while True:
        broker, controller = free_port(), free_port()
        if broker != controller:
            return broker, controller


def set_kafka_proxy(state_dir: Path | str, advertised_port: int) -> int:
    """Give the broker of ``state_dir`` a PROXIED listener; return its real port.

    The listener binds a free loopback port but advertises ``advertised_port``,
    where a fault proxy (``appliance/faults/proxy.py``) forwards to it: a
    client bootstrapped through the proxy then keeps talking through it. Takes
    effect at the broker's next start; kept across restarts.
    """
    base = _kafka_paths(_resolve(state_dir))["base"]
    base.mkdir(parents=True, exist_ok=True)
    backend = free_port()
    entry = {"advertised_port": advertised_port, "backend_port": backend}
    (base / "proxied.json").write_text(json.dumps(entry) + "\n")
    return backend


def _proxied(paths: dict[str, Path]) -> tuple[int, int] | None:
    """(advertised, backend) ports of the PROXIED listener, when configured."""
    try:
        entry = json.loads((paths["base"] / "proxied.json").read_text())
    except (OSError, ValueError):
        return None
    return int(entry["advertised_port"]), int(entry["backend_port"])


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A throwaway CA (``<name>.pem``, ``<name>.key`` 0600) made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(key), "-out", str(cert), "-days", str(TLS_DAYS),
        "-subj", f"/CN=store-relay throwaway {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def _openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise ServiceError("openssl not found on PATH (apt-get install openssl)")
    _run([tool, *args])


def _make_server_keystore(tls: Path, store_password: Path) -> None:
    """CA, then a 127.0.0.1/localhost server certificate in a PKCS12 keystore."""
    ca_cert, ca_key = make_ca(tls)
    key, csr, cert = tls / "server.key", tls / "server.csr", tls / "server.pem"
    ext = tls / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{LOOPBACK},DNS:localhost\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
        "-out", str(csr), "-subj", f"/CN={LOOPBACK}",
    )  # fmt: skip
    os.chmod(key, 0o600)
    _openssl(
        "x509", "-req", "-sha256", "-in", str(csr), "-CA", str(ca_cert),
        "-CAkey", str(ca_key), "-set_serial", str(secrets.randbits(63)),
        "-days", str(TLS_DAYS), "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    _openssl(
        "pkcs12", "-export", "-name", "kafka", "-in", str(cert), "-inkey", str(key),
        "-certfile", str(ca_cert), "-out", str(tls / "server.p12"),
        "-passout", f"file:{store_password}",
    )  # fmt: skip
    os.chmod(tls / "server.p12", 0o600)


def enable_kafka_sasl_ssl(state_dir: Path | str) -> dict[str, str]:
    """Make the broker of ``state_dir`` listen with SASL_SSL (PLAIN) only.

    Once per state directory: a throwaway CA, a server certificate for
    127.0.0.1 in a PKCS12 keystore, a generated password for the user
    ``relay`` in a 0600 file. Takes effect at the broker's next start and is
    kept across restarts; ``kafka stop --wipe`` removes it. The controller
    listener stays PLAINTEXT on loopback. Refused for the shared state
    directory, whose PLAINTEXT broker every other test uses.
    """
    resolved = _resolve(state_dir)
    if resolved == REPO / ".cache" / "services":
        raise ServiceError(f"SASL_SSL is for a state dir of its own, not {resolved}")
    paths = _kafka_paths(resolved)
    found = _secure(paths)
    if found is not None:
        return found
    tls = paths["tls"]
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    store_password = tls / "keystore.password"
    _write_secret(store_password, secrets.token_urlsafe(24))
    _make_server_keystore(tls, store_password)
    user_password = paths["base"] / f"sasl-{KAFKA_SASL_USER}.password"
    _write_secret(user_password, secrets.token_urlsafe(24))
    entry = {
        "ca_file": str(tls / "ca.pem"),
        "keystore": str(tls / "server.p12"),
        "keystore_password_file": str(store_password),
        "sasl_username": KAFKA_SASL_USER,
        "password_file": str(user_password),
    }
    paths["secure"].write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def _secure(paths: dict[str, Path]) -> dict[str, str] | None:
    """The SASL_SSL material of this broker, when it was enabled."""
    try:
        entry = json.loads(paths["secure"].read_text())
    except (OSError, ValueError):
        return None
    return {str(key): str(value) for key, value in entry.items()}


def _secure_settings(secure: dict[str, str], names: list[str]) -> dict[str, str]:
    """Broker settings of the SASL_SSL listeners ``names`` (server.properties)."""
    user = secure["sasl_username"]
    password = Path(secure["password_file"]).read_text().strip()
    store = Path(secure["keystore_password_file"]).read_text().strip()
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="{user}" password="{password}" user_{user}="{password}";'
    )
    settings = {
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": secure["keystore"],
        "ssl.keystore.password": store,
        "ssl.key.password": store,
        # The broker's own client (inter-broker listener) trusts the same CA.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": secure["ca_file"],
        "ssl.endpoint.identification.algorithm": "https",
    }
    for name in names:
        settings[f"listener.name.{name.lower()}.plain.sasl.jaas.config"] = jaas
    return settings


def _client_conf(paths: dict[str, Path]) -> dict[str, Any]:
    """librdkafka settings a readiness probe needs to talk to this broker."""
    secure = _secure(paths)
    if secure is None:
        return {}
    return {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": secure["ca_file"],
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "PLAIN",
        "sasl.username": secure["sasl_username"],
        "sasl.password": Path(secure["password_file"]).read_text().strip(),
    }


def _write_kafka_config(paths: dict[str, Path], broker: int, controller: int) -> None:
    secure = _secure(paths)
    main = "PLAINTEXT" if secure is None else "SASL_SSL"
    listeners = f"{main}://{LOOPBACK}:{broker},CONTROLLER://{LOOPBACK}:{controller}"
    advertised = f"{main}://{LOOPBACK}:{broker}"
    protocols = f"{main}:{main},CONTROLLER:PLAINTEXT"
    proxied = _proxied(paths)
    if proxied is not None:
        listeners += f",PROXIED://{LOOPBACK}:{proxied[1]}"
        advertised += f",PROXIED://{LOOPBACK}:{proxied[0]}"
        protocols += f",PROXIED:{main}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": main,
        "listener.security.protocol.map": protocols,
        "log.dirs": str(paths["data"]),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "min.insync.replicas": "1",
        "num.partitions": "3",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
    }
    if secure is not None:
        names = [main] + (["PROXIED"] if proxied is not None else [])
        settings.update(_secure_settings(secure, names))
    lines = ["# Generated by scripts/services.py; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    paths["props"].write_text("\n".join(lines) + "\n")
    if secure is not None:
        os.chmod(paths["props"], 0o600)  # it holds the passwords
    log4j = [
        "# Generated by scripts/services.py: everything to stdout,",
        "# which the script redirects into kafka.log.",
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = STDOUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.out.ref = STDOUT",
        "logger.request.name = kafka.request.logger",
        "logger.request.level = WARN",
        "logger.controller.name = kafka.controller",
        "logger.controller.level = INFO",
    ]
    paths["log4j"].write_text("\n".join(log4j) + "\n")


def _new_cluster_id() -> str:
    """A random Kafka Uuid: 16 bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _format_kafka_storage(paths: dict[str, Path], libs: Path) -> bool:
    """Format the KRaft log dir unless done before; True when formatted now."""
    if (paths["data"] / "meta.properties").exists():
        return False
    cluster_id = _new_cluster_id()
    cmd = [
        _java(),
        "-cp",
        f"{libs}/*",
        f"-Dlog4j2.configurationFile={paths['log4j']}",
        "kafka.tools.StorageTool",
        "format",
        # An id may start with '-': it must be glued to its option.
        f"--cluster-id={cluster_id}",
        "--config",
        str(paths["props"]),
    ]
    _run(cmd, cwd=paths["base"])
    paths["cluster_id"].write_text(cluster_id + "\n")
    return True


def _kafka_needles(paths: dict[str, Path]) -> tuple[str, ...]:
    return ("kafka.Kafka", str(paths["props"]))


def _kafka_metadata_ok(
    bootstrap: str, timeout: float, conf: dict[str, Any] | None = None
) -> bool:
    """Ask the broker for cluster metadata; True when it lists a broker."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        if conf:
            raise ServiceError(
                "a SASL_SSL broker is probed with confluent_kafka"
            ) from exc
        return _kafka_metadata_raw(bootstrap, timeout)
    client = AdminClient(
        {"bootstrap.servers": bootstrap, "log_level": 0, **(conf or {})}
    )
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException:  # timed out or refused: not ready yet
        return False
    return bool(metadata.brokers)


def _kafka_metadata_raw(bootstrap: str, timeout: float) -> bool:
    """Stdlib fallback: a Metadata v4 request for no topics, read the brokers."""
    host, _, port = bootstrap.rpartition(":")
    client_id = b"services.py"
    body = struct.pack(">i", 0) + b"\x00"  # no topics; no auto-creation
    header = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    request = header + body
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            reply = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    # correlation id (4) + throttle time (4), then the broker array's length.
    if len(reply) < 12 or struct.unpack(">i", reply[:4])[0] != 1:
        return False
    brokers: int = struct.unpack(">i", reply[8:12])[0]
    return brokers > 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return bytes(chunks)


def _kafka_ready(
    port: int, timeout: float = 5.0, conf: dict[str, Any] | None = None
) -> bool:
    if not _tcp_answers(port):
        return False
    return _kafka_metadata_ok(f"{LOOPBACK}:{port}", timeout, conf)


def _kafka_entry(paths: dict[str, Path], pid: int, port: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bootstrap": f"{LOOPBACK}:{port}",
        "pid": pid,
        "log": str(paths["log"]),
    }
    secure = _secure(paths)
    if secure is not None:
        entry["security_protocol"] = "SASL_SSL"
        entry["sasl_mechanism"] = "PLAIN"
        entry["sasl_username"] = secure["sasl_username"]
        entry["password_file"] = secure["password_file"]
        entry["ca_file"] = secure["ca_file"]
    return entry


def _running_kafka(state_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live broker for this state dir, from state or pid file."""
    paths = _kafka_paths(state_dir)
    needles = _kafka_needles(paths)
    entry = load_state(state_dir).get("kafka") or {}
    candidates: list[int] = []
    if isinstance(entry.get("pid"), int):
        candidates.append(entry["pid"])
    with contextlib.suppress(OSError, ValueError):
        candidates.append(int(paths["pidfile"].read_text().strip()))
    ports = _previous_kafka_ports(paths["props"])
    for pid in candidates:
        if ports and _is_ours(pid, *needles):
            return pid, ports[0]
    return None


def _launch_kafka(state_dir: Path, libs: Path) -> tuple[int, int, bool]:
    """Configure, format and spawn a detached broker: (pid, port, formatted)."""
    paths = _kafka_paths(state_dir)
    paths["base"].mkdir(parents=True, exist_ok=True)
    broker, controller = _choose_kafka_ports(paths["props"])
    _write_kafka_config(paths, broker, controller)
    formatted = _format_kafka_storage(paths, libs)
    _rotate(paths["log"])
    argv = [
        _java(),
        KAFKA_HEAP,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-XX:ErrorFile={paths['base']}/hs_err_pid%p.log",
        f"-Dlog4j2.configurationFile={paths['log4j']}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(paths["props"]),
    ]
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    # posix_spawn rather than Popen: the broker must outlive this process, and
    # a Popen object dropped while its child runs raises a ResourceWarning
    # (an error under pytest's "warnings as errors"). Unlike Popen it hands the
    # child every inheritable descriptor: those are closed, or a lock held by
    # whoever started us (flock(1) around `make bench`) would live as long as
    # the broker.
    closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
    pid = os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ),
        file_actions=[
            *closes,
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(paths["log"]), log_flags, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    paths["pidfile"].write_text(f"{pid}\n")
    return pid, broker, formatted


def _inheritable_fds() -> list[int]:
    """This process's open descriptors above 2 that a child would inherit."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return found


def _wait_kafka(state_dir: Path, pid: int, port: int) -> None:
    paths = _kafka_paths(state_dir)
    deadline = time.monotonic() + KAFKA_START_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ServiceError(f"Kafka exited during start-up; see {paths['log']}")
        if _kafka_ready(port, conf=_client_conf(paths)):
            return
        time.sleep(0.5)
    _terminate(pid, signal.SIGTERM, _kafka_needles(paths))
    raise ServiceError(
        f"Kafka not ready after {KAFKA_START_TIMEOUT:.0f}s; see {paths['log']}"
    )


def start_kafka(
    state_dir: Path | None = None, *, sasl_ssl: bool = False
) -> dict[str, Any]:
    """Start the broker unless it already runs and answers; return its entry.

    ``sasl_ssl`` first calls :func:`enable_kafka_sasl_ssl` (own state dir only).
    """
    state_dir = _resolve(state_dir)
    _make_state_dir(state_dir)
    with _locked(state_dir / ".lock"):
        if sasl_ssl and _secure(_kafka_paths(state_dir)) is None:
            if _running_kafka(state_dir) is not None:
                raise ServiceError("a PLAINTEXT broker runs here; stop it first")
            enable_kafka_sasl_ssl(state_dir)
        pending = _kafka_begin(state_dir)
        return _kafka_finish(state_dir, pending)


class _KafkaLaunch(NamedTuple):
    pid: int
    port: int
    started: float | None  # monotonic start time; None when adopted
    formatted: bool = False


def _kafka_begin(state_dir: Path) -> _KafkaLaunch:
    """Adopt a running, answering broker or spawn a new one (without waiting)."""
    paths = _kafka_paths(state_dir)
    running = _running_kafka(state_dir)
    if running is not None:
        pid, port = running
        if _kafka_ready(port, conf=_client_conf(paths)):
            return _KafkaLaunch(pid, port, None)
        # Alive but silent: give it the start-up budget, else replace it.
        try:
            _wait_kafka(state_dir, pid, port)
        except ServiceError:
            _terminate(pid, signal.SIGTERM, _kafka_needles(paths))
        else:
            return _KafkaLaunch(pid, port, None)
    libs, _ = ensure_kafka_jars()
    started = time.monotonic()
    pid, port, formatted = _launch_kafka(state_dir, libs)
    return _KafkaLaunch(pid, port, started, formatted)


def _kafka_finish(state_dir: Path, launch: _KafkaLaunch) -> dict[str, Any]:
    """Wait for a freshly spawned broker, then record it in the state file."""
    took: float | None = None
    if launch.started is not None:
        _wait_kafka(state_dir, launch.pid, launch.port)
        took = round(time.monotonic() - launch.started, 1)
    entry = _kafka_entry(_kafka_paths(state_dir), launch.pid, launch.port)
    _update_state(state_dir, "kafka", entry)
    return {**entry, "_started_in": took, "_created": launch.formatted}


def stop_kafka(state_dir: Path | None = None, *, wipe: bool = False) -> str:
    """SIGTERM the broker, SIGKILL it after STOP_TIMEOUT; optionally wipe data."""
    state_dir = _resolve(state_dir)
    if not state_dir.exists():
        return "not running"
    with _locked(state_dir / ".lock"):
        paths = _kafka_paths(state_dir)
        running = _running_kafka(state_dir)
        outcome = "not running"
        if running is not None:
            outcome = _terminate(running[0], signal.SIGTERM, _kafka_needles(paths))
        _update_state(state_dir, "kafka", None)
        paths["pidfile"].unlink(missing_ok=True)
        if wipe:
            shutil.rmtree(paths["base"], ignore_errors=True)
            outcome += ", data wiped"
        return outcome
